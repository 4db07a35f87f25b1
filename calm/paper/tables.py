"""The paper's tables: each builder takes the long result frame of a run or a sweep and returns
a `PaperTable` (rows and columns as in the paper); `write_table` writes CSV, Markdown and a
LaTeX booktabs tabular.

Accuracies are in percent. Sweep summaries are long frames with one row per (setting, task)
and, per setting, a row with task "average"; a setting repeated over seeds or orders is
averaged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from calm.io import atomic_path, write_text
from calm.render import to_html, to_latex, to_markdown
from calm.sweeps import MASK_ROWS

AVERAGE = "average"
REFERENCES = ("Pretrained", "Individual")  # never marked best: lower and upper references


@dataclass(frozen=True)
class PaperTable:
    frame: pd.DataFrame
    digits: int = 1
    bold_best: bool = True
    exclude_from_best: tuple[str, ...] = REFERENCES
    latex_labels: dict[str, str] = field(default_factory=dict)


def write_table(table: PaperTable, out_prefix: str | Path) -> dict[str, Path]:
    """PREFIX.csv (values to 3 decimals), PREFIX.md, PREFIX.tex (booktabs) and PREFIX.html (for
    the Snakemake report); returns the paths."""
    prefix = Path(out_prefix)
    paths = {ext: prefix.with_name(prefix.name + "." + ext) for ext in ("csv", "md", "tex", "html")}
    kwargs = dict(digits=table.digits, bold_best=table.bold_best, exclude_from_best=table.exclude_from_best)
    with atomic_path(paths["csv"]) as tmp:
        table.frame.round(3).to_csv(tmp)
    write_text(to_markdown(table.frame, **kwargs), paths["md"])
    write_text(to_latex(table.frame, labels=table.latex_labels, **kwargs), paths["tex"])
    write_text(to_html(table.frame, title=prefix.name, **kwargs), paths["html"])
    return paths


def format_value(value: float) -> str:
    """A hyper-parameter as the paper writes it: 1e7, 5e6, 0.5, 2."""
    text = f"{value:g}"
    mantissa, sep, exp = text.partition("e")
    return mantissa + "e" + str(int(exp)) if sep else text


def task_table(frame: pd.DataFrame, keys: list[str], value: str = "accuracy") -> pd.DataFrame:
    """Wide table: one row per setting of `keys` (first-appearance order), one column per task
    (first-appearance order), then 'Avg' and, when the frame has `normalised`, 'Norm. avg'.

    'Avg' is the setting's "average" row where the frame has one, else the mean of its tasks."""
    tasks = [t for t in pd.unique(frame["task"]) if t != AVERAGE]
    grouped = frame.groupby(keys + ["task"], sort=False)
    wide = grouped[value].mean().unstack("task")
    order = frame[keys].drop_duplicates().apply(tuple, axis=1).tolist()
    index = pd.MultiIndex.from_tuples(order, names=keys) if len(keys) > 1 else pd.Index(
        [o[0] for o in order], name=keys[0])
    wide = wide.reindex(index)
    out = wide.reindex(columns=tasks)
    out["Avg"] = wide[AVERAGE] if AVERAGE in wide else out[tasks].mean(axis=1)
    if "normalised" in frame:
        norm = grouped["normalised"].mean().unstack("task").reindex(index)
        out["Norm. avg"] = norm[AVERAGE] if AVERAGE in norm else norm[tasks].mean(axis=1)
    out.columns.name = None
    return out


def _label_rows(table: pd.DataFrame, method: str, name: str, labels: list[str]) -> pd.DataFrame:
    out = table.copy()
    out.index = pd.MultiIndex.from_arrays([[method] * len(labels), labels], names=["Method", name])
    return out


# --- Table 1 ---------------------------------------------------------------------------------

def main_results(main: pd.DataFrame) -> PaperTable:
    """Table 1 from the results table (results/tables/main.csv): every method × every task,
    'Avg' and 'Norm. avg'; the best merged method per column is marked."""
    frame = main.set_index(main.columns[0]) if "method" in main.columns else main
    frame.index.name = "Method"
    return PaperTable(frame)


# --- Table 2 ---------------------------------------------------------------------------------

# The mask-analysis rows in the paper's order: row label -> (display name, LaTeX).
_MASK_LABELS = {label: (display, latex) for label, display, latex in MASK_ROWS.values()}


