import functools
import hashlib
import json
import os
import posixpath
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from pydantic import BaseModel
from snakemake.utils import Paramspace

from calm import resources, sweeps
from calm.config import CALM_BASE_FIELDS, Config
from calm.config.files import ConfigError, validate_sweep_table
from calm.flags import interpreter_first_on_path, render_flags
from calm.methods import METHODS, validated_rows
from calm.sampling import SAMPLERS

# What two or more rule files use (tests/test_workflow.py checks it). A helper that one rule file
# alone uses is in workflow/rules/helpers/ under that file's name, which the rule file includes
# before its rules, so that it is defined when they are read.

# The typed config re-checks what the JSON schema cannot (cross-key rules such as
# calm.sequential ⊆ data.tasks) before any job starts.
CFG = Config.model_validate(config)
# Jobs call `python -m calm`: the interpreter running Snakemake (the venv's) goes first on
# PATH, so the shell finds the same environment without naming it.
interpreter_first_on_path()
TASKS = CFG.data.tasks
PRETRAINED = "resources/models/pretrained"


# model.trust_pickle only says whether a fetch may unpickle a .pt/.bin source, never what the
# fetched safetensors hold, and every job after the fetches reads only those: so no rule
# tracks it (flipping it reruns nothing; a fetch it refused left no output and runs anyway),
# and only the fetch rules pass it.
MODEL_SECTION = render_flags(CFG.model, prefix="model_", exclude=("source", "trust_pickle"))
MODEL_FLAGS = f"--pretrained {PRETRAINED} {MODEL_SECTION} --device {CFG.device} --precision {CFG.precision}"
LAMBDAS = [f"{lam:g}" for lam in CFG.baselines.lambda_grid]
TA_LAMBDA = f"{CFG.baselines.task_arithmetic_lambda:g}"


def ta_evals(rep=""):
    """Every λ task arithmetic is evaluated at (the sweep's, and the table's own row) -> its predictions."""
    return {lam: f"results{rep}/eval/task_arithmetic_lam{lam}.parquet"
            for lam in sorted({*LAMBDAS, TA_LAMBDA}, key=float)}


# Every CALM run is a named variant (calm/sweeps.py): `default` is the config's calm and
# select sections; the ablations add the rest. SWEEPS is the tidy table of sweep points.
def grid_names(rows: list[dict]) -> list[str]:
    """Each grid row's variant name: its values as Paramspace names an instance,
    'ratio~0.5_lr~1e+07' (a list joined by '+'; the key without its section where that is unique)."""
    names = sweeps.grid_keys(rows)
    keys = list(names)

    def text(v) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)

    table = pd.DataFrame([{names[k]: text(row[k]) for k in keys} for row in rows], columns=list(names.values()))
    return list(Paramspace(table, filename_params="*").instance_patterns)


# A user's sweep grid (the config's `grid`, relative to the working directory): every row is
# checked before any job starts, one error line per bad row.
try:
    GRID = validate_sweep_table(CFG.grid, Config, base=CFG, sections=("calm", "select")) if CFG.grid else []
except ConfigError as exc:
    sys.exit("\n".join(f"error: {line}" for line in str(exc).splitlines()))
VARIANTS, SWEEPS = sweeps.plan(CFG, dict(zip(grid_names(GRID), GRID)))


# A replicate of the pipeline under another fine-tuning seed (`snakemake seeds`) writes what
# depends on the fine-tuned models under results/seeds/seed<s>/ (logs, benchmarks alike); the
# main run's `rep` is empty, so its paths, commands and params are those of a run without
# replicates, and a finished main run is replicate 0 as it stands. The data, the pretrained
# model and the prepared inputs and heads depend on no fine-tuning seed and stay shared.
REPLICATE = re.compile(r"(|/seeds/seed-?[0-9]+)")


wildcard_constraints:
    rep=REPLICATE.pattern,
    task="|".join(TASKS),
    k=r"[0-9]+",
    variant="|".join(re.escape(v) for v in VARIANTS),
    sampler="|".join(SAMPLERS),
    seed=r"[0-9]+",
    ratio=r"[0-9.e-]+",


NO_REPLICATES = ("error: replicates (snakemake seeds) need fine-tuning done by the workflow, "
                 "and model.finetuned names fetched checkpoints: leave it empty to fine-tune here")


def finetuned(task, rep=""):
    """Fetched (model.finetuned) or fine-tuned here (the embedded default)."""
    if CFG.model.finetuned:
        if rep:
            sys.exit(NO_REPLICATES)
        return f"resources/models/finetuned/{task}"
    return f"results{rep}/models/finetuned/{task}"


