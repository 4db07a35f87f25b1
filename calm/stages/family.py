"""What the stages share: the model family opened from the flags, the fine-tuned models read as
task vectors, one task's test predictions under a set of parameters, and a merge direction's
scale chosen on the val splits."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping

import pandas as pd
import torch

from calm import artifacts, vectors
from calm.config import ModelConfig
from calm.families import get_family
from calm.families.base import Family, use_bf16
from calm.inference import predict_logits
from calm.metrics import accuracy, average, chosen_scale

log = logging.getLogger("calm")


def open_family(model: ModelConfig, pretrained_dir: str | Path, device: str = "auto",
                precision: str = "auto") -> Family:
    family = get_family(model.family).from_config(pretrained_dir, model, device=device)
    family.bf16 = use_bf16(precision, family.device)
    family.trust_pickle = model.trust_pickle
    log.info("device %s, %s matmuls", family.device, "bf16" if family.bf16 else "fp32")
    return family


def task_vectors(family: Family, theta0: Mapping[str, torch.Tensor],
                 model_dirs: list[str | Path]) -> Iterator[dict[str, torch.Tensor]]:
    """τ_t = θ_t − θ0 of each fine-tuned model folder, read one at a time."""
    for d in model_dirs:
        yield vectors.task_vector(family.load_state(Path(d)), theta0)


def predictions(family: Family, params: Mapping[str, torch.Tensor], task: str, inputs: str | Path,
                head: str | Path, batch_size: int, desc: str | None = None, split: str = "test") -> pd.DataFrame:
    cache = artifacts.read_inputs(inputs, split)
    logits = predict_logits(family, params, cache, artifacts.read_head(head), batch_size,
                            desc=desc or f"evaluate {task}")
    return pd.DataFrame({"task": task, "idx": cache["idx"].numpy(), "label": cache["label"].numpy(),
                         "pred": logits.argmax(dim=-1).numpy()})


def scale_on_validation(family: Family, origin: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor],
                        grid: list[float], inputs: Mapping[str, str | Path], heads: Mapping[str, str | Path],
                        batch_size: int) -> tuple[float, dict]:
    """The scale g of `grid` whose origin + g·direction (origin: θ0, or for a method affine in its
    scale its merge at 0) has the best average val accuracy over the tasks of `inputs` (the first
    on a tie), and the record of the choice: every g's accuracy (%) and each task's number of val
    examples."""
    curve, sizes = {}, {}
    for g in grid:
        params = {n: origin[n] + g * v for n, v in direction.items()}
        val = pd.concat([predictions(family, params, task, inputs[task], heads[task], batch_size,
                                     desc=f"val ×{g:g} {task}", split="val") for task in inputs], ignore_index=True)
        curve[g] = average(accuracy(val))
        sizes = {task: int(n) for task, n in val.groupby("task", sort=False).size().items()}
    return chosen_scale(curve), {"val_accuracy": [{"scale": g, "accuracy": 100 * a} for g, a in curve.items()],
                                 "val_examples": sizes}
