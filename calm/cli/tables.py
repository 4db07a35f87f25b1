"""The commands that read predictions and write tables and figures: the results table, the
seeds table, the sweeps' tables (ablation-table, grid, bases-table) and the paper's items
(paper-table, paper-figure). None opens a model. Registered when calm.cli builds its parser."""
from __future__ import annotations

import logging
from pathlib import Path

from calm import config as cfgmod
from calm.flags import Flag, command, json_arg, out, pairs, path, several

# the results table's and the seeds table's shared flags
TABLE_FLAGS: tuple[Flag, ...] = (
    ("--individual", {"default": "Individual"}),
    ("--target", {"default": "CALM"}),
    ("--insert-best-after", {"default": "Task arithmetic (λ=0.3)"}),
)


@command("ablation-table", "A tidy ablation CSV from per-point files.",
         ("--kind", {"required": True, "choices": ["accuracy", "pseudo_labels", "layers", "trace"]}),
         ("--points", {"required": True, "help": "JSON list of points: each its setting columns plus 'path' (the file it reads)"}),
         ("--individual", {"type": Path, "help": "individual models' predictions (adds 'normalised')"}), out())
def cmd_ablation_table(a):
    from calm.stages.ablations import ablation_table
    frame = ablation_table(a.kind, json_arg(a.points, "--points"), a.out, individual=a.individual)
    logging.info("%s: %d rows", a.out, len(frame))


@command("grid", "A sweep grid's tidy CSV and its plot of accuracy against the swept keys.",
         ("--points", {"required": True, "help": "JSON list of grid rows: each its swept keys, row, variant and 'path' "
                       "(its predictions)"}),
         several("--keys", "the swept keys (the grid's columns), one panel each"),
         path("--individual", "individual models' predictions (adds 'normalised')"),
         out("writes PREFIX.csv, PREFIX.png and PREFIX.pdf", "--out-prefix"))
def cmd_grid(a):
    from calm.stages.ablations import grid
    frame = grid(json_arg(a.points, "--points"), a.keys, a.individual, a.out_prefix)
    logging.info("%s.csv: %d rows", a.out_prefix, len(frame))


@command("bases-table", "CALM over each base merge against its own base and the best single-model method, "
         "over fine-tuning seeds (table with hierarchical-bootstrap intervals, and a figure).",
         ("--runs", {"required": True, "help": 'JSON list, one entry per fine-tuning seed: {"seed": S, "variants": '
                     '[{"base": B, "strategy": ST, "path": PREDICTIONS}], "bases": {B: {"label": ROW NAME, "path": '
                     'PREDICTIONS}}, "methods": {ROW NAME: PREDICTIONS}} (methods: the single-model ones)'}),
         out("writes PREFIX.{csv,md,json,png,pdf}", "--out-prefix"),
         sections=((cfgmod.EvaluateConfig, "", ("batch_size",)),))
def cmd_bases_table(a):
    from calm.stages.bases import bases_table
    print(bases_table(json_arg(a.runs, "--runs"), a.out_prefix, bootstrap=a.bootstrap, seed=a.seed))


@command("table", "The results table (CSV, Markdown, JSON with bootstrap intervals).",
         several("--eval", "ROW NAME=PREDICTIONS in table order"), *TABLE_FLAGS,
         ("--sweep-prefix", {"default": "Task arithmetic λ=", "help": "rows of a λ sweep: only the best is shown"}),
         ("--out-prefix", {"required": True, "help": "writes PREFIX.csv, PREFIX.md, PREFIX.json"}),
         sections=((cfgmod.EvaluateConfig, "", ("batch_size",)),))
def cmd_table(a):
    from calm.stages.evaluate import table
    print(table(pairs(a.eval, "--eval"), a.out_prefix, sweep_prefix=a.sweep_prefix,
                insert_best_after=a.insert_best_after, individual=a.individual, target=a.target,
                bootstrap=a.bootstrap, seed=a.seed))


@command("seeds", "The results table over fine-tuning seeds (mean ± s.d., hierarchical-bootstrap intervals) and "
         "each method's average per seed as a figure.",
         ("--runs", {"required": True, "help": 'JSON list, one entry per fine-tuning seed: {"seed": S, "rows": '
                     '{ROW NAME: PREDICTIONS}}, rows in table order'}),
         ("--ablations", {"default": "{}", "help": 'JSON: {"strategy": [{"seed": S, "table": CSV, "predictions": '
                          '{STRATEGY: PREDICTIONS}}], "n_seq": [{"seed": S, "table": CSV}]}, each sweep\'s per-seed '
                          'tidy table'}), *TABLE_FLAGS,
         ("--sweep-prefix", {"default": "Task arithmetic λ=", "help": "rows of a λ sweep: only each seed's best is kept"}),
         ("--out-prefix", {"required": True, "help": "writes PREFIX.{csv,md,json,png,pdf} (and PREFIX_ablations.{csv,md}, "
                           "PREFIX_n_seq.{png,pdf})"}),
         sections=((cfgmod.EvaluateConfig, "", ("batch_size",)),))
def cmd_seeds(a):
    from calm.stages.evaluate import seeds
    print(seeds(json_arg(a.runs, "--runs"), a.out_prefix, sweep_prefix=a.sweep_prefix,
                insert_best_after=a.insert_best_after, individual=a.individual, target=a.target,
                bootstrap=a.bootstrap, seed=a.seed, ablations=json_arg(a.ablations, "--ablations")))


def cmd_paper(a):
    from calm.paper.registry import make
    for path in make(a.name, a.inputs, a.out_prefix, json_arg(a.options, "--options")).values():
        logging.info("wrote %s", path)


def paper_commands() -> None:
    """paper-table and paper-figure: one item of the paper registry each."""
    from calm.paper.registry import FIGURES, TABLES
    for kind, names in (("table", TABLES), ("figure", FIGURES)):
        what = "CSV, Markdown and LaTeX" if kind == "table" else "PNG and PDF"
        command(f"paper-{kind}", f"Build one of the paper's {kind}s ({what}) from result files.",
                ("name", {"choices": names, "help": f"the {kind}"}),
                several("--inputs", "the input file, or LABEL=PATH per file for the items that stack several"),
                ("--out-prefix", {"required": True,
                                  "help": f"writes PREFIX.{{{'csv,md,tex' if kind == 'table' else 'png,pdf'}}}"}),
                ("--options", {"default": "{}", "help": "JSON object of the builder's keyword options"}))(cmd_paper)