def mask_analysis(frame: pd.DataFrame) -> PaperTable:
    """Table 2: accuracy of θ0 plus masked parts of τ1 (the tasks merged before) and τ2 (the
    sequential task), one row per combination. No best marks: θ0 + τ2 is a reference."""
    table = task_table(frame, ["row"])
    known = [r for r in _MASK_LABELS if r in table.index]
    table = table.reindex(known + [r for r in table.index if r not in _MASK_LABELS])
    table.index = pd.Index([_MASK_LABELS.get(r, (r,))[0] for r in table.index], name="Model parameters")
    labels = {display: latex for display, latex in _MASK_LABELS.values()}
    return PaperTable(table, bold_best=False, latex_labels=labels)


# --- Tables 3, 4, 5 and the switches -----------------------------------------------------------

STRATEGIES = {"only_m": "only M", "only_1m": "only 1 − M", "both": "both (CALM)"}


def strategies(frame: pd.DataFrame) -> PaperTable:
    """Table 3: CALM's commit rule both / only M / only 1 − M, in the paper's order."""
    table = task_table(frame, ["strategy"])
    order = [s for s in STRATEGIES if s in table.index] + [s for s in table.index if s not in STRATEGIES]
    table = table.reindex(order)
    return PaperTable(_label_rows(table, "CALM", "Merging strategy", [STRATEGIES.get(s, s) for s in order]))


def _numeric_sweep(frame: pd.DataFrame, key: str, name: str) -> PaperTable:
    table = task_table(frame, [key])
    table = table.loc[sorted(table.index, key=float)]
    return PaperTable(_label_rows(table, "CALM", name, [format_value(float(v)) for v in table.index]))


def lr_sweep(frame: pd.DataFrame) -> PaperTable:
    """Table 4: CALM at each mask learning rate."""
    return _numeric_sweep(frame, "lr", "Learning rate")


def alpha_sweep(frame: pd.DataFrame) -> PaperTable:
    """Table 5: CALM at each regulariser strength α."""
    return _numeric_sweep(frame, "alpha", "Coefficient α")


def switches(frame: pd.DataFrame) -> PaperTable:
    """The official code's update against the paper's written one: gradient reduction
    (sum / mean) × regulariser (polarise / l1)."""
    table = task_table(frame, ["grad_reduction", "regulariser"])
    table.index = table.index.set_names(["Gradient reduction", "Regulariser"])
    return PaperTable(table)


# --- Table 7 ---------------------------------------------------------------------------------

def step_labels(frame: pd.DataFrame) -> dict[tuple, str]:
    """(step, task) -> column or row label: the task name, with the step where a task recurs."""
    pairs = frame[["step", "task"]].drop_duplicates().itertuples(index=False, name=None)
    pairs = list(pairs)
    counts = pd.Series([t for _, t in pairs]).value_counts()
    return {(s, t): (t if counts[t] == 1 else f"{t} (step {s})") for s, t in pairs}


def magnitude_ranks(frame: pd.DataFrame) -> PaperTable:
    """Table 7: of a sequential task's active mask entries, the share (%) that lie within the
    top k % of |τ| for that task, one column per task."""
    labels = step_labels(frame)
    data = frame.assign(column=[labels[(s, t)] for s, t in zip(frame["step"], frame["task"])])
    wide = data.groupby(["top_percent", "column"], sort=False)["share"].mean().unstack("column")
    wide = wide.reindex(columns=list(dict.fromkeys(labels.values()))).sort_index()
    wide.index = pd.Index([f"Top {format_value(float(p))} %" for p in wide.index], name="Magnitude selection")
    wide.columns.name = None
    return PaperTable(wide, bold_best=False)


# --- Table 8 ---------------------------------------------------------------------------------

def run_times(frame: pd.DataFrame, iterations: dict[str, int] | None = None,
              runs: dict[str, str] | None = None) -> PaperTable:
    """Table 8 from Snakemake benchmark files (column `s`, seconds), one or more files per row
    (`method`, `path`). A run's time is the sum over its files of each file's mean over repeats;
    a row's is the mean over its runs, with their standard deviation. `runs`: path -> run (the
    files of a row that no run names are one run). `iterations`: mask or coefficient updates of
    one run of each row, where known."""
    iterations, runs = iterations or {}, runs or {}
    per_file = frame.groupby(["method", "path"], sort=False)["s"].mean().reset_index()
    per_file["run"] = per_file["path"].map(lambda p: runs.get(p, ""))
    per_run = per_file.groupby(["method", "run"], sort=False)["s"].sum().groupby(level="method", sort=False)
    seconds = per_run.mean()
    table = pd.DataFrame({
        "Run time (min)": seconds / 60,
        "Run time (s)": seconds,
        "s.d. over runs (s)": per_run.std(ddof=1),
        "Runs": per_run.size(),
        "Iterations": pd.array([iterations.get(m) for m in seconds.index], dtype="Int64"),
    })
    table.index.name = "Method"
    return PaperTable(table, digits=2, bold_best=False)
