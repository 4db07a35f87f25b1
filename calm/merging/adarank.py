"""AdaRank (Lee et al., ICLR 2026, "AdaRank: Adaptive Rank Pruning for Enhanced Model Merging"):
which singular components of each task vector to merge, learnt by entropy minimisation on
unlabelled inputs.

A base method gives an offset τ_o and, per task t and matrix l, singular components
ΔW_{t,l} = U diag(s) Vᵀ (every other tensor keeps its per-task vector whole):

    base             τ_o      ΔW_{t,l}                                        λ starts at   mask starts on
    task_arithmetic  0        SVD of τ_t                                      0.3           all components
    cart             τ̄        SVD of τ_t − τ̄ (calm.merging.cart)              2.3           the top 16 %
    tsv              0        TSV-Merge's orthogonalised top ⌊r/T⌋ of τ_t     1.0           all kept ones
                              (calm.merging.tsv); other tensors τ_t / T

    τ = τ_o + Σ_t λ_{t,l} U diag(B_{t,l} ⊙ s) Vᵀ

with B_{t,l} a binary mask over the components. Each mask is B = [σ(m / T_m) > 0.5] = [m > 0]
for real logits m (starting at +0.1 on the components the mask starts on, −0.1 elsewhere,
temperature T_m = 10); its gradient is passed straight through the sigmoid: ∂L/∂m =
∂L/∂B · σ'(m/T_m)/T_m. The loss of a step is the sum, over tasks, of the mean prediction entropy
of a batch of that task's unlabelled inputs (as AdaMerging's). Masks and the layer-wise
coefficients λ_{t,l} (one per task and tensor, starting at the base's λ, unclamped) take Adam
steps together, as the authors' code does.

θ is linear in each B and λ, so with G = ∂L/∂θ_l:
    ∂L/∂B_{t,l,i} = λ_{t,l} s_i u_iᵀ G v_i,     ∂L/∂λ_{t,l} = Σ_i B_i s_i u_iᵀ G v_i
(⟨G, τ_{t,l}⟩ for a tensor kept whole), and memory is θ, G and the components, whatever the number
of tasks and batches.

Defaults: the authors' code and configs for CLIP ViT-B/32 on 8 tasks (david3684/AdaRank,
vision/configs/adarank_B_T8 and hydra_default.yaml): Adam at lr 1e-3, 10 000 steps, batches of
16 per task, mask temperature 10, logits ±0.1; per base λ and initial rank as in the table.

Where the authors' code and the paper differ, and the switch that picks either:
- Coefficients: the code trains AdaMerging's layer-wise λ_{t,l} alongside the masks; the paper
  presents the masks as what AdaRank learns. `learn_coefficients` (true: the code; false: λ stays
  at the base's, only the masks learn).
- The reported model: the code evaluates on the test sets every 500 steps and reports the best
  (a choice on test labels); here the model after the last step is the result, with no switch.
- TSV base: the released code's adaptive module has TA and CART only (its static module has
  TSV-Merge); here the masks run over each task's TSV components after orthogonalisation, λ
  starting at TSV's α = 1.
- Which matrices: the code masks the tensors whose names hold 'attn' or 'mlp' (not 'ln', 'bias');
  here every 2-D tensor but those whose names hold one of `exclude` (default 'embed').
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from calm.merging.adamerging import backward_losses
from calm.merging.spectral import is_matrix, polar, working
from calm.merging.weight_averaging import weight_averaging
from calm.vectors import StateDict

Base = Literal["task_arithmetic", "tsv", "cart"]
# Per base: (the λ the coefficients start at, the share of each matrix's components the mask
# starts on); the authors' values for task_arithmetic and cart, TSV-Merge's own for tsv.
BASE_DEFAULTS: dict[str, tuple[float, float]] = {"task_arithmetic": (0.3, 1.0), "tsv": (1.0, 1.0),
                                                  "cart": (2.3, 0.16)}
LOGIT = 0.1  # the mask logits start at ±LOGIT
# (name, loss of θ) of one batch, as CALM's and AdaMerging's loops take them.
BatchLoss = tuple[str, Callable[[StateDict], torch.Tensor]]


@dataclass
class Components:
    """One task's singular components of one matrix: ΔW = u diag(s) vh."""
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    def build(self, keep: torch.Tensor) -> torch.Tensor:
        """U diag(keep ⊙ s) Vᵀ for a bool `keep`, from the kept components alone (CART's masks
        start on 16 % of them, so most of the product is skipped)."""
        kept = keep.nonzero().squeeze(1)
        return (self.u[:, kept] * self.s[kept]) @ self.vh[kept]

    def projections(self, grad: torch.Tensor) -> torch.Tensor:
        """u_iᵀ G v_i for each component i."""
        return ((self.u.T @ grad) * self.vh).sum(dim=1)


