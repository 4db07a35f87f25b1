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
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Item:
    module: str  # "tables", or a figures module: "figures", "comparison" (calm.paper.<module>)
    builder: str
    columns: tuple[str, ...]  # what every input file must hold
    label: str | None = None  # None: one input file; else LABEL=PATH inputs stacked under this column
    title: str | None = None  # its label in the report; None: the paper's number, from its name

    @property
    def kind(self) -> str:
        return "table" if self.module == "tables" else "figure"


ITEMS: dict[str, Item] = {
    "table1_main": Item("tables", "main_results", ("method", "Avg")),
    "table2_mask_analysis": Item("tables", "mask_analysis", ("row", "task", "accuracy")),
    "table3_strategy": Item("tables", "strategies", ("strategy", "task", "accuracy")),
    "table4_lr": Item("tables", "lr_sweep", ("lr", "task", "accuracy")),
    "table5_alpha": Item("tables", "alpha_sweep", ("alpha", "task", "accuracy")),
    "table_switches": Item("tables", "switches", ("grad_reduction", "regulariser", "task", "accuracy"),
                           title="Update switches"),
    "table7_topk": Item("tables", "magnitude_ranks", ("step", "task", "top_percent", "share")),
    "table8_runtime": Item("tables", "run_times", ("s",), label="method"),
    "fig3_normalised": Item("comparison", "normalised_accuracy", ("method", "Avg"), label="source"),
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


def report_label(name: str) -> str:
    """The item's label in the Snakemake report: the paper's numbering ("Table 1", "Fig. 3")."""
    if _item(name).title:
        return _item(name).title
    number = re.fullmatch(r"(table|fig)(\d+)_\w+", name)
    return f"{'Table' if number.group(1) == 'table' else 'Fig.'} {number.group(2)}"


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
    from calm.paper.style import save_figure
    return save_figure(result, out_prefix)


# --- code digest -----------------------------------------------------------------------------

def _package_root(path: Path) -> Path:
    """The folder that holds the file's top-level package (the first folder without __init__.py)."""
    root = path.parent
    while (root / "__init__.py").exists():
        root = root.parent
    return root


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@dataclass
class _Module:
    """What the digest needs of one source file: its top-level definitions, and the names it
    imports from its own project (name -> (module, attribute), attribute None for a module)."""

    defs: dict[str, ast.AST]
    imports: dict[str, tuple[str, str | None]]


def _read_module(path: Path, root: Path) -> _Module:
    tree = ast.parse(path.read_text())
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    top = own.split(".")[0]
    defs: dict[str, ast.AST] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = node
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] != top:
                continue  # third-party code is pinned by requirements.txt, not digested
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                as_module = _module_file(sub, root) is not None
                imports[alias.asname or alias.name] = (sub, None) if as_module else (module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top and alias.asname:
                    imports[alias.asname] = (alias.name, None)
    return _Module(defs, imports)


def source_digest(path: str | Path, names: list[str]) -> str:
    """sha256 (12 hex digits) of the source of `names` in the module file at `path` and of
    every top-level name they use, directly or through each other: names of the same module,
    and names imported from the same project (`from pkg.m import f`, or `from pkg import m`
    then `m.f`), followed into their modules. So editing a helper in another module of the
    project changes the digest of exactly the items that call it."""
    path = Path(path).resolve()
    root = _package_root(path)
    modules: dict[Path, _Module] = {}

    def module(file: Path) -> _Module:
        if file not in modules:
            modules[file] = _read_module(file, root)
        return modules[file]

    missing = [n for n in names if n not in module(path).defs and n not in module(path).imports]
    if missing:
        raise ValueError(f"{path}: no top-level {missing}")
    seen: list[tuple[Path, str]] = []
    todo: list[tuple[Path, str]] = []

    def follow(file: Path, name: str, attr: str | None = None) -> None:
        """Queue the definition that `name` (or `name.attr`, for a module) in `file` refers to."""
        mod = module(file)
        if name in mod.defs:
            todo.append((file, name))
        elif name in mod.imports:
            target, imported = mod.imports[name]
            target_file = _module_file(target, root)
            if target_file is not None and (imported or attr):
                follow(target_file, imported or attr)

    for n in names:  # a name the module defines, or imports from the project
        follow(path, n)
    while todo:
        file, n = todo.pop(0)
        if (file, n) in seen:
            continue
        seen.append((file, n))
        for x in ast.walk(module(file).defs[n]):
            if isinstance(x, ast.Attribute) and isinstance(x.value, ast.Name):
                follow(file, x.value.id, x.attr)
            elif isinstance(x, ast.Name):
                follow(file, x.id)
    digest = hashlib.sha256()
    # The item's own module first, hashed as before other modules were followed.
    for file in sorted({f for f, _ in seen}, key=lambda f: (f != path, str(f))):
        if file != path:
            digest.update(_module_name(file, root).encode())
        nodes = {id(module(file).defs[n]): module(file).defs[n] for f, n in seen if f == file}
        for node in sorted(nodes.values(), key=lambda d: d.lineno):
            digest.update(ast.dump(node, include_attributes=False).encode())
    return digest.hexdigest()[:12]


def item_digest(name: str) -> str:
    """Digest of the code that builds and writes one item (see the module docstring).

    Reads the module's source without importing it, so the Snakefile stays fast to parse."""
    item = _item(name)
    builder = importlib.util.find_spec(f"calm.paper.{item.module}").origin
    writer_module, writer = ("tables", "write_table") if item.kind == "table" else ("style", "save_figure")
    writer_path = importlib.util.find_spec(f"calm.paper.{writer_module}").origin
    parts = source_digest(builder, [item.builder]) + source_digest(writer_path, [writer])
    return hashlib.sha256(parts.encode()).hexdigest()[:12]


def options_json(options: dict) -> str:
    return json.dumps(options, ensure_ascii=False, sort_keys=True)
