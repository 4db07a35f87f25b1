"""Fisher merging (Matena & Raffel, 2022) with a diagonal Fisher.

F_t = mean over examples of (∂ log p(y | x; θ_t) / ∂θ)², per example, with y the pseudo-label
of the task's fine-tuned model on its unlabeled pool. The merge is the Fisher-weighted mean
θ = Σ_t F_t θ_t / Σ_t F_t, written on task vectors (θ0 cancels); ε is added to every F_t so
entries that no example reaches fall back to the plain average.

The paper's merge also weights each model by a coefficient c_t (c on the simplex),
θ = Σ_t c_t F_t θ_t / Σ_t c_t F_t, which its authors search on validation data: a grid for two
models, otherwise random draws from a flat Dirichlet (`coefficient_draws`).
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
                 epsilon: float = 1e-6, coefficients: Sequence[float] | None = None) -> StateDict:
    """Σ_t c_t (F_t + ε) τ_t / Σ_t c_t (F_t + ε); `coefficients` c, one per model (None: equal)."""
    if len(vectors) != len(fishers) or not vectors:
        raise ValueError(f"Fisher merging needs one Fisher per task vector, got {len(fishers)} for {len(vectors)}")
    if coefficients is not None:
        if len(coefficients) != len(vectors) or min(coefficients) < 0 or sum(coefficients) <= 0:
            raise ValueError(f"Fisher merging needs a coefficient ≥ 0 per model, not all 0; got {list(coefficients)} "
                             f"for {len(vectors)} models")
        if len(set(coefficients)) == 1:
            coefficients = None  # equal coefficients cancel: the merge is exactly the unweighted one
    out = {}
    for n, ref in vectors[0].items():
        weights = [f[n].to(ref.dtype) + epsilon for f in fishers]
        if coefficients is not None:
            weights = [c * w for c, w in zip(coefficients, weights)]
        out[n] = sum(w * v[n] for w, v in zip(weights, vectors)) / sum(weights)
    return out


def coefficient_draws(n_models: int, draws: int, seed: int = 0) -> list[list[float]]:
    """The candidate coefficients of the authors' search: equal ones first (the plain Fisher merge,
    which a tie then keeps), and draws − 1 seeded draws from a flat Dirichlet over the simplex
    (normalised Exp(1) variables: Dirichlet(1, …, 1))."""
    if n_models < 1 or draws < 1:
        raise ValueError(f"coefficient draws need at least one model and one draw, got {n_models} and {draws}")
    generator = torch.Generator().manual_seed(seed)
    e = torch.empty(draws - 1, n_models, dtype=torch.float64).exponential_(generator=generator)
    return [[1.0 / n_models] * n_models] + (e / e.sum(dim=1, keepdim=True)).tolist()
