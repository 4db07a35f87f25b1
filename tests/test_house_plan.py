"""The house plan (docs/design.md §6), read from the source: which module under calm/ imports
which. Every import counts, wherever it sits (top level, inside a function, under
TYPE_CHECKING), relative ones resolved against the importing module's package."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CALM = Path(__file__).resolve().parents[1] / "calm"

# The maths: pure functions over name -> tensor dicts and scored tables.
MATHS = re.compile(r"^calm\.(vectors|scoring|sampling|merging)(\.|$)")
# What the maths may never import: model families, data sources, the stages (calm.stages and
# whatever calm.stages* modules or packages hold them), the CLI.
NOT_FOR_MATHS = re.compile(r"^calm\.(families|data|stages\w*|cli)(\.|$)")
# The merging maths takes its settings as its own types (mask_optimisation.MaskSettings), never the config's.
MERGING = re.compile(r"^calm\.merging(\.|$)")
CONFIG = re.compile(r"^calm\.config(\.|$)")
# Families and data know nothing of merging, of the stages or of the CLI.
MODELS_AND_DATA = re.compile(r"^calm\.(families|data)(\.|$)")
NOT_FOR_MODELS_AND_DATA = re.compile(r"^calm\.(merging|stages\w*|cli)(\.|$)")
# The library never imports the workflow (workflow/, Snakemake and its plugins).
WORKFLOW = re.compile(r"^(workflow|snakemake\w*)(\.|$)")
# The CLI sits on top: only `python -m calm` (calm/__main__.py) imports it.
CLI = re.compile(r"^calm\.cli(\.|$)")
CLI_ENTRY = {"calm.__main__"}


def module_name(path: Path, root: Path = CALM) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a (possibly relative) `from … import` names."""
    if level == 0:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([module] if module else []))


def imports(source: str, importer: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `source`. `from a import b` yields a and
    a.b, since b may be a submodule (`from calm import stages`); a literal
    importlib.import_module("x") or __import__("x") yields x."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, importer, is_package)
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.args[0].value, node.lineno))
    return found


def import_graph(root: Path = CALM) -> dict[str, tuple[Path, list[tuple[str, int]]]]:
    graph = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        graph[name] = (path, imports(path.read_text(), name, path.name == "__init__.py"))
    return graph


def violations(graph, root: Path = CALM) -> list[str]:
    rules = [
        ("the maths never imports families, data, stages or the CLI", MATHS.match, NOT_FOR_MATHS),
        ("the merging maths never imports the config", MERGING.match, CONFIG),
        ("families and data never import merging, stages or the CLI", MODELS_AND_DATA.match,
         NOT_FOR_MODELS_AND_DATA),
        ("the library never imports the workflow or Snakemake", lambda m: True, WORKFLOW),
        ("only calm/__main__.py imports the CLI", lambda m: m not in CLI_ENTRY and not CLI.match(m), CLI),
    ]
    found = []
    for importer, (path, names) in graph.items():
        for rule, applies, banned in rules:
            if not applies(importer):
                continue
            for imported, line in names:
                if banned.match(imported):
                    found.append(f"{path.relative_to(root.parent)}:{line}: {importer} imports {imported} ({rule})")
    return sorted(set(found))


def test_no_module_under_calm_breaks_the_house_plan():
    problems = violations(import_graph())
    assert not problems, "the house plan (docs/design.md §6) is broken:\n  " + "\n  ".join(problems)


def test_the_reader_sees_the_imports_the_plan_is_about():
    """The graph holds edges known to exist, so an empty violation list means something."""
    graph = import_graph()
    edges = {(m, i) for m, (_, names) in graph.items() for i, _ in names}
    assert {"calm.vectors", "calm.merging", "calm.merging.mask_optimisation", "calm.families", "calm.cli"} <= set(graph)
    assert ("calm.merging.mask_optimisation", "calm.merging.mask") in edges  # absolute, top level
    assert ("calm.families", "calm.families.base") in edges  # relative, in a package's __init__
    # Inside a function; it also checks that the stages still match the rules' calm.stages*.
    stages = [i for m, i in edges if m == "calm.cli" and re.match(r"^calm\.stages\w*(\.|$)", i)]
    assert stages, "calm.cli imports no calm.stages* module: the stages were renamed, update the rules above"


