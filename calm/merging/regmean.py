"""RegMean (Jin et al., 2023): merge each linear layer in closed form from its input Grams.

For a linear weight W (torch's (out, in) layout, y = x Wᵀ) with task Gram matrices
G_t = X_tᵀ X_t of its inputs, W = [(Σ_t G̃_t)⁻¹ Σ_t G̃_t W_tᵀ]ᵀ, where G̃ keeps the diagonal of
G and scales the off-diagonal by α. Written on task vectors (W_t = W0 + τ_t): the same
formula maps τ_t to the merged τ because Σ_t G̃_t appears on both sides. Every other tensor
(biases, norms, embeddings, a linear layer no input reached) is averaged.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from calm.merging.weight_averaging import weight_averaging
from calm.vectors import StateDict


def reduce_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean(vectors: Sequence[Mapping[str, torch.Tensor]], grams: Sequence[Mapping[str, torch.Tensor]],
            alpha: float = 0.9) -> StateDict:
    if len(vectors) != len(grams) or not vectors:
        raise ValueError(f"RegMean needs one set of Gram matrices per task vector, got {len(grams)} for {len(vectors)}")
    out = weight_averaging(vectors)
    for n in vectors[0]:
        if not all(n in g for g in grams):
            continue
        reduced = [reduce_off_diagonal(g[n].double(), alpha) for g in grams]
        lhs = sum(reduced)
        rhs = sum(g @ v[n].double().T for g, v in zip(reduced, vectors))
        try:
            solution = torch.linalg.solve(lhs, rhs)
        except RuntimeError:  # singular: an input feature that is zero on every example
            solution = torch.linalg.pinv(lhs) @ rhs
        out[n] = solution.T.to(vectors[0][n].dtype)
    return out
