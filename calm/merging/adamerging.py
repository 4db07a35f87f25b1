"""AdaMerging (Yang et al., 2024): merging coefficients learned by entropy minimisation.

θ = θ0 + Σ_t λ_t τ_t (task-wise) or θ0 + Σ_t λ_{t,l} τ_{t,l} per tensor l (layer-wise).
Because θ is linear in λ, ∂L/∂λ_{t,l} = ⟨∂L/∂θ_l, τ_{t,l}⟩: each batch's backward only adds
into ∂L/∂θ, so memory is θ0, the task vectors and two model-sized tensors, whatever the
number of tasks and batches. Coefficients start at `init`, take Adam steps and are clamped
to [0, 1] after each step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from calm.merging.mask_optimisation import LossTerm
from calm.vectors import StateDict

Granularity = Literal["task", "layer"]


@dataclass
class AdaMergingResult:
    tau: StateDict
    coefficients: torch.Tensor  # (T,) task-wise or (T, number of tensors) layer-wise
    names: list[str]
    trace: list[dict] = field(default_factory=list)


def combine(vectors: Sequence[Mapping[str, torch.Tensor]], coefficients: torch.Tensor,
            names: Sequence[str]) -> StateDict:
    """Σ_t λ_t τ_t with a (T,) or (T, len(names)) coefficient tensor."""
    out = {}
    for i, n in enumerate(names):
        col = coefficients if coefficients.dim() == 1 else coefficients[:, i]
        out[n] = sum(float(col[t]) * v[n] for t, v in enumerate(vectors))
    return out


def adamerging(theta0: Mapping[str, torch.Tensor], vectors: Sequence[Mapping[str, torch.Tensor]],
               loss_terms: Callable[[int], Iterable[LossTerm]], granularity: Granularity, steps: int,
               lr: float = 1e-3, init: float = 0.3, progress: bool = True) -> AdaMergingResult:
    """`loss_terms(step)` yields the batch losses (prediction entropy) of a step; their
    gradients are summed, as the official code sums the losses."""
    if granularity not in ("task", "layer"):
        raise ValueError(f"unknown AdaMerging granularity '{granularity}'")
    names = list(theta0)
    shape = (len(vectors),) if granularity == "task" else (len(vectors), len(names))
    lam = torch.full(shape, float(init), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([lam], lr=lr)
    trace: list[dict] = []
    bar = tqdm(range(steps), desc=f"adamerging ({granularity})", unit="step", disable=not progress,
               mininterval=2.0)
    for step in bar:
        start = time.perf_counter()
        merged = combine(vectors, lam.detach(), names)
        theta = {n: (theta0[n] + merged[n]).detach().requires_grad_(True) for n in names}
        del merged
        losses = backward_losses(loss_terms(step), theta, "AdaMerging")
        grad = torch.zeros(len(vectors), len(names), dtype=torch.float64)
        for i, n in enumerate(names):
            g = theta[n].grad
            if g is None:  # a tensor no batch reaches (an unused pooler)
                continue
            for t, v in enumerate(vectors):
                grad[t, i] = float((g * v[n]).sum())
        del theta
        optimiser.zero_grad(set_to_none=True)
        lam.grad = grad.sum(dim=1) if granularity == "task" else grad
        optimiser.step()
        with torch.no_grad():
            lam.clamp_(0.0, 1.0)
        row = {"step": step + 1, "loss": sum(sum(v) for v in losses.values()),
               "seconds": time.perf_counter() - start}
        row.update({f"loss/{k}": sum(v) / len(v) for k, v in losses.items()})
        trace.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    coefficients = lam.detach().clone()
    return AdaMergingResult(tau=combine(vectors, coefficients, names), coefficients=coefficients,
                            names=names, trace=trace)


def backward_losses(terms, theta: dict, what: str) -> dict[str, list[float]]:
    """Each batch loss of one step backpropagated into `theta`'s .grad (summed over batches, so
    memory holds one batch's graph at a time); the losses by task, for the trace."""
    losses: dict[str, list[float]] = {}
    for name, term in terms:
        loss = term(theta)
        loss.backward()
        losses.setdefault(name, []).append(float(loss.detach()))
    if not losses:
        raise RuntimeError(f"the {what} objective has no batches")
    return losses
