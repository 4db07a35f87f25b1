"""TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Each task vector is trimmed to its top-k fraction by magnitude over all its tensors; each
entry's sign is elected by the sign of the summed trimmed values; the entries that agree
with the elected sign are summed (or averaged), and the result scaled by λ.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

from calm.vectors import StateDict


def trim(tau: Mapping[str, torch.Tensor], k: float) -> StateDict:
    """Keep the entries whose |τ| is at least the n-th largest |τ| over all tensors,
    n = max(1, int(k · N)); zero the rest (ties at the threshold are kept)."""
    flat = torch.cat([t.detach().abs().flatten().float() for t in tau.values()])
    n = max(1, int(k * flat.numel()))
    threshold = torch.topk(flat, n, sorted=False).values.min()
    return {name: torch.where(t.abs().float() >= threshold, t, torch.zeros_like(t)) for name, t in tau.items()}


def elect_sign(trimmed: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """sign(Σ_t τ̂_t) per entry; where the sum is 0 the majority sign wins, i.e. the sign of
    the sum of the elected signs over all entries (the official code's tie rule)."""
    names = list(trimmed[0])
    sign = {n: torch.sign(sum(t[n] for t in trimmed)) for n in names}
    majority = torch.sign(sum(s.sum() for s in sign.values()))
    return {n: torch.where(s == 0, majority, s) for n, s in sign.items()}


def disjoint_merge(trimmed: Sequence[Mapping[str, torch.Tensor]], sign: Mapping[str, torch.Tensor],
                   merge: Literal["sum", "mean"]) -> StateDict:
    out = {}
    for n, s in sign.items():
        stack = torch.stack([t[n] for t in trimmed])
        agree = torch.where(s > 0, stack > 0, stack < 0)
        kept = stack * agree
        total = kept.sum(dim=0)
        if merge == "mean":
            total = total / agree.sum(dim=0).clamp(min=1)
        elif merge != "sum":
            raise ValueError(f"unknown TIES merge '{merge}'")
        out[n] = total
    return out


def ties_vector(vectors: Sequence[Mapping[str, torch.Tensor]], k: float = 0.2,
                merge: Literal["sum", "mean"] = "sum") -> StateDict:
    """The TIES-merged vector before the λ scaling."""
    if not vectors:
        raise ValueError("no task vectors to merge")
    trimmed = [trim(v, k) for v in vectors]
    return disjoint_merge(trimmed, elect_sign(trimmed), merge)


def ties(vectors: Sequence[Mapping[str, torch.Tensor]], k: float = 0.2, lam: float = 0.3,
         merge: Literal["sum", "mean"] = "sum") -> StateDict:
    return {n: lam * t for n, t in ties_vector(vectors, k, merge).items()}
