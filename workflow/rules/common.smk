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
from calm.config import Config
from calm.config.files import ConfigError, validate_sweep_table
from calm.flags import interpreter_first_on_path, render_flags
from calm.methods import METHODS, validated_methods
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


class Untracked:
    """A rule parameter that reaches the shell command (as its text) but not Snakemake's record
    of params, which keeps only plain values (strings, numbers, containers) and skips other
    objects: changing it reruns nothing. For a setting that no output depends on."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


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


def sweep_rows(ablation):
    return SWEEPS[SWEEPS["ablation"] == ablation].to_dict(orient="records")


def quoted(points):
    return shlex.quote(json.dumps(points, ensure_ascii=False))


# --- lineage (the `lineage` param of every compute rule) -----------------------------------

# Per output, a digest of every setting it was computed from, its own job's and those
# of every job upstream of it. Each compute rule records its output's lineage as a param
# (`lineage`), so Snakemake's params trigger reruns an output whenever any setting it depends
# on changed, even when the job that reads the setting directly failed in between: Snakemake
# deletes a failed job's outputs, and with them the only record that its setting changed, so
# without this the outputs downstream (whose own params did not change) stood as they were.
# docs/design.md (5.5) says why this and not content-addressed folders.
#
# Each function mirrors one rule: its own settings (as its params render them) and the
# lineages of its inputs. A setting that changes no result (calm.checkpoint_every,
# model.trust_pickle, threads) is in no lineage, as in no rule's params.


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def pretrained_lineage():
    return digest("pretrained", CFG.model.source, MODEL_FLAGS)


# n_val only when set: without a val split, fetch_data's command and lineage are those from before it existed
DATA_FLAGS = render_flags(CFG.data, exclude=("tasks", "custom", "hf") + (() if CFG.data.n_val else ("n_val",)))


@functools.cache
def data_lineage(task):
    spec = {"custom": CFG.data.custom.get(task), "hf": CFG.data.hf.get(task)}
    return digest("data", DATA_FLAGS,
                  {k: v.model_dump() for k, v in spec.items() if v is not None})


@functools.cache
def prepared_lineage(task):
    """The task's preprocessed inputs and head (rule prepare)."""
    head = finetuned_lineage(task) if CFG.model.heads_from_checkpoints else None
    return digest("prepare", pretrained_lineage(), data_lineage(task), head)


@functools.cache
def finetuned_lineage(task, rep=""):
    if CFG.model.finetuned:
        return digest("fetch_finetuned", pretrained_lineage(), CFG.model.finetuned[task], CFG.model.heads.get(task))
    settings = render_flags(CFG.finetune.model_copy(update={"seed": finetune_seed(rep)}))
    return digest("finetune", settings, pretrained_lineage(), prepared_lineage(task))


@functools.cache
def scores_lineage(task, rep=""):
    return digest("score", render_flags(CFG.score), finetuned_lineage(task, rep), prepared_lineage(task))


@functools.cache
def credible_lineage(sampler, ratio, task, seed, rep=""):
    return digest("select", sampler, f"{ratio:g}", seed, scores_lineage(task, rep))


def variant_credible_lineage(variant, task, rep=""):
    v = VARIANTS[variant]
    return credible_lineage(v.sampler, v.ratio, task, v.select_seed, rep)


@functools.cache
def base_lineage(variant, rep=""):
    v = VARIANTS[variant]
    base = [] if v.calm.base == "task_arithmetic" else [str(calm_base_flags(variant))]  # the default's as before
    return digest("calm_base", v.calm.efficient_lambda, [finetuned_lineage(t, rep) for t in v.efficient(TASKS)], *base)


@functools.cache
def step_lineage(variant, k, rep=""):
    """The k-th sequential step's outputs (calm_step's): steps after it are not upstream, so
    appending a task to calm.sequential changes no earlier step's lineage."""
    before = base_lineage(variant, rep) if k == 1 else step_lineage(variant, k - 1, rep)
    visible = [(prepared_lineage(t), variant_credible_lineage(variant, t, rep)) for t in visible_tasks(variant, k)]
    return digest("calm_step", calm_flags(variant), before, finetuned_lineage(VARIANTS[variant].sequential[k - 1], rep),
                  visible, [prepared_lineage(t) for t in traced(variant)])


def variant_lineage(variant, rep=""):
    """The variant's merged model (calm_model's), θ0 plus its last step's task vector."""
    return digest("calm_model", pretrained_lineage(), step_lineage(variant, len(VARIANTS[variant].sequential), rep))


def analysis_lineage(variant):
    """The mask-analysis models of a variant's last step (rule mask_parts)."""
    n = len(VARIANTS[variant].sequential)
    before = base_lineage(variant) if n == 1 else step_lineage(variant, n - 1)
    return digest("mask_parts", pretrained_lineage(), before, step_lineage(variant, n),
                  finetuned_lineage(VARIANTS[variant].sequential[-1]))


@functools.cache
def baseline_lineage(method, rep=""):
    data = {"inputs": prepared_lineage, "head": prepared_lineage, "scores": lambda t: scores_lineage(t, rep)}
    return digest("merge_baseline", method, baseline_settings(SimpleNamespace(method=method, rep=rep)),
                  pretrained_lineage(), [finetuned_lineage(t, rep) for t in TASKS],
                  [data[need](t) for need in METHODS[method].needs for t in TASKS])


def checkpoints_lineage(method, rep=""):
    """What the checkpoints a method is evaluated with were computed from (see eval_models)."""
    if method == "individual":
        return [finetuned_lineage(t, rep) for t in TASKS]
    if method == "pretrained":
        return pretrained_lineage()
    if method == "calm":
        return variant_lineage("default", rep)
    if method.startswith("calm/"):
        _, variant, *part = method.split("/")
        if not part:
            return variant_lineage(variant, rep)
        if part[0] == "tau2":
            return finetuned_lineage(VARIANTS[variant].sequential[-1], rep)
        return analysis_lineage(variant)
    return baseline_lineage(method.removeprefix("baseline_"), rep)


EVALUATE_SETTINGS = render_flags(CFG.evaluate, exclude=("bootstrap", "seed"))


@functools.cache
def eval_lineage(method, rep=""):
    """A method's predictions (rule evaluate)."""
    return digest("evaluate", EVALUATE_SETTINGS, checkpoints_lineage(method, rep), [prepared_lineage(t) for t in TASKS])


@functools.cache
def ta_eval_lineage(rep=""):
    """The λ sweep's predictions (rule evaluate_task_arithmetic, one job for every λ)."""
    return digest("evaluate_task_arithmetic", EVALUATE_SETTINGS, list(ta_evals(rep)), pretrained_lineage(),
                  [finetuned_lineage(t, rep) for t in TASKS], [prepared_lineage(t) for t in TASKS])


def path_lineage(path):
    """The lineage of a predictions file, by its path (the tables read them by path)."""
    m = re.fullmatch(r"results(?P<rep>/seeds/seed-?[0-9]+)?/eval/(?P<method>.+)\.parquet", path)
    if m is None:
        raise ValueError(f"no lineage for '{path}'")
    rep, method = m.group("rep") or "", m.group("method")
    if method.startswith("validated/"):  # data.n_val's rows (helpers/evaluate.smk)
        return validated_lineage(method.removeprefix("validated/"), rep)
    return ta_eval_lineage(rep) if method.startswith("task_arithmetic_lam") else eval_lineage(method, rep)