def replicate(r):
    """The `rep` of replicate r: it fine-tunes with finetune.seed + r; replicate 0 is the main run."""
    # joined from parts: snakemake --lint reads any string literal that starts with a slash as an
    # absolute path
    return "" if r == 0 else posixpath.join(posixpath.sep, "seeds", f"seed{CFG.finetune.seed + r}")


def finetune_seed(rep):
    return CFG.finetune.seed if rep == "" else int(rep.rsplit("seed", 1)[1])


def scaled(base):
    """A resource that grows with each retry (profiles/slurm sets `retries`)."""
    return lambda wildcards, attempt: base * attempt


MODEL_MB = resources.model_mb(CFG, Path(PRETRAINED))


# On a cluster, every job that declares gpu=1 goes to the GPU partition and asks for the GPU model
# the environment names (profiles/slurm; the other jobs go to SLURM_PARTITION), whatever its rule.
GPU_SITE = {key: os.environ[var] for key, var in (("slurm_partition", "SLURM_GPU_PARTITION"),
                                                  ("gpu_model", "SLURM_GPU_MODEL")) if os.environ.get(var)}


def job_resources(rule, gpu=False):
    """A compute rule's resources: memory and run time from the config's scale
    (calm/resources.py), growing with each retry; gpu=1 and the site's GPU partition for a GPU job."""
    mem_mb, runtime = resources.first_attempt(CFG, rule, MODEL_MB, gpu)
    return {"mem_mb": scaled(mem_mb), "runtime": scaled(runtime), **({"gpu": 1, **GPU_SITE} if gpu else {})}


def variant_dir(variant, rep=""):
    return f"results{rep}/merge/calm/{variant}"


def credible(sampler, ratio, task, seed, rep=""):
    """A credible set; one drawn with a seed other than select.seed has its own folder (select_seeded)."""
    suffix = "" if seed == CFG.select.seed else f"-s{seed}"
    return f"results{rep}/credible/{sampler}-{ratio:g}{suffix}/{task}.parquet"


def step_dir(variant, k, rep=""):
    """Folder of a variant's k-th sequential step (1-based); it merges S̄[k-1]."""
    return f"{variant_dir(variant, rep)}/step{k}-{VARIANTS[variant].sequential[k - 1]}"


def last_step_dir(variant, rep=""):
    return step_dir(variant, len(VARIANTS[variant].sequential), rep)


def tau_before(variant, k, rep=""):
    if k == 1:
        return f"{variant_dir(variant, rep)}/base.safetensors"
    return f"{step_dir(variant, k - 1, rep)}/tau.safetensors"


def variant_eval(variant, rep=""):
    """Predictions of a variant's merged model; the default's are the main table's CALM row."""
    return f"results{rep}/eval/calm.parquet" if variant == "default" else f"results{rep}/eval/calm/{variant}.parquet"


# Checkpoints of the mask analysis (paper Table 2) that `python -m calm mask-parts` writes.
ANALYSIS_PARTS = ["tau1", "not_m_tau1", "m_tau2"]


def main_table(rep=""):
    """The files of a run's results table (`table`), by extension."""
    return {ext: f"results{rep}/tables/main.{ext}" for ext in ("csv", "md", "json")}


@functools.cache  # each bases_table and seeds job asks for it several times while the DAG is built
def bases_run(rep=""):
    """One fine-tuning seed's files of the bases table (`python -m calm bases-table --runs`): each
    CALM variant of the bases sweep, each base method alone (merging every task; task arithmetic
    at calm.efficient_lambda where the λ sweep has it; at its scale chosen on validation when
    calm.base_scale is), and every single-model row of the results table (not the oracle λ rows,
    not a model per task, not CALM's). Used by rule bases_table and by `seeds`."""
    lam = f"{CFG.calm.efficient_lambda:g}"
    lam = lam if lam in ta_evals(rep) else TA_LAMBDA

    def alone(base):
        # Each variant's base scale chosen on validation: its base alone at the scale its own val splits choose.
        if CFG.calm.base_scale == "validation" and base in VALIDATED:
            return {"label": f"{METHODS[base].label}{ON_VALIDATION}", "path": validated_eval(base, rep)["preds"]}
        if base == "task_arithmetic":
            return {"label": f"Task arithmetic (λ={lam})", "path": ta_evals(rep)[lam]}
        return {"label": METHODS[base].label, "path": f"results{rep}/eval/baseline_{base}.parquet"}

    per_task = {spec.label for spec in METHODS.values() if spec.per_task}
    methods = {label: path for label, path in table_rows(rep).items()
               if label not in ("Pretrained", "Individual", *per_task) and not label.startswith("CALM")
               and not label.startswith("Task arithmetic λ=")}
    return {"seed": finetune_seed(rep),
            "variants": [{"base": r["base"], "strategy": r["strategy"], "path": variant_eval(r["variant"], rep)}
                         for r in sweep_rows("bases")],
            "bases": {b: alone(b) for b in CFG.ablations.bases},
            "methods": methods}


