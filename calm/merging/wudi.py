"""WUDI-Merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It:
Guiding Data-Free Model Merging via Task Vectors").

The rows of a linear layer's task vector τ_t (out × in) approximately span the inputs that
layer saw while fine-tuning on task t, so they stand in for that data: the merged update
τ_m should act on them as τ_t does. Per linear layer, with no data, WUDI minimises

    L(τ_m) = Σ_t ‖(τ_m − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F.

With w_t = 1 / ‖τ_t‖²_F and G_t = τ_tᵀ τ_t (in × in),
L = Σ_t w_t tr((τ_m − τ_t) G_t (τ_m − τ_t)ᵀ), a convex quadratic with gradient 2 (τ_m A − B),
A = Σ_t w_t G_t, B = Σ_t w_t τ_t G_t. The gradient is computed in that form (one
out × in × in product per step, instead of the authors' T products of out × in × out plus
autograd), which is the same gradient.

solver="adam" (the authors' code, nathanielyvo/WUDI-Merging, vit/wudi_main.py): τ_m starts
at Σ_t τ_t and takes `steps` Adam steps (lr, no weight decay). Adam moves each entry by at
most about lr per step, so τ_m stays within steps · lr of the task-arithmetic sum (λ = 1) in
every entry (3·10⁻³ at the defaults); whether it gets to the minimum depends on the task
vectors' scale, so lr and steps are part of the method, not just of its solver.
solver="closed_form": the minimiser itself, τ_m = B A⁺ (the normal equations τ_m A = B; A⁺
its pseudo-inverse; the rows of every τ_t lie in A's range, so this is also where plain
gradient descent from Σ_t τ_t ends up). It is not in the authors' code.

Which tensors: the authors' ViT code optimises only the transformer blocks' linear weights
and leaves every other tensor at its pre-trained value (others="zero"); FusionBench's port
optimises every 2-D tensor and averages the rest (others="mean", exclude=()). Here a linear
weight is a 2-D tensor whose name contains none of `exclude`; the default excludes
embeddings, which are 2-D but whose rows are tokens or positions, not inputs (a final 2-D
projection such as open_clip's visual.proj does count, where the authors' code leaves it
out; add it to `exclude` to match). A task whose
τ_t is zero on a layer has no term there (its 0/0 weight is taken as 0). No α: the method
has no scaling coefficient.

Literature defaults (the authors' ViT code): solver = "adam", steps = 300, lr = 1e-5,
others = "zero", exclude = ("embed",). FusionBench's config uses 400 steps.
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

from calm.merging.spectral import merge_matrices
from calm.vectors import StateDict


def interference_terms(matrices: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the gradient 2 (τ_m A − B), in float64."""
    taus = [m.double() for m in matrices]
    a = torch.zeros(taus[0].shape[1], taus[0].shape[1], dtype=torch.float64)
    b = torch.zeros_like(taus[0])
    for tau in taus:
        sq = tau.square().sum()
        if sq == 0:
            continue
        gram = tau.T @ tau / sq
        a += gram
        b += tau @ gram
    return a, b


def wudi_matrix(matrices: Sequence[torch.Tensor], solver: Literal["adam", "closed_form"] = "adam",
                steps: int = 300, lr: float = 1e-5) -> torch.Tensor:
    a, b = interference_terms(matrices)
    if solver == "closed_form":
        return b @ torch.linalg.pinv(a, hermitian=True)
    if solver != "adam":
        raise ValueError(f"unknown WUDI solver '{solver}' (adam or closed_form)")
    # Adam in float32, as the authors run it; A and B were summed in float64 for accuracy.
    a, b = a.float(), b.float()
    tau_m = torch.nn.Parameter(sum(m.float() for m in matrices))
    optimiser = torch.optim.Adam([tau_m], lr=lr, weight_decay=0)
    for _ in range(steps):
        tau_m.grad = 2 * (tau_m.detach() @ a - b)
        optimiser.step()
    return tau_m.detach()


def wudi(vectors: Sequence[Mapping[str, torch.Tensor]], solver: Literal["adam", "closed_form"] = "adam",
         steps: int = 300, lr: float = 1e-5, others: Literal["zero", "mean"] = "zero",
         exclude: Sequence[str] = ("embed",)) -> StateDict:
    return merge_matrices(vectors, lambda ms: wudi_matrix(ms, solver, steps, lr), exclude, others=others)
