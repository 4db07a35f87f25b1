"""Consensus merging with TALL masks (Wang et al., 2024).

TALL mask of task t: m_t = |τ_t| > λ_t · |τ_MTL − τ_t| (strict, as the official code), with
τ_MTL the merged vector before scaling (Σ τ_t for task arithmetic, the TIES vector for
TIES). The consensus mask keeps the entries selected by at least `min_tasks` TALL masks,
removing the weights useful to one task only ("selfish") or to none ("catastrophic").

λ_t is one value for every task, or one per task: the authors choose each task's on its own
val split, by the accuracy of θ0 + m_t ∘ τ_MTL there (`tall_vectors_ta` / `tall_vectors_ties`
give those vectors; calm.stages.evaluate makes the choice).
"""
from __future__ import annotations

from typing import Iterator, Literal, Mapping, Sequence

import torch

from calm.merging.ties import ties_vector
from calm.vectors import StateDict, weighted_sum

TallLambda = float | Sequence[float]


def _per_task(tall_lambda: TallLambda, n: int) -> list[float]:
    if isinstance(tall_lambda, (int, float)):
        return [float(tall_lambda)] * n
    if len(tall_lambda) != n:
        raise ValueError(f"consensus: {len(tall_lambda)} TALL λ_t for {n} task vectors")
    return [float(v) for v in tall_lambda]


def tall_mask(tau: Mapping[str, torch.Tensor], merged: Mapping[str, torch.Tensor],
              tall_lambda: float) -> dict[str, torch.Tensor]:
    return {n: tau[n].abs() > tall_lambda * (merged[n] - tau[n]).abs() for n in merged}


def tall_masks(vectors: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor],
               tall_lambda: TallLambda) -> list[dict[str, torch.Tensor]]:
    return [tall_mask(tau, merged, lam) for tau, lam in zip(vectors, _per_task(tall_lambda, len(vectors)))]


def consensus_mask(masks: Sequence[Mapping[str, torch.Tensor]], min_tasks: int) -> dict[str, torch.Tensor]:
    return {n: sum(m[n].to(torch.int64) for m in masks) >= min_tasks for n in masks[0]}


def apply_consensus(vectors: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor],
                    tall_lambda: TallLambda, min_tasks: int, lam: float) -> StateDict:
    mask = consensus_mask(tall_masks(vectors, merged, tall_lambda), min_tasks)
    return {n: lam * merged[n] * mask[n].to(merged[n].dtype) for n in merged}


def tall_task_vectors(vectors: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor],
                      values: Sequence[float]) -> Iterator[tuple[float, int, StateDict]]:
    """For each λ_t of `values` and each task t: (λ_t, t, m_t ∘ τ_MTL), one at a time (the
    authors rebuild task t as θ0 + m_t ∘ τ_MTL, at scale 1). τ_MTL is given once for them all."""
    for value in values:
        for t, tau in enumerate(vectors):
            mask = tall_mask(tau, merged, value)
            yield value, t, {n: merged[n] * mask[n].to(merged[n].dtype) for n in merged}


def consensus_ta(vectors: Sequence[Mapping[str, torch.Tensor]], tall_lambda: TallLambda = 0.4, min_tasks: int = 2,
                 lam: float = 0.3) -> StateDict:
    return apply_consensus(vectors, weighted_sum(vectors, 1.0), tall_lambda, min_tasks, lam)


def consensus_ties(vectors: Sequence[Mapping[str, torch.Tensor]], tall_lambda: TallLambda = 0.4, min_tasks: int = 2,
                   lam: float = 0.3, k: float = 0.2, merge: Literal["sum", "mean"] = "sum") -> StateDict:
    return apply_consensus(vectors, ties_vector(vectors, k, merge), tall_lambda, min_tasks, lam)


# The per-task vectors by which each task's λ_t is chosen, over a grid of λ_t; they take their
# method's other options (min_tasks and lam do not enter a TALL mask).
def tall_vectors_ta(vectors: Sequence[Mapping[str, torch.Tensor]], values: Sequence[float], min_tasks: int = 2,
                    lam: float = 0.3) -> Iterator[tuple[float, int, StateDict]]:
    return tall_task_vectors(vectors, weighted_sum(vectors, 1.0), values)


def tall_vectors_ties(vectors: Sequence[Mapping[str, torch.Tensor]], values: Sequence[float], min_tasks: int = 2,
                      lam: float = 0.3, k: float = 0.2,
                      merge: Literal["sum", "mean"] = "sum") -> Iterator[tuple[float, int, StateDict]]:
    return tall_task_vectors(vectors, ties_vector(vectors, k, merge), values)
