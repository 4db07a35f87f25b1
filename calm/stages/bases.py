"""The bases sweep's stage: CALM over each base merge of S against the base method alone and
against the best single-model method, over one or more fine-tuning seeds (`snakemake bases`,
and `snakemake seeds` with replicates.ablations: [bases]). The sweep's variants are planned in
calm/sweeps.py; each is an ordinary CALM run with calm.base and calm.strategy set."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from calm import provenance
from calm.io import atomic_path, write_json, write_text
from calm.metrics import accuracy, average, hierarchical_bootstrap
from calm.render import to_markdown


def bases_table(runs: list[dict], out_prefix: str | Path, bootstrap: int, seed: int) -> str:
    """CALM over each base merge (the bases sweep) against its own base and against the best
    single-model method, over one or more fine-tuning seeds.

    runs: one per seed, {"seed": S, "variants": [{"base": B, "strategy": ST, "path": P}],
    "bases": {B: {"label": L, "path": P}}, "methods": {LABEL: P}}: each CALM variant's
    predictions, its base method's own (that method merging every task, as the results table
    runs it), and every single-model method's of the table. The best single-model method is the
    one with the highest mean average accuracy over the seeds: the strictest comparator CALM has.
    Intervals are hierarchical-bootstrap ones over seeds and test examples (with one seed,
    paired-bootstrap ones over test examples). Writes PREFIX.csv, .md, .json (with provenance)
    and PREFIX.png / .pdf; returns the Markdown."""
    from calm.paper.figures import bases_accuracy
    from calm.paper.style import save_figure
    from calm.paper.tables import STRATEGIES
    from calm.results_table import in_points, interval_text

    if not runs:
        raise ValueError("bases table: no runs")
    seeds = [int(r["seed"]) for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"bases table: a fine-tuning seed appears twice in {seeds}")
    shape = [(v["base"], v["strategy"]) for v in runs[0]["variants"]]
    for r in runs[1:]:
        if [(v["base"], v["strategy"]) for v in r["variants"]] != shape or set(r["methods"]) != set(runs[0]["methods"]):
            raise ValueError(f"bases table: seed {r['seed']} has other variants or methods than seed {seeds[0]}")
    frames: dict[str, pd.DataFrame] = {}

    def read(path: str) -> pd.DataFrame:
        if path not in frames:
            frames[path] = pd.read_parquet(path)
        return frames[path]

    def averages(paths: list[str]) -> list[float]:
        return [100 * average(accuracy(read(p))) for p in paths]

    methods = list(runs[0]["methods"])
    if not methods:
        raise ValueError("bases table: no single-model method to compare with")
    means = {m: float(np.mean(averages([r["methods"][m] for r in runs]))) for m in methods}
    best = max(methods, key=lambda m: (means[m], -methods.index(m)))
    best_paths = [r["methods"][best] for r in runs]
    rows = []
    for i, (base, strategy) in enumerate(shape):
        calm_paths = [r["variants"][i]["path"] for r in runs]
        base_paths = [r["bases"][base]["path"] for r in runs]
        acc, base_acc = averages(calm_paths), averages(base_paths)
        row = {"base": base, "base_label": runs[0]["bases"][base]["label"], "strategy": strategy,
               "seeds": len(runs), "accuracy": float(np.mean(acc)), "accuracy s.d.": _sd(acc),
               **{f"accuracy (seed {s})": a for s, a in zip(seeds, acc)},
               "base accuracy": float(np.mean(base_acc)), "base accuracy s.d.": _sd(base_acc)}
        for key, other in (("base", base_paths), ("best", best_paths)):
            ci = in_points(hierarchical_bootstrap([read(p) for p in calm_paths], [read(p) for p in other],
                                                  n=bootstrap, seed=seed))
            row.update({f"− {key}": ci["difference"], f"− {key} low": ci["low"], f"− {key} high": ci["high"]})
        row.update({"best": best, "best accuracy": means[best], "ahead of best": bool(row["− best low"] > 0)})
        rows.append(row)
    table = pd.DataFrame(rows)
    winners = table[table["ahead of best"]]
    cells = pd.DataFrame({
        "CALM over": table["base_label"], "Strategy": [STRATEGIES.get(s, s) for s in table["strategy"]],
        "CALM": [_mean_sd(r["accuracy"], r["accuracy s.d."]) for _, r in table.iterrows()],
        "Base alone": [_mean_sd(r["base accuracy"], r["base accuracy s.d."]) for _, r in table.iterrows()],
        "CALM − base (95 % CI)": [interval_text(_ci(r, "base")) for _, r in table.iterrows()],
        f"CALM − {best} (95 % CI)": [interval_text(_ci(r, "best")) for _, r in table.iterrows()],
    }).set_index(["CALM over", "Strategy"])
    verdict = (f"Ahead of every single-model method (interval against {best} above zero): "
               + ", ".join(f"CALM over {r['base_label']}, {STRATEGIES.get(r['strategy'], r['strategy'])}"
                           for _, r in winners.iterrows())
               if len(winners) else
               f"No variant is ahead of {best} by more than its interval; the closest, CALM over "
               f"{table.loc[table['− best'].idxmax(), 'base_label']} "
               f"({STRATEGIES.get(table.loc[table['− best'].idxmax(), 'strategy'])}), is "
               f"{interval_text(_ci(table.loc[table['− best'].idxmax()], 'best'))} points from it.")
    text = (f"CALM over each base merge of S (the bases sweep): average test accuracy (%), mean ± s.d. over "
            f"{len(runs)} fine-tuning seed{'s' if len(runs) > 1 else ''} ({', '.join(map(str, seeds))}). "
            f"Base alone: that method merging every task. {best}: the best single-model method of the table "
            f"({means[best]:.1f}). Intervals: 95 %, "
            + (f"hierarchical bootstrap ({bootstrap} resamples of seeds, then of test examples)" if len(runs) > 1
               else f"paired bootstrap over test examples ({bootstrap} resamples)")
            + ".\n\n" + to_markdown(cells, bold_best=False) + f"\n{verdict}\n")
    records = {f"seed {s}: {name}": provenance.read_record(path)
               for s, r in zip(seeds, runs)
               for name, path in [*((f"CALM over {v['base']} ({v['strategy']})", v["path"]) for v in r["variants"]),
                                  *r["methods"].items()]}
    prefix = Path(out_prefix)
    with atomic_path(prefix.with_name(prefix.name + ".csv")) as tmp:
        table.to_csv(tmp, index=False)
    write_text(text, prefix.with_name(prefix.name + ".md"))
    write_json({"seeds": seeds, "best": best, "method averages": means,
                "table": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
                "provenance": provenance.table_provenance(records)}, prefix.with_name(prefix.name + ".json"))
    save_figure(bases_accuracy(table, best, means[best]), prefix)
    return text


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.1f}" + ("" if pd.isna(sd) else f" ± {sd:.1f}")


def _ci(row: Mapping, key: str) -> dict:
    return {"difference": row[f"− {key}"], "low": row[f"− {key} low"], "high": row[f"− {key} high"]}
