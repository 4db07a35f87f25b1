"""Localize-and-Stitch (He et al., 2024).

Localize: per task, a mask over θ0 + σ(R) ⊙ τ_t trained on a few labelled examples of that
task alone, with CALM's mask machinery (the same initialisation, update and polarising
regulariser; CALM's code descends from this method's). One step per epoch with the
gradients of its batches averaged, as the official code does. Stitch: where masks
overlap, the task vectors that claim an entry are averaged.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch

from calm.merging.mask_optimisation import LossTerm, MaskResult, MaskSettings, optimise_mask
from calm.vectors import StateDict, zeros_like


def localize(theta0: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor],
             loss_terms: Callable[[int], Iterable[LossTerm]], epochs: int, lr: float, alpha: float,
             init_value: float, init_fraction: float, regulariser: Literal["polarise", "l1"] = "polarise",
             progress: bool = True) -> MaskResult:
    """The task's binary mask; `loss_terms(epoch)` yields that epoch's batch losses.

    With τ_prev = 0, CALM's merge rule (1 − m) τ_prev + m τ_t is exactly σ(R) ⊙ τ_t.
    """
    cfg = MaskSettings(iterations=epochs, lr=lr, alpha=alpha, init_value=init_value, init_fraction=init_fraction,
                       grad_reduction="mean", regulariser=regulariser, strategy="both")
    return optimise_mask(theta0, zeros_like(tau), tau, loss_terms, cfg, progress=progress)


def stitch(vectors: Sequence[Mapping[str, torch.Tensor]],
           masks: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """τ = Σ_t m_t τ_t / max(1, Σ_t m_t)."""
    if len(vectors) != len(masks) or not vectors:
        raise ValueError(f"stitch needs one mask per task vector, got {len(masks)} masks for {len(vectors)} vectors")
    out = {}
    for n in vectors[0]:
        ms = [m[n].to(vectors[0][n].dtype) for m in masks]
        total = sum(m * v[n] for m, v in zip(ms, vectors))
        out[n] = total / sum(ms).clamp(min=1)
    return out