Part = Components | torch.Tensor


@dataclass
class AdaRankResult:
    tau: StateDict
    coefficients: torch.Tensor  # (T, number of tensors)
    names: list[str]
    masks: dict[str, torch.Tensor]  # matrix name -> (T, components) bool
    trace: list[dict] = field(default_factory=list)

    def ranks(self) -> list[dict[str, int]]:
        """Per task, the number of components kept of each matrix."""
        return [{n: int(m[t].sum()) for n, m in self.masks.items()} for t in range(len(self.coefficients))]


def _svd(m: torch.Tensor) -> Components:
    return Components(*torch.linalg.svd(working(m), full_matrices=False))


def decompose(vectors: Sequence[Mapping[str, torch.Tensor]], base: Base,
              exclude: Sequence[str] = ("embed",)) -> tuple[StateDict, list[dict[str, Part]]]:
    """The base's offset τ_o and each task's parts: Components per matrix, a tensor otherwise."""
    if base not in BASE_DEFAULTS:
        raise ValueError(f"unknown AdaRank base '{base}'; known: {sorted(BASE_DEFAULTS)}")
    first = vectors[0]
    if base == "cart":
        offset = weight_averaging(vectors)
        vectors = [{n: v[n] - offset[n] for n in first} for v in vectors]
    else:
        offset = {n: torch.zeros_like(t) for n, t in first.items()}
    parts: list[dict[str, Part]] = [{} for _ in vectors]
    for n, t in first.items():
        if not is_matrix(n, t, exclude):
            for p, v in zip(parts, vectors):
                p[n] = v[n] / len(vectors) if base == "tsv" else v[n]
        elif base == "tsv":
            for p, c in zip(parts, _tsv_components([v[n] for v in vectors])):
                p[n] = c
        else:
            for p, v in zip(parts, vectors):
                p[n] = _svd(v[n])
    return offset, parts


def _tsv_components(matrices: list[torch.Tensor]) -> list[Components]:
    """TSV-Merge's per-task pieces (calm.merging.tsv): each task's top ⌊r/T⌋ triplets, the stacked
    singular vectors replaced by their polar factors, cut back into one block per task."""
    k = min(matrices[0].shape) // len(matrices)
    svds = [_svd(m) for m in matrices]
    if k == 0:
        return [Components(c.u[:, :0], c.s[:0], c.vh[:0]) for c in svds]
    u = polar(torch.cat([c.u[:, :k] for c in svds], dim=1))
    vh = polar(torch.cat([c.vh[:k] for c in svds], dim=0))
    return [Components(u[:, t * k:(t + 1) * k], c.s[:k], vh[t * k:(t + 1) * k]) for t, c in enumerate(svds)]


def initial_logits(parts: Sequence[Mapping[str, Part]], ratio: float) -> dict[str, torch.Tensor]:
    """Per matrix, (T, components) logits: +LOGIT on the first ⌊ratio · components⌋, −LOGIT after."""
    out = {}
    for n, p in parts[0].items():
        if isinstance(p, Components):
            logits = torch.full((len(parts), len(p.s)), -LOGIT, dtype=torch.float32)
            logits[:, :int(len(p.s) * ratio)] = LOGIT
            out[n] = logits
    return out


def combine(theta0: Mapping[str, torch.Tensor], offset: Mapping[str, torch.Tensor],
            parts: Sequence[Mapping[str, Part]], coefficients: torch.Tensor,
            masks: Mapping[str, torch.Tensor]) -> StateDict:
    """θ0 + τ_o + Σ_t λ_{t,l} (U diag(B ⊙ s) Vᵀ, or the tensor kept whole); theta0 = zeros gives τ."""
    out = {}
    for i, n in enumerate(theta0):
        total = working(theta0[n]) + offset[n]
        for t, p in enumerate(parts):
            piece = p[n].build(masks[n][t]) if isinstance(p[n], Components) else p[n]
            total = total + float(coefficients[t, i]) * piece
        out[n] = total.to(theta0[n].dtype)
    return out