@pytest.mark.parametrize("importer, package, source, expected", [
    ("calm.merging.x", False, "from ..families import base", {"calm.families", "calm.families.base"}),
    ("calm.merging", True, "from . import mask", {"calm.merging", "calm.merging.mask"}),
    ("calm.merging", True, "from .mask_optimisation import optimise_mask", {"calm.merging.mask_optimisation", "calm.merging.mask_optimisation.optimise_mask"}),
    ("calm.merging.x", False, "from .. import stages", {"calm", "calm.stages"}),
    ("calm.vectors", False, "def f():\n    import calm.data.tasks", {"calm.data.tasks"}),
    ("calm.vectors", False, "import importlib\nimportlib.import_module('calm.cli')", {"importlib", "calm.cli"}),
])
def test_imports_resolve_relative_and_nested_names(importer, package, source, expected):
    assert {name for name, _ in imports(source, importer, package)} == expected


def test_a_violation_names_the_module_and_what_it_imports(tmp_path):
    root = tmp_path / "calm"
    (root / "merging").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "__init__.py").write_text("")
    (root / "merging" / "__init__.py").write_text("")
    (root / "merging" / "bad.py").write_text("import torch\n\nfrom ..stages_calm import run\n")
    (root / "data" / "tasks.py").write_text("from calm.merging import METHODS\nimport snakemake.io\n")
    (root / "io.py").write_text("from calm.cli import main\n")
    (root / "__main__.py").write_text("from calm.cli import main\n")
    found = violations(import_graph(root), root)
    pairs = {tuple(line.split(": ", 1)[1].split(" (")[0].split(" imports ")) for line in found}
    assert pairs == {("calm.merging.bad", "calm.stages_calm"), ("calm.merging.bad", "calm.stages_calm.run"),
                     ("calm.data.tasks", "calm.merging"), ("calm.data.tasks", "calm.merging.METHODS"),
                     ("calm.data.tasks", "snakemake.io"), ("calm.io", "calm.cli"), ("calm.io", "calm.cli.main")}
    assert ("calm/merging/bad.py:3: calm.merging.bad imports calm.stages_calm "
            "(the maths never imports families, data, stages or the CLI)") in found
    assert ("calm/data/tasks.py:2: calm.data.tasks imports snakemake.io "
            "(the library never imports the workflow or Snakemake)") in found


def test_the_workflow_parses_without_importing_torch():
    # Every `calm` module the Snakefiles import, imported in a fresh interpreter: a dry run then
    # costs no torch start-up (about 1.5 s of a 4 s parse).
    import subprocess
    import sys
    root = CALM.parent
    text = "\n".join(p.read_text() for p in [root / "Snakefile", *sorted((root / "workflow").rglob("*.smk")),
                                               root / "workflow" / "Snakefile"])
    modules = sorted(set(re.findall(r"^\s*(?:from|import) (calm[\w.]*)", text, re.M)))
    assert "calm.config" in modules and "calm.sweeps" in modules
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False", f"importing {modules} loads torch"


def test_no_module_or_rule_file_is_over_400_lines():
    """A file past 400 lines holds more than one thing; the generated schema is data, not code."""
    root = CALM.parent
    files = [*CALM.rglob("*.py"), *(root / "workflow").rglob("*.smk"), root / "workflow" / "Snakefile"]
    assert len(files) > 50 and root / "workflow" / "rules" / "common.smk" in files
    long = {str(f.relative_to(root)): n for f in files if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"
