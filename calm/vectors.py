"""State-dict arithmetic over name -> tensor dicts (task vectors and their sums)."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

StateDict = dict[str, torch.Tensor]


def check_compatible(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                     what: str = "fine-tuned model") -> None:
    """Raise naming the first tensor, in the reference's order, that is missing or differs in
    shape or dtype; then the first one the reference lacks."""
    missing = [k for k in reference if k not in other]
    extra = [k for k in other if k not in reference]
    counts = f"({len(missing)} missing, {len(extra)} unexpected)"
    for k, ref in reference.items():
        if k not in other:
            raise ValueError(f"tensor '{k}' is missing from the {what} {counts}")
        t = other[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise ValueError(f"tensor '{k}' of the {what} is {tuple(t.shape)} {t.dtype}, "
                             f"expected {tuple(ref.shape)} {ref.dtype}")
    if extra:
        raise ValueError(f"tensor '{extra[0]}' is unexpected in the {what} {counts}")


def task_vector(finetuned: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor]) -> StateDict:
    check_compatible(pretrained, finetuned)
    return {k: finetuned[k] - pretrained[k] for k in pretrained}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: a[k] + b[k] for k in a}


def scale(a: Mapping[str, torch.Tensor], factor: float) -> StateDict:
    return {k: v * factor for k, v in a.items()}


def weighted_sum(vectors: Iterable[Mapping[str, torch.Tensor]], weight: float) -> StateDict:
    """weight · Σ vectors (task arithmetic's τ = λ Σ τ_t)."""
    total: StateDict | None = None
    for v in vectors:
        total = {k: t.clone() for k, t in v.items()} if total is None else add(total, v)
    if total is None:
        raise ValueError("no task vectors to sum")
    return scale(total, weight)


def zeros_like(a: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def numel(a: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in a.values())
