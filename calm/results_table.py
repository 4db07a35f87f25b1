"""The main results table: per-task accuracy, average and normalised average of each method,
with paired-bootstrap intervals of CALM against every other method; and the same table over
fine-tuning seeds, mean ± s.d., with hierarchical-bootstrap intervals."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from calm.io import atomic_path, write_json, write_text
from calm.metrics import accuracy, average, hierarchical_bootstrap, normalised, paired_bootstrap
from calm.render import best_cells, to_markdown

BEST = " (best λ, oracle)"


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
    label = f"{best}{BEST}"
    named: dict[str, pd.DataFrame] = {}
    for name, frame in rows.items():
        if name in grid:
            continue
        named[name] = frame
        if name == insert_after:
            named[label] = grid[best]
    named.setdefault(label, grid[best])
    return named, {name: 100 * average(accuracy(frame)) for name, frame in grid.items()}


def compared(names, target: str, individual: str) -> list[str]:
    """The rows `target` is compared with: every row but itself and the two references."""
    return [n for n in names if n not in (target, individual, "Pretrained")]


def write_results(rows: dict[str, pd.DataFrame], out_prefix: str | Path, sweep_prefix: str,
                  insert_best_after: str, individual: str, target: str, bootstrap: int, seed: int,
                  provenance: dict | None = None) -> str:
    """Write PREFIX.csv, PREFIX.md (table plus bootstrap lines) and PREFIX.json; return the Markdown.
    `provenance` (calm.provenance.table_provenance) goes into the JSON only: the CSV and Markdown
    stay the same bytes on every machine that computes the same predictions."""
    named, grid = collapse_sweep(rows, sweep_prefix, insert_best_after)
    table = results_table(named, individual=individual)
    others = compared(named, target, individual)
    summary = {"table": table.reset_index().to_dict(orient="records"),
               "comparisons": comparisons(named, target, others, bootstrap, seed),
               "grid": grid, **({"provenance": provenance} if provenance is not None else {})}
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


# --- over fine-tuning seeds -----------------------------------------------------------------

def _one_best_row(named: list[dict[str, pd.DataFrame]], sweep_prefix: str) -> list[dict[str, pd.DataFrame]]:
    """Each seed's table has its own best λ; where the seeds chose different ones, the row is
    named after all of them in seed order ('Task arithmetic λ=0.4, 0.5 (best λ per seed, oracle)'),
    so that it is one row over the seeds."""
    labels = [next((n for n in rows if n.endswith(BEST)), None) for rows in named]
    if None in labels or len(set(labels)) == 1:
        return named
    lams = ", ".join(label.removeprefix(sweep_prefix).removesuffix(BEST) for label in labels)
    common = f"{sweep_prefix}{lams} (best λ per seed, oracle)"
    return [{common if n == label else n: frame for n, frame in rows.items()} for rows, label in zip(named, labels)]


def seeds_results(runs: dict[int, dict[str, pd.DataFrame]], sweep_prefix: str, insert_best_after: str,
                  individual: str, target: str, bootstrap: int, seed: int) -> dict:
    """The results table of each fine-tuning seed (seed -> row name -> predictions, in table
    order; each λ sweep collapsed to that seed's best, normalised by that seed's individual
    models), and over the seeds: `per_seed` (seed, method, tasks, Avg, Norm. avg), `mean`, `sd`
    (sample s.d., NaN for one seed) and `comparisons` (target − every other method, with the
    hierarchical-bootstrap interval over seeds and test examples, in points)."""
    if not runs:
        raise ValueError("the seeds table has no runs")
    seeds = list(runs)
    named = _one_best_row([collapse_sweep(runs[s], sweep_prefix, insert_best_after)[0] for s in seeds],
                          sweep_prefix)
    for s, rows in zip(seeds[1:], named[1:]):
        if list(rows) != list(named[0]):
            raise ValueError(f"seed {s} has the rows {list(rows)}, seed {seeds[0]} {list(named[0])}: "
                             "every seed needs the same methods")
    tables = [results_table(rows, individual=individual) for rows in named]
    per_seed = pd.concat(tables, keys=seeds, names=["seed", "method"]).reset_index()
    methods = list(named[0])
    mean = per_seed.groupby("method", sort=False).mean(numeric_only=True).drop(columns="seed").loc[methods]
    sd = per_seed.groupby("method", sort=False).std(ddof=1, numeric_only=True).drop(columns="seed").loc[methods]
    comparisons = []
    for other in compared(methods, target, individual):
        ci = hierarchical_bootstrap([rows[target] for rows in named], [rows[other] for rows in named],
                                    n=bootstrap, seed=seed)
        comparisons.append({"method": other, "comparison": f"{target} − {other}", **in_points(ci)})
    return {"seeds": seeds, "per_seed": per_seed, "mean": mean, "sd": sd, "comparisons": comparisons}


def in_points(ci: dict) -> dict:
    """A bootstrap's difference and interval in accuracy points (its counts as they are)."""
    return {k: v if k in ("resamples", "seeds") else 100 * v for k, v in ci.items()}


