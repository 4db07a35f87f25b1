"""Consensus merging with TALL masks (Wang et al., 2024).

TALL mask of task t: m_t = |τ_t| > λ_t · |τ_MTL − τ_t| (strict, as the official code), with
τ_MTL the merged vector before scaling (Σ τ_t for task arithmetic, the TIES vector for
TIES). The consensus mask keeps the entries selected by at least `min_tasks` TALL masks,
removing the weights useful to one task only ("selfish") or to none ("catastrophic").
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

from calm.merging.ties import ties_vector
from calm.vectors import StateDict, weighted_sum


def tall_masks(vectors: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor],
               tall_lambda: float) -> list[dict[str, torch.Tensor]]:
    return [{n: tau[n].abs() > tall_lambda * (merged[n] - tau[n]).abs() for n in merged} for tau in vectors]


def consensus_mask(masks: Sequence[Mapping[str, torch.Tensor]], min_tasks: int) -> dict[str, torch.Tensor]:
    return {n: sum(m[n].to(torch.int64) for m in masks) >= min_tasks for n in masks[0]}


def apply_consensus(vectors: Sequence[Mapping[str, torch.Tensor]], merged: Mapping[str, torch.Tensor],
                    tall_lambda: float, min_tasks: int, lam: float) -> StateDict:
    mask = consensus_mask(tall_masks(vectors, merged, tall_lambda), min_tasks)
    return {n: lam * merged[n] * mask[n].to(merged[n].dtype) for n in merged}


def consensus_ta(vectors: Sequence[Mapping[str, torch.Tensor]], tall_lambda: float = 0.4, min_tasks: int = 2,
                 lam: float = 0.3) -> StateDict:
    return apply_consensus(vectors, weighted_sum(vectors, 1.0), tall_lambda, min_tasks, lam)


def consensus_ties(vectors: Sequence[Mapping[str, torch.Tensor]], tall_lambda: float = 0.4, min_tasks: int = 2,
                   lam: float = 0.3, k: float = 0.2, merge: Literal["sum", "mean"] = "sum") -> StateDict:
    return apply_consensus(vectors, ties_vector(vectors, k, merge), tall_lambda, min_tasks, lam)