def gradients(names: Sequence[str], parts: Sequence[Mapping[str, Part]], lam: torch.Tensor,
              logits: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
              theta_grads: Mapping[str, torch.Tensor | None], temperature: float) -> None:
    """Add into lam.grad and each logits' .grad the step's gradients from G = ∂L/∂θ (theta_grads),
    the mask's gradient passed straight through σ(m / temperature)."""
    for i, n in enumerate(names):
        g = theta_grads[n]
        if g is None:  # a tensor no batch reaches (an unused pooler)
            continue
        g = working(g)
        for t, p in enumerate(parts):
            if isinstance(p[n], Components):
                d = p[n].s * p[n].projections(g.to(p[n].s.dtype))  # ∂L/∂B_i divided by λ
                lam.grad[t, i] += float((masks[n][t] * d).sum())
                sig = torch.sigmoid(logits[n][t] / temperature)
                logits[n].grad[t] += (float(lam[t, i]) * d * sig * (1 - sig) / temperature).to(logits[n].dtype)
            else:
                lam.grad[t, i] += float((g * p[n]).sum())


def adarank(theta0: Mapping[str, torch.Tensor], vectors: Sequence[Mapping[str, torch.Tensor]],
            loss_terms: Callable[[int], Iterable[BatchLoss]], base: Base = "cart", steps: int = 10000,
            lr: float = 1e-3, mask_temperature: float = 10.0, prior: float | None = None,
            initial_rank_ratio: float | None = None, learn_coefficients: bool = True,
            exclude: Sequence[str] = ("embed",), progress: bool = True) -> AdaRankResult:
    """`loss_terms(step)` yields the batch losses (prediction entropy) of a step; their gradients
    are summed, as the authors' code sums the tasks' losses. prior / initial_rank_ratio: None
    takes the base's (BASE_DEFAULTS)."""
    if not vectors:
        raise ValueError("no task vectors to merge")
    default_prior, default_ratio = BASE_DEFAULTS.get(base, (None, None))
    offset, parts = decompose(vectors, base, exclude)
    prior = default_prior if prior is None else prior
    ratio = default_ratio if initial_rank_ratio is None else initial_rank_ratio
    names = list(theta0)
    lam = torch.full((len(vectors), len(names)), float(prior), dtype=torch.float64)
    logits = initial_logits(parts, ratio)
    for param in (lam, *logits.values()):
        param.grad = torch.zeros_like(param)
    optimiser = torch.optim.Adam([lam] * learn_coefficients + list(logits.values()), lr=lr)
    zeros = {n: torch.zeros_like(t) for n, t in theta0.items()}
    trace: list[dict] = []
    bar = tqdm(range(steps), desc=f"adarank ({base})", unit="step", disable=not progress, mininterval=2.0)
    for step in bar:
        start = time.perf_counter()
        masks = {n: m > 0 for n, m in logits.items()}
        theta = {n: t.detach().requires_grad_(True)
                 for n, t in combine(theta0, offset, parts, lam, masks).items()}
        losses = backward_losses(loss_terms(step), theta, "AdaRank")
        optimiser.zero_grad(set_to_none=False)
        lam.grad.zero_()
        gradients(names, parts, lam, logits, masks, {n: theta[n].grad for n in names}, mask_temperature)
        del theta
        optimiser.step()
        kept = sum(int((m > 0).sum()) for m in logits.values())
        total = sum(m.numel() for m in logits.values())
        row = {"step": step + 1, "loss": sum(sum(v) for v in losses.values()),
               "kept_fraction": kept / total if total else 0.0, "seconds": time.perf_counter() - start}
        row.update({f"loss/{k}": sum(v) / len(v) for k, v in losses.items()})
        trace.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", kept=f"{row['kept_fraction']:.3f}")
    masks = {n: m > 0 for n, m in logits.items()}
    coefficients = lam.detach().clone()
    return AdaRankResult(tau=combine(zeros, offset, parts, coefficients, masks), coefficients=coefficients,
                         names=names, masks=masks, trace=trace)
