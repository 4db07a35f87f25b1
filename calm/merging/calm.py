"""CALM: efficient-aware split plus consensus-aware mask optimisation (DESIGN.md §2).

The loop never rebuilds a module: each iteration forms θ = θ0 + mix(τ_prev, τ_j, σ(R)) as
plain tensors, runs each batch through the family's functional forward, and lets the
batches' gradients accumulate in ∂L/∂θ. Because the merge rule is linear in the mask,
∂L/∂σ(R) = ∂L/∂θ ⊙ ∂mix/∂m, so memory is a fixed handful of model-sized tensors whatever
the number of visible tasks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from tqdm.auto import tqdm

from calm.config import CalmConfig
from calm.merging.mask import (active_fraction, binarise, commit, dmix_dm, init_mask_logits, mask_update,
                               mix)

StateDict = dict[str, torch.Tensor]
# One term of the objective: a named batch loss as a function of the merged parameters.
LossTerm = tuple[str, Callable[[StateDict], torch.Tensor]]


@dataclass
class MaskResult:
    logits: StateDict
    mask: dict[str, torch.Tensor]
    tau: StateDict
    trace: list[dict] = field(default_factory=list)
    initial_active: int = 0


@dataclass
class MaskState:
    """The loop after `iteration` iterations: enough, with the batch generator's state, to go
    on exactly as if it had never stopped."""
    iteration: int
    logits: StateDict
    trace: list[dict]
    initial_active: int


def optimise_mask(theta0: Mapping[str, torch.Tensor], tau_prev: Mapping[str, torch.Tensor],
                  tau_new: Mapping[str, torch.Tensor], loss_terms: Callable[[int], Iterable[LossTerm]],
                  cfg: CalmConfig, progress: bool = True, resume: MaskState | None = None,
                  on_checkpoint: Callable[[MaskState], None] | None = None,
                  trace_eval: Callable[[StateDict], dict[str, float]] | None = None) -> MaskResult:
    """Learn the mask for merging τ_new into τ_prev, then binarise and commit it.

    `loss_terms(i)` yields the batch losses of iteration i (2 fresh batches per visible task
    in the paper); their gradients are summed, or averaged with grad_reduction: mean.
    `on_checkpoint` gets the state every cfg.checkpoint_every iterations; passing a saved
    state back as `resume` continues from it.
    `trace_eval(τ)`, called every cfg.trace_eval_every iterations with the merged task vector
    that binarising the mask there would commit, returns extra trace columns (accuracies).
    """
    if resume is None:
        R = init_mask_logits(tau_new, cfg.init_fraction, cfg.init_value)
        initial_active = sum(int((r > 0).sum()) for r in R.values())
        trace: list[dict] = []
    else:
        R = {n: resume.logits[n].to(tau_new[n].device) for n in tau_new}
        initial_active, trace = resume.initial_active, list(resume.trace)
    first = resume.iteration if resume is not None else 0
    direction = {n: dmix_dm(tau_prev[n], tau_new[n], cfg.strategy) for n in theta0}
    bar = tqdm(range(first, cfg.iterations), initial=first, total=cfg.iterations, desc="mask", unit="it",
               disable=not progress, mininterval=2.0)
    for it in bar:
        start = time.perf_counter()
        theta = {n: (theta0[n] + mix(tau_prev[n], tau_new[n], torch.sigmoid(R[n]), cfg.strategy))
                 .detach().requires_grad_(True) for n in theta0}
        losses: dict[str, list[float]] = {}
        count = 0
        for name, term in loss_terms(it):
            loss = term(theta)
            loss.backward()
            losses.setdefault(name, []).append(float(loss.detach()))
            count += 1
        if count == 0:
            raise RuntimeError("the mask objective has no batches: every credible set is empty")
        scale = 1.0 / count if cfg.grad_reduction == "mean" else 1.0
        # A tensor no batch reaches (an unused pooler) has no gradient: its mask only regularises.
        grad_m = {n: (theta[n].grad * direction[n] * scale if theta[n].grad is not None
                      else torch.zeros_like(direction[n])) for n in theta}
        del theta
        R = mask_update(R, grad_m, cfg.lr, cfg.alpha, cfg.regulariser)
        del grad_m
        row = {"iteration": it + 1,
               "loss": sum(sum(v) for v in losses.values()) / count,
               "active_fraction": active_fraction(R),
               "seconds": time.perf_counter() - start}
        row.update({f"loss/{k}": sum(v) / len(v) for k, v in losses.items()})
        if trace_eval is not None and cfg.trace_eval_every and (it + 1) % cfg.trace_eval_every == 0:
            row.update(trace_eval(commit(tau_prev, tau_new, binarise(R), cfg.strategy)))
        trace.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", active=f"{row['active_fraction']:.2e}")
        done = it + 1
        if on_checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 \
                and done < cfg.iterations:
            on_checkpoint(MaskState(iteration=done, logits=R, trace=list(trace), initial_active=initial_active))
    mask = binarise(R)
    return MaskResult(logits=R, mask=mask, tau=commit(tau_prev, tau_new, mask, cfg.strategy),
                      trace=trace, initial_active=initial_active)


def layer_fractions(mask: Mapping[str, torch.Tensor]) -> list[dict]:
    """Active fraction per tensor (the paper's Fig. 7 is these grouped by layer)."""
    return [{"tensor": n, "numel": m.numel(), "active": int(m.sum()),
             "active_fraction": float(m.float().mean())} for n, m in mask.items()]
