import json
import shlex
from pathlib import Path

from calm.cli import interpreter_first_on_path, render_flags
from calm.config import Config

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
    return f"results/models/finetuned/{task}"


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
    raise ValueError(f"unknown evaluation target '{method}'")


def table_rows():
    """Row name -> predictions file, in table order; the λ sweep rows collapse to the best."""
    rows = {
        "Pretrained": "results/eval/pretrained.parquet",
        "Individual": "results/eval/individual.parquet",
        f"Task arithmetic (λ={TA_LAMBDA})": f"results/eval/task_arithmetic_lam{TA_LAMBDA}.parquet",
    }
    rows.update({f"Task arithmetic λ={lam}": f"results/eval/task_arithmetic_lam{lam}.parquet" for lam in LAMBDAS})
    rows["CALM"] = "results/eval/calm.parquet"
    return rows


def show_table():
    path = Path("results/tables/main.md")
    if path.exists():
        print(f"\nResults ({path}):\n\n{path.read_text()}")
