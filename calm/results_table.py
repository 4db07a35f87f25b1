"""The main results table: per-task accuracy, average and normalised average of each method,
with paired-bootstrap intervals of CALM against every other method."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from calm.io import atomic_path, write_json, write_text
from calm.metrics import accuracy, average, normalised, paired_bootstrap
from calm.render import to_markdown


def results_table(rows: dict[str, pd.DataFrame], individual: str = "Individual") -> pd.DataFrame:
    """One row per method (dict order) with accuracy in %, 'Avg' and 'Norm. avg' (% of individual)."""
    ind = accuracy(rows[individual])
    records = []
    for name, preds in rows.items():
        acc = accuracy(preds)
        missing = set(ind) - set(acc)
        if missing:
            raise ValueError(f"{name}: no predictions for tasks {sorted(missing)}")
        rec = {"method": name, **{t: 100 * acc[t] for t in ind}}
        rec["Avg"] = 100 * average({t: acc[t] for t in ind})
        rec["Norm. avg"] = 100 * average(normalised({t: acc[t] for t in ind}, ind))
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("method")


def best_of(rows: dict[str, pd.DataFrame]) -> str:
    """The name of the row with the highest average accuracy (ties: the first)."""
    scores = {name: average(accuracy(p)) for name, p in rows.items()}
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


def comparisons(rows: dict[str, pd.DataFrame], target: str, others: list[str], n: int, seed: int) -> list[dict]:
    """Paired-bootstrap intervals of target − other average accuracy, in points."""
    out = []
    for other in others:
        ci = paired_bootstrap(rows[target], rows[other], n=n, seed=seed)
        out.append({"comparison": f"{target} − {other}",
                    **{k: (100 * v if k != "resamples" else v) for k, v in ci.items()}})
    return out


def collapse_sweep(rows: dict[str, pd.DataFrame], prefix: str, insert_after: str
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """Replace the rows named `prefix…` (a hyper-parameter sweep) by their best one, placed
    after `insert_after`; also return every sweep row's average accuracy (%)."""
    grid = {name: frame for name, frame in rows.items() if name.startswith(prefix)}
    if not grid:
        return dict(rows), {}
    best = best_of(grid)
    label = f"{best} (best λ, oracle)"
    named: dict[str, pd.DataFrame] = {}
    for name, frame in rows.items():
        if name in grid:
            continue
        named[name] = frame
        if name == insert_after:
            named[label] = grid[best]
    named.setdefault(label, grid[best])
    return named, {name: 100 * average(accuracy(frame)) for name, frame in grid.items()}


def write_results(rows: dict[str, pd.DataFrame], out_prefix: str | Path, sweep_prefix: str,
                  insert_best_after: str, individual: str, target: str, bootstrap: int, seed: int) -> str:
    """Write PREFIX.csv, PREFIX.md (table plus bootstrap lines) and PREFIX.json; return the Markdown."""
    named, grid = collapse_sweep(rows, sweep_prefix, insert_best_after)
    table = results_table(named, individual=individual)
    others = [n for n in named if n not in (target, individual, "Pretrained")]
    summary = {"table": table.reset_index().to_dict(orient="records"),
               "comparisons": comparisons(named, target, others, bootstrap, seed),
               "grid": grid}
    lines = [to_markdown(table), ""]
    for c in summary["comparisons"]:
        lines.append(f"- {c['comparison']}: {c['difference']:+.1f} points "
                     f"(paired bootstrap 95 % interval [{c['low']:+.1f}, {c['high']:+.1f}], "
                     f"{c['resamples']} resamples over test examples)")
    text = "\n".join(lines) + "\n"
    prefix = Path(out_prefix)
    with atomic_path(prefix.with_suffix(".csv")) as tmp:
        table.to_csv(tmp)  # unrounded: Table 1 and others read it and round once, as the Markdown
    write_text(text, prefix.with_suffix(".md"))
    write_json(summary, prefix.with_suffix(".json"))
    return text
