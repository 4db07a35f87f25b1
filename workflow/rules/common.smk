import json
import shlex
from pathlib import Path

from pydantic import BaseModel

from calm.cli import interpreter_first_on_path, render_flags
from calm.config import Config
from calm.merging import METHODS

# The typed config re-checks what the JSON schema cannot (cross-key rules such as
# calm.sequential ⊆ data.tasks) before any job starts.
CFG = Config.model_validate(config)
# Jobs call `python -m calm`: the interpreter running Snakemake (the venv's) goes first on
# PATH, so the shell finds the same environment without naming it.
interpreter_first_on_path()
TASKS = CFG.data.tasks
SEQ = CFG.calm.sequential
EFFICIENT = CFG.efficient_tasks
PRETRAINED = "resources/models/pretrained"
# trust_pickle is passed only when set: its default then changes no rule's params (no rerun).
MODEL_FLAGS = " ".join(
    [
        f"--pretrained {PRETRAINED}",
        render_flags(CFG.model, prefix="model_", exclude=("source",) + (() if CFG.model.trust_pickle else ("trust_pickle",))),
        f"--device {CFG.device} --precision {CFG.precision}",
    ]
)
LAMBDAS = [f"{lam:g}" for lam in CFG.baselines.lambda_grid]
TA_LAMBDA = f"{CFG.baselines.task_arithmetic_lambda:g}"


wildcard_constraints:
    task="|".join(TASKS),
    lam=r"[0-9.]+",
    k=r"[0-9]+",


def custom_flag(wildcards):
    spec = CFG.data.custom.get(wildcards.task)
    return "" if spec is None else f"--custom {shlex.quote(json.dumps(spec.model_dump()))}"


def finetuned(task):
    """Fetched (model.finetuned) or fine-tuned here (the embedded default)."""
    if CFG.model.finetuned:
        return f"resources/models/finetuned/{task}"
    return f"results/models/finetuned/{task}"


def hf_flag(wildcards):
    spec = CFG.data.hf.get(wildcards.task)
    return "" if spec is None else f"--hf {shlex.quote(json.dumps(spec.model_dump()))}"


def checkpoint_head_input(wildcards):
    """prepare reads a task's head from its fine-tuned checkpoint in the checkpoint-head families."""
    return {"finetuned": finetuned(wildcards.task)} if CFG.model.heads_from_checkpoints else {}


def scaled(base):
    """A resource that grows with each retry (profiles/slurm sets `retries`)."""
    return lambda wildcards, attempt: base * attempt


def step_dir(k):
    """Folder of CALM's k-th sequential step (1-based); it merges SEQ[k-1]."""
    return f"results/merge/calm/step{k}-{SEQ[k - 1]}"


def tau_before(k):
    return "results/merge/calm/base.safetensors" if k == 1 else f"{step_dir(k - 1)}/tau.safetensors"


def visible_tasks(k):
    """S, then the sequential tasks up to and including the k-th."""
    return EFFICIENT + SEQ[:k]


def visible_flag(k):
    return " ".join(
        f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors,results/credible/{t}.parquet"
        for t in visible_tasks(k)
    )


def eval_models(method):
    """The checkpoint each task is evaluated with under a method name."""
    if method == "individual":
        return {t: finetuned(t) for t in TASKS}
    if method == "pretrained":
        return {t: PRETRAINED for t in TASKS}
    if method == "calm":
        return {t: "results/merge/calm/model" for t in TASKS}
    if method.startswith("task_arithmetic_lam"):
        lam = method[len("task_arithmetic_lam"):]
        return {t: f"results/merge/task_arithmetic/lam{lam}" for t in TASKS}
    if method.startswith("baseline_") and method[len("baseline_"):] in METHODS:
        return {t: f"{baseline_dir(method[len('baseline_'):])}/model" for t in TASKS}
    raise ValueError(f"unknown evaluation target '{method}'")


def table_rows():
    """Row name -> predictions file, in table order (the registry's, for the baselines that
    baselines.methods names); the λ sweep rows collapse to the best."""
    rows = {
        "Pretrained": "results/eval/pretrained.parquet",
        "Individual": "results/eval/individual.parquet",
    }
    for method, spec in METHODS.items():
        if method not in CFG.baselines.methods:
            continue
        if method == "task_arithmetic":
            rows[f"Task arithmetic (λ={TA_LAMBDA})"] = f"results/eval/task_arithmetic_lam{TA_LAMBDA}.parquet"
            rows.update({f"Task arithmetic λ={lam}": f"results/eval/task_arithmetic_lam{lam}.parquet" for lam in LAMBDAS})
        else:
            rows[spec.label] = f"results/eval/baseline_{method}.parquet"
    rows["CALM"] = "results/eval/calm.parquet"
    return rows


# --- baselines (workflow/rules/baselines.smk) -------------------------------------------------

BASELINE_FILES = {
    "inputs": ("--inputs", "results/inputs/{}.safetensors"),
    "head": ("--heads", "results/heads/{}.safetensors"),
    "scores": ("--scores", "results/scores/{}.parquet"),
}


def baseline_dir(method):
    return f"results/merge/baselines/{method}"


def baseline_inputs(wildcards):
    """The per-task files the method's registry entry says it reads."""
    return [BASELINE_FILES[need][1].format(t) for need in METHODS[wildcards.method].needs for t in TASKS]


def baseline_data_flags(wildcards):
    return " ".join(
        f"{BASELINE_FILES[need][0]} " + " ".join(f"{t}={BASELINE_FILES[need][1].format(t)}" for t in TASKS)
        for need in METHODS[wildcards.method].needs
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


def show_table():
    path = Path("results/tables/main.md")
    if path.exists():
        print(f"\nResults ({path}):\n\n{path.read_text()}")


# --- paper tables and figures (workflow/rules/paper.smk) ---------------------------------------


def calm_steps():
    """(k, task, folder, benchmark file) of each sequential step of the main CALM run."""
    return [(k, t, step_dir(k), f"benchmarks/rules/merge/calm_step{k}-{t}.tsv") for k, t in enumerate(SEQ, start=1)]


def calm_traces():
    """Fig. 12: label -> mask trace of each sequential step of the main CALM run."""
    return {f"{t} (step {k})": f"{folder}/trace.csv" for k, t, folder, _ in calm_steps()}


def runtime_rows():
    """Table 8: row name -> (Snakemake benchmark files whose `s` add up to the row's run time,
    iterations). CALM's rows: each step of the main run, then all of them."""
    it = CFG.calm.iterations
    steps = calm_steps()
    rows = {f"CALM step {k}: {t} ({len(EFFICIENT) + k} visible tasks)": ([bench], it) for k, t, _, bench in steps}
    if len(steps) > 1:
        rows[f"CALM, all {len(steps)} steps (|S̄| = {len(steps)})"] = ([b for *_, b in steps], it * len(steps))
    # The data-driven baselines the main run made (iterations: L&S epochs per task, AdaMerging steps).
    for m in ("localize_stitch", "adamerging_task", "adamerging_layer"):
        if m in CFG.baselines.methods:
            iters = (CFG.baselines.localize_stitch.epochs * len(TASKS) if m == "localize_stitch"
                     else CFG.baselines.adamerging.steps)
            rows[METHODS[m].label] = ([f"benchmarks/rules/merge/baseline_{m}.tsv"], iters)
    return rows


def labelled(pairs):
    """LABEL=PATH arguments, each shell-quoted (labels hold spaces and brackets)."""
    return " ".join(shlex.quote(f"{label}={path}") for label, path in pairs)