def bases_files(runs):
    """Every predictions file the bases table reads."""
    files = [p for run in runs for p in [*(v["path"] for v in run["variants"]),
                                         *(b["path"] for b in run["bases"].values()), *run["methods"].values()]]
    return list(dict.fromkeys(files))


def bases_outputs(prefix, category):
    """The files `python -m calm bases-table` writes under PREFIX, the table and figure in the report."""
    return {"csv": report(f"{prefix}.csv", caption="../report/bases.rst", category=category),
            "md": f"{prefix}.md", "json": f"{prefix}.json",
            "png": report(f"{prefix}.png", caption="../report/bases_figure.rst", category=category),
            "pdf": f"{prefix}.pdf"}


class Untracked:
    """A rule parameter that reaches the shell command (as its text) but not Snakemake's record
    of params, which keeps only plain values (strings, numbers, containers) and skips other
    objects: changing it reruns nothing. For a setting that no output depends on."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


# The scores depend on the fine-tuned models (a replicate's own); inputs and heads are shared.
BASELINE_FILES = {
    "inputs": ("--inputs", "results/inputs/{task}.safetensors"),
    "head": ("--heads", "results/heads/{task}.safetensors"),
    "scores": ("--scores", "results{rep}/scores/{task}.parquet"),
}


def baseline_inputs(wildcards, skip=()):
    """The per-task files the method's registry entry says it reads (merge_baseline's, and
    evaluate_validated's for a data-driven method's search on validation); `skip`: the needs a
    rule already reads and gives under flags of its own."""
    return [BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)
            for need in METHODS[wildcards.method].needs if need not in skip for t in TASKS]


def baseline_data_flags(wildcards, skip=()):
    """Those files as flags."""
    return " ".join(
        f"{BASELINE_FILES[need][0]} "
        + " ".join(f"{t}={BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)}" for t in TASKS)
        for need in METHODS[wildcards.method].needs if need not in skip
    )


def baseline_settings(wildcards):
    """Only the config sections the method reads, so that changing one method's settings
    reruns that method alone."""
    parts = []
    for section in METHODS[wildcards.method].sections:
        value = getattr(CFG.baselines, section)
        if isinstance(value, BaseModel):
            parts.append(render_flags(value, prefix=f"{section}_"))
        else:
            parts.append(f"--{section.replace('_', '-')} {value}")
    return " ".join(parts)


def baseline_dir(method, rep=""):
    return f"results{rep}/merge/baselines/{method}"


def step_benchmark(variant, k, rep=""):
    """The Snakemake benchmark file of a variant's k-th sequential step (calm_step's `benchmark:`)."""
    return f"benchmarks/rules{rep}/merge/calm/{variant}/step{k}-{VARIANTS[variant].sequential[k - 1]}.tsv"


# data.n_val (evaluate_validated): each baseline of the table whose merge is linear in a
# scale gets a row at the scale the val splits choose, and Fisher one at the coefficients they
# choose; none without n_val (the default's table).
VALIDATED = [m for m in validated_rows() if m in CFG.baselines.methods] if CFG.data.n_val else []
ON_VALIDATION = " (chosen on validation)"


def validated_eval(method, rep=""):
    prefix = f"results{rep}/eval/validated/{method}"
    return {"preds": f"{prefix}.parquet", "curve": f"{prefix}.json"}


def val_inputs(task):
    """A task's encoded val split (rule prepare_val), which the scales chosen on validation read."""
    return f"results/inputs/val/{task}.safetensors"


def validated_grid(method):
    """The scales a method's val splits choose from (its baselines grid), as --grid takes them;
    1 alone for a method with neither a scale nor one put on its result (Fisher)."""
    grid = METHODS[method].scale_grid
    return ",".join(f"{g:g}" for g in getattr(CFG.baselines, grid)) if grid else "1"


def sweep_rows(ablation):
    return SWEEPS[SWEEPS["ablation"] == ablation].to_dict(orient="records")


def quoted(points):
    return shlex.quote(json.dumps(points, ensure_ascii=False))


# Every compute rule's `lineage` param: what each output was computed from.
include: "lineage.smk"
