"""CALM: efficient-aware split plus consensus-aware mask optimisation (docs/design.md §1–§2).

The loop never rebuilds a module: each iteration forms θ = θ0 + mix(τ_prev, τ_j, σ(R)) as
plain tensors, runs each batch through the family's functional forward, and lets the
batches' gradients accumulate in ∂L/∂θ. Because the merge rule is linear in the mask,
∂L/∂σ(R) = ∂L/∂θ ⊙ ∂mix/∂m, so memory is a fixed handful of model-sized tensors whatever
the number of visible tasks: θ0, τ_prev, τ_j, R, θ and ∂L/∂θ. The element-wise work (forming
θ, the mask update) runs over slices of at most CHUNK entries written in place, so its
temporaries stay small even for a tensor as large as a word-embedding matrix (half of MiniLM).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from tqdm.auto import tqdm

from calm.merging.mask import (Strategy, active_fraction, binarise, commit, dmix_dm, init_mask_logits, mix,
                               update_logits)
from calm.vectors import StateDict

@dataclass(frozen=True)
class MaskSettings:
    """What the mask optimisation reads: CALM's step builds it from the calm section
    (calm.config.CalmConfig), Localize-and-Stitch from its own settings."""
    iterations: int
    lr: float  # SGD learning rate on the mask logits R
    alpha: float  # regulariser strength
    init_value: float  # R starts at ±init_value
    init_fraction: float  # the fraction of entries (largest |τ_new|) that start on
    grad_reduction: Literal["sum", "mean"] = "sum"  # the batches' gradients added, or averaged
    regulariser: Literal["polarise", "l1"] = "polarise"
    strategy: Strategy = "both"
    checkpoint_every: int = 0  # iterations between on_checkpoint calls (0: none)
    trace_eval_every: int = 0  # iterations between trace_eval calls (0: none)

    @classmethod
    def of(cls, section: Any) -> "MaskSettings":
        """The settings of a config section that has (at least) these fields."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


# One term of the objective: a named batch loss as a function of the merged parameters.
LossTerm = tuple[str, Callable[[StateDict], torch.Tensor]]
CHUNK = 1 << 20


def _slices(*tensors: torch.Tensor | None) -> Iterable[list[torch.Tensor | None]]:
    """Matching flat slices of same-sized tensors (views of contiguous ones; None stays None)."""
    flat = [t.reshape(-1) if t is not None else None for t in tensors]
    size = next(f for f in flat if f is not None).numel()
    for start in range(0, size, CHUNK):
        yield [f[start:start + CHUNK] if f is not None else None for f in flat]


def _soft_merge_into(out: torch.Tensor, theta0: torch.Tensor, tau_prev: torch.Tensor, tau_new: torch.Tensor,
                     r: torch.Tensor, strategy) -> None:
    """out ← θ0 + mix(τ_prev, τ_j, σ(R)) of one tensor, slice by slice."""
    with torch.no_grad():
        for o, t0, p, q, x in _slices(out, theta0, tau_prev, tau_new, r):
            o.copy_(t0 + mix(p, q, torch.sigmoid(x), strategy))


def _step_logits(r: torch.Tensor, grad: torch.Tensor | None, tau_prev: torch.Tensor, tau_new: torch.Tensor,
                 scale: float, cfg: MaskSettings) -> None:
    """R ← update_logits(R, ∂L/∂θ ⊙ ∂mix/∂m · scale) in place, slice by slice. A tensor no batch
    reaches (an unused pooler) has no gradient: its mask only feels the regulariser."""
    for x, g, p, q in _slices(r, grad, tau_prev, tau_new):
        g_m = g * dmix_dm(p, q, cfg.strategy) * scale if g is not None else torch.zeros_like(x)
        x.copy_(update_logits(x, g_m, cfg.lr, cfg.alpha, cfg.regulariser))


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
                  cfg: MaskSettings, progress: bool = True, resume: MaskState | None = None,
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
        # A copy: the loop updates R in place and must not touch the caller's state.
        R = {n: resume.logits[n].to(tau_new[n].device, torch.float32, copy=True) for n in tau_new}
        initial_active, trace = resume.initial_active, list(resume.trace)
    R = {n: r.contiguous() for n, r in R.items()}
    first = resume.iteration if resume is not None else 0
    bar = tqdm(range(first, cfg.iterations), initial=first, total=cfg.iterations, desc="mask", unit="it",
               disable=not progress, mininterval=2.0)
    # θ and ∂L/∂θ live through the whole loop and are overwritten in place each iteration:
    # fresh model-sized buffers every iteration cost page faults on a CPU.
    theta = {n: torch.empty(t.shape, device=t.device, requires_grad=True,
                            dtype=torch.promote_types(torch.promote_types(t.dtype, tau_prev[n].dtype),
                                                      torch.promote_types(tau_new[n].dtype, R[n].dtype)))
             for n, t in theta0.items()}
    for it in bar:
        start = time.perf_counter()
        for n in theta:
            _soft_merge_into(theta[n], theta0[n], tau_prev[n], tau_new[n], R[n], cfg.strategy)
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
        for n, t in theta.items():
            _step_logits(R[n], t.grad, tau_prev[n], tau_new[n], scale, cfg)
            if t.grad is not None:
                t.grad.zero_()
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
            on_checkpoint(MaskState(iteration=done, logits={n: r.clone() for n, r in R.items()},
                                    trace=list(trace), initial_active=initial_active))
    del theta
    mask = binarise(R)
    return MaskResult(logits=R, mask=mask, tau=commit(tau_prev, tau_new, mask, cfg.strategy),
                      trace=trace, initial_active=initial_active)


def layer_fractions(mask: Mapping[str, torch.Tensor]) -> list[dict]:
    """Active fraction per tensor (the paper's Fig. 7 is these grouped by layer)."""
    return [{"tensor": n, "numel": m.numel(), "active": int(m.sum()),
             "active_fraction": float(m.float().mean())} for n, m in mask.items()]
