"""Fisher merging (Matena & Raffel, 2022) with a diagonal Fisher.

F_t = mean over examples of (∂ log p(y | x; θ_t) / ∂θ)², per example, with y the pseudo-label
of the task's fine-tuned model on its unlabeled pool. The merge is the Fisher-weighted mean
θ = Σ_t F_t θ_t / Σ_t F_t, written on task vectors (θ0 cancels); ε is added to every F_t so
entries that no example reaches fall back to the plain average.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from calm.vectors import StateDict


def diagonal_fisher(params: Mapping[str, torch.Tensor], example_losses: Iterable[Callable[[StateDict], torch.Tensor]],
                    progress: bool = True) -> StateDict:
    """Mean of the squared gradients of each example's loss (−log p(y | x)) at `params`."""
    theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    names = list(theta)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in theta.items()}
    count = 0
    for loss_fn in tqdm(example_losses, desc="fisher", unit="example", disable=not progress, mininterval=2.0):
        grads = torch.autograd.grad(loss_fn(theta), [theta[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                fisher[n] += g.float() ** 2
        count += 1
    if count == 0:
        raise ValueError("no examples to estimate the Fisher information from")
    return {n: f / count for n, f in fisher.items()}


def fisher_merge(vectors: Sequence[Mapping[str, torch.Tensor]], fishers: Sequence[Mapping[str, torch.Tensor]],
                 epsilon: float = 1e-6) -> StateDict:
    if len(vectors) != len(fishers) or not vectors:
        raise ValueError(f"Fisher merging needs one Fisher per task vector, got {len(fishers)} for {len(vectors)}")
    out = {}
    for n, ref in vectors[0].items():
        weights = [f[n].to(ref.dtype) + epsilon for f in fishers]
        out[n] = sum(w * v[n] for w, v in zip(weights, vectors)) / sum(weights)
    return out
