"""Every paper table and figure by name: its builder, what its input files must hold, how to
read them, and a digest of the code that draws it.

The digest is what makes "change one plot's code, rerun that plot only" work in Snakemake:
each rule passes its item's digest as a param, and a changed param reruns the job. It covers
the builder's source and, transitively, every top-level name of the same module it uses
(helpers, the style), so editing a shared helper reruns exactly the items that call it.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Item:
    module: str  # "tables" or "figures" (calm.paper.<module>)
    builder: str
    columns: tuple[str, ...]  # what every input file must hold
    label: str | None = None  # None: one input file; else LABEL=PATH inputs stacked under this column

    @property
    def kind(self) -> str:
        return "table" if self.module == "tables" else "figure"


ITEMS: dict[str, Item] = {
    "table1_main": Item("tables", "main_results", ("method", "Avg")),
    "table2_mask_analysis": Item("tables", "mask_analysis", ("row", "task", "accuracy")),
    "table3_strategy": Item("tables", "strategies", ("strategy", "task", "accuracy")),
    "table4_lr": Item("tables", "lr_sweep", ("lr", "task", "accuracy")),
    "table5_alpha": Item("tables", "alpha_sweep", ("alpha", "task", "accuracy")),
    "table_switches": Item("tables", "switches", ("grad_reduction", "regulariser", "task", "accuracy")),
    "table7_topk": Item("tables", "magnitude_ranks", ("step", "task", "top_percent", "share")),
    "table8_runtime": Item("tables", "run_times", ("s",), label="method"),
    "fig3_normalised": Item("figures", "normalised_accuracy", ("method", "Avg")),
    "fig4_ratio": Item("figures", "sampling_ratio", ("sampler", "ratio", "task", "accuracy")),
    "fig5_samplers": Item("figures", "sampler_comparison", ("sampler", "ratio", "task", "accuracy")),
    "fig6_n_seq": Item("figures", "sequential_count", ("n_seq", "task", "accuracy")),
    "fig7_layers": Item("figures", "layer_heatmap", ("step", "task", "layer", "active_fraction")),
    "fig8_pseudo_labels": Item("figures", "pseudo_label_accuracy", ("sampler", "ratio", "task", "pl_accuracy")),
    "fig9_entropy": Item("figures", "entropy_by_class", ("pseudo_label", "entropy"), label="task"),
    "fig11_trace_accuracy": Item("figures", "trace_accuracy",
                                 ("step", "task_merged", "iteration", "task", "accuracy")),
    "fig12_active_fraction": Item("figures", "active_fraction", ("iteration", "active_fraction"), label="run"),
}
TABLES = [name for name, item in ITEMS.items() if item.kind == "table"]
FIGURES = [name for name, item in ITEMS.items() if item.kind == "figure"]


def _item(name: str) -> Item:
    if name not in ITEMS:
        raise ValueError(f"unknown paper item '{name}'; known: {', '.join(ITEMS)}")
    return ITEMS[name]


# --- reading ---------------------------------------------------------------------------------

def read_frame(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")


def read_inputs(name: str, inputs: list[str]) -> pd.DataFrame:
    """The item's input as one frame: its single file, or the LABEL=PATH files stacked with the
    label (and the path) as columns. Each file must hold the item's columns."""
    item = _item(name)
    if item.label is None:
        if len(inputs) != 1:
            raise ValueError(f"{name}: expected one input file, got {len(inputs)}")
        pairs = [(None, inputs[0])]
    else:
        pairs = []
        for value in inputs:
            label, sep, path = value.rpartition("=")  # labels may hold "=", paths do not
            if not sep:
                raise ValueError(f"{name}: expected LABEL=PATH, got '{value}'")
            pairs.append((label, path))
    frames = []
    for label, path in pairs:
        frame = read_frame(path)
        missing = [c for c in item.columns if c not in frame.columns and c != item.label]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} needed by {name} (has {list(frame.columns)})")
        if label is not None:
            frame = frame.assign(**{item.label: label, "path": str(path)})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --- building --------------------------------------------------------------------------------

def build(name: str, frame: pd.DataFrame, options: dict | None = None):
    item = _item(name)
    module = importlib.import_module(f"calm.paper.{item.module}")
    return getattr(module, item.builder)(frame, **(options or {}))


def make(name: str, inputs: list[str], out_prefix: str | Path, options: dict | None = None) -> dict[str, Path]:
    """Read the inputs, build the item and write it (table: CSV, Markdown, LaTeX; figure: PNG, PDF)."""
    item = _item(name)
    result = build(name, read_inputs(name, inputs), options)
    if item.kind == "table":
        from calm.paper.tables import write_table
        return write_table(result, out_prefix)
    from calm.paper.figures import save_figure
    return save_figure(result, out_prefix)


# --- code digest -----------------------------------------------------------------------------

def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names[t.id] = node
    return names


def source_digest(path: str | Path, names: list[str]) -> str:
    """sha256 (12 hex digits) of the source of `names` in the module file at `path` and of
    every top-level name of that module they use, directly or through each other."""
    text = Path(path).read_text()
    defs = _top_level(ast.parse(text))
    missing = [n for n in names if n not in defs]
    if missing:
        raise ValueError(f"{path}: no top-level {missing}")
    seen: list[str] = []
    todo = list(names)
    while todo:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.append(n)
        used = {x.id for x in ast.walk(defs[n]) if isinstance(x, ast.Name)}
        todo += sorted(u for u in used if u in defs and u not in seen)
    digest = hashlib.sha256()
    for node in sorted({id(defs[n]): defs[n] for n in seen}.values(), key=lambda d: d.lineno):
        digest.update(ast.dump(node, include_attributes=False).encode())
    return digest.hexdigest()[:12]


def item_digest(name: str) -> str:
    """Digest of the code that builds and writes one item (see the module docstring).

    Reads the module's source without importing it, so the Snakefile stays fast to parse."""
    item = _item(name)
    spec = importlib.util.find_spec(f"calm.paper.{item.module}")
    writer = "write_table" if item.kind == "table" else "save_figure"
    return source_digest(spec.origin, [item.builder, writer])


def options_json(options: dict) -> str:
    return json.dumps(options, ensure_ascii=False, sort_keys=True)