def mean_sd_cells(mean: pd.DataFrame, sd: pd.DataFrame, digits: int = 1,
                  exclude_from_best: tuple[str, ...] = ("Individual",)) -> pd.DataFrame:
    """'mean ± s.d.' text per cell ('mean' alone where s.d. is NaN: one seed), the best mean of
    each column in bold as to_markdown marks it."""
    best = best_cells(mean, exclude_from_best)
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for row in mean.index:
        for col in mean.columns:
            m, s = mean.loc[row, col], sd.loc[row, col]
            text = f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
            cells.loc[row, col] = f"**{text}**" if (row, col) in best else text
    return cells


def interval_text(c: dict) -> str:
    return f"{c['difference']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]"


def write_seeds(results: dict, out_prefix: str | Path, target: str, provenance: dict | None = None) -> str:
    """PREFIX.csv (per method: each column's mean and s.d., then target − method and its interval),
    PREFIX.md and PREFIX.json (per-seed tables too) of seeds_results; returns the Markdown."""
    mean, sd, comparisons = results["mean"], results["sd"], results["comparisons"]
    by_method = {c["method"]: c for c in comparisons}
    difference = f"{target} − method"
    csv = pd.concat([mean, sd.add_suffix(" s.d.")], axis=1)[[c for col in mean.columns for c in (col, f"{col} s.d.")]]
    csv["seeds"] = len(results["seeds"])
    for key, column in (("difference", difference), ("low", f"{difference} low"), ("high", f"{difference} high")):
        csv[column] = [by_method[m][key] if m in by_method else float("nan") for m in csv.index]
    cells = mean_sd_cells(mean, sd)
    cells[f"{difference} (95 % CI)"] = [interval_text(by_method[m]) if m in by_method else "–" for m in cells.index]
    seeds = results["seeds"]
    resamples = comparisons[0]["resamples"] if comparisons else 0
    text = (f"Test accuracy (%), mean ± s.d. over {len(seeds)} fine-tuning seeds ({', '.join(map(str, seeds))}); "
            f"Norm. avg is normalised per seed by that seed's individual models. {target} − method: the "
            f"difference of average accuracy, mean over seeds, with a 95 % interval from a hierarchical bootstrap "
            f"({resamples} resamples of seeds, then of test examples within each drawn seed).\n\n"
            + to_markdown(cells, bold_best=False))
    summary = {"seeds": seeds,
               "table": [{"method": m, **{c: mean.loc[m, c] for c in mean.columns},
                          **{f"{c} s.d.": sd.loc[m, c] for c in sd.columns}} for m in mean.index],
               "comparisons": comparisons,
               "per_seed": results["per_seed"].to_dict(orient="records"),
               **({"provenance": provenance} if provenance is not None else {})}
    prefix = Path(out_prefix)
    with atomic_path(prefix.with_suffix(".csv")) as tmp:
        csv.to_csv(tmp, index_label="method")
    write_text(text, prefix.with_suffix(".md"))
    write_json(_json_safe(summary), prefix.with_suffix(".json"))
    return text


def _json_safe(obj):
    """NaN (an s.d. over one seed) as null: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj.item() if hasattr(obj, "item") else obj
