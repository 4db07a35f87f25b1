"""EMR-Merging (Huang et al., NeurIPS 2024, "EMR-Merging: Tuning-Free High-Performance Model
Merging"): Elect, Mask, Rescale.

Not one merged model: a unified task vector shared by all tasks plus, per task, a binary mask
and a scalar, so each task is evaluated with its own model θ0 + λ_t · M_t ⊙ τ_uni.
- Elect: per entry the sign γ of Σ_t τ_t, and τ_uni = γ · the largest |τ_t| among the tasks
  whose τ_t has that sign.
- Mask: M_t = (τ_t · γ > 0), where task t agrees with the elected sign.
- Rescale: λ_t makes the masked vector as large as the task's own,
  λ_t = Σ|τ_t| / Σ|M_t ⊙ τ_uni|.

Where the authors' code (harveyhuang18/EMR_Merging, merge_vit/src/main_emr_merging.py)
reads differently from the paper:
- The rescaler sums the per-tensor means, λ_t = Σ_n mean|τ_t[n]| / Σ_n mean|M_t[n] ⊙ τ_uni[n]|,
  so every tensor weighs the same whatever its size (rescale="tensor_mean", the default);
  the paper's global sums over all entries are rescale="sum" (as the authors' flattened
  30-model script computes).
- Where Σ_t τ_t is exactly 0 the code elects −1 (the paper's sign would be 0): the tasks with
  τ_t < 0 there agree. Kept, without a switch; it only matters on exact ties.
All tensors are elected, masked and rescaled, not only matrices. EMR has no α and no
hyperparameters (literature defaults: rescale = "tensor_mean").

Storage beyond one merged model: per task one mask bit per parameter and one rescaler,
`emr_storage_bits`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch

from calm.vectors import StateDict


@dataclass(frozen=True)
class EMR:
    unified: StateDict  # τ_uni
    masks: list[dict[str, torch.Tensor]]  # M_t, bool, one dict per task
    rescalers: tuple[float, ...]  # λ_t


def emr_merge(vectors: Sequence[Mapping[str, torch.Tensor]],
              rescale: Literal["tensor_mean", "sum"] = "tensor_mean") -> EMR:
    if not vectors:
        raise ValueError("no task vectors to merge")
    if rescale not in ("tensor_mean", "sum"):
        raise ValueError(f"unknown EMR rescale '{rescale}' (tensor_mean or sum)")
    reduce = torch.mean if rescale == "tensor_mean" else torch.sum
    unified: StateDict = {}
    masks: list[dict[str, torch.Tensor]] = [{} for _ in vectors]
    own = [0.0] * len(vectors)
    for n in vectors[0]:
        sign = torch.where(sum(v[n] for v in vectors) > 0, 1, -1).to(vectors[0][n].dtype)
        largest = torch.zeros_like(vectors[0][n])
        for t, v in enumerate(vectors):
            agree = v[n] * sign > 0
            masks[t][n] = agree
            largest = torch.maximum(largest, (v[n] * agree).abs())
            own[t] += reduce(v[n].abs().double()).item()
        unified[n] = largest * sign
    kept = [sum(reduce((unified[n] * m[n]).abs().double()).item() for n in unified) for m in masks]
    # A task that agrees nowhere gets a zero vector whatever its λ; 1 avoids 0/0.
    rescalers = tuple(o / k if k > 0 else 1.0 for o, k in zip(own, kept))
    return EMR(unified, masks, rescalers)


def emr_task_vector(emr: EMR, task: int) -> StateDict:
    """Task `task`'s vector λ_t · M_t ⊙ τ_uni."""
    lam, mask = emr.rescalers[task], emr.masks[task]
    return {n: lam * u * mask[n].to(u.dtype) for n, u in emr.unified.items()}


def emr_storage_bits(n_tasks: int, n_params: int, rescaler_bits: int = 32) -> float:
    """Extra bits per parameter over one merged model: T mask bits per parameter plus T
    rescalers of `rescaler_bits` each, spread over the n_params parameters."""
    if n_params <= 0 or n_tasks <= 0:
        raise ValueError(f"EMR storage needs positive counts, got {n_tasks} tasks and {n_params} parameters")
    return n_tasks + n_tasks * rescaler_bits / n_params
