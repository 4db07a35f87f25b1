"""CALM's mask maths as pure functions over name -> tensor dicts.

R are real-valued mask logits with the shape of the model; the soft mask is σ(R) and the
binary mask round(σ(R)) = (R > 0). docs/design.md §2 says where the authors' code departs
from the paper, and which switch gives which.
"""
from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import torch

from calm.vectors import StateDict

Strategy = Literal["both", "only_m", "only_1m"]


def init_mask_logits(tau: Mapping[str, torch.Tensor], fraction: float, value: float) -> StateDict:
    """R = +value on the entries whose |τ| is strictly above the k-th largest |τ| over all
    tensors (k = int(fraction · N)), −value elsewhere: the official code's strict threshold,
    so without ties k − 1 entries start on."""
    flat = torch.cat([t.detach().abs().flatten().float() for t in tau.values()])
    k = int(fraction * flat.numel())
    if k == 0:
        return {n: torch.full_like(t, -value, dtype=torch.float32) for n, t in tau.items()}
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return {n: torch.where(t.abs().float() > threshold, value, -value).float() for n, t in tau.items()}


def mix(tau_prev: torch.Tensor, tau_new: torch.Tensor, m: torch.Tensor, strategy: Strategy) -> torch.Tensor:
    """The merge rule of one tensor for a (soft or binary) mask m."""
    if strategy == "both":
        return (1 - m) * tau_prev + m * tau_new
    if strategy == "only_m":
        return tau_prev + m * tau_new
    if strategy == "only_1m":
        return (1 - m) * tau_prev + tau_new
    raise ValueError(f"unknown merging strategy '{strategy}'")


def dmix_dm(tau_prev: torch.Tensor, tau_new: torch.Tensor, strategy: Strategy) -> torch.Tensor:
    """∂ mix / ∂m, used to carry ∂L/∂θ back to the mask (the rule is linear in m)."""
    if strategy == "both":
        return tau_new - tau_prev
    if strategy == "only_m":
        return tau_new
    if strategy == "only_1m":
        return -tau_prev
    raise ValueError(f"unknown merging strategy '{strategy}'")


def update_logits(r: torch.Tensor, g: torch.Tensor, lr: float, alpha: float,
                  regulariser: Literal["polarise", "l1"]) -> torch.Tensor:
    """One plain-SGD step on the mask logits R given g = ∂L/∂σ(R), for one tensor or any slice of
    one (the step is element-wise):

    polarise (official code): R − lr·g·σ'(R) + α·sign(R)·σ'(R)  — pushes R away from 0;
    l1 (paper, α‖σ(R)‖₁):      R − lr·g·σ'(R) − α·σ'(R).
    The regulariser is not scaled by lr, as in the official code.
    """
    s = torch.sigmoid(r)
    ds = s * (1 - s)
    if regulariser == "polarise":
        reg = alpha * torch.sign(r) * ds
    elif regulariser == "l1":
        reg = -alpha * ds
    else:
        raise ValueError(f"unknown regulariser '{regulariser}'")
    return r - lr * g * ds + reg


def binarise(R: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """M* = round(σ(R)) = (R > 0) as booleans (σ(0) = 0.5 rounds to 0, as torch.round does)."""
    return {n: r > 0 for n, r in R.items()}


def commit(tau_prev: Mapping[str, torch.Tensor], tau_new: Mapping[str, torch.Tensor],
           mask: Mapping[str, torch.Tensor], strategy: Strategy = "both") -> StateDict:
    """τ_seq ← the merge rule applied with the binary mask."""
    return {n: mix(tau_prev[n], tau_new[n], mask[n].to(tau_prev[n].dtype), strategy) for n in tau_prev}


def active_fraction(R: Mapping[str, torch.Tensor]) -> float:
    on = sum(int((r > 0).sum()) for r in R.values())
    total = sum(r.numel() for r in R.values())
    return on / total if total else 0.0


def pack(mask: Mapping[str, torch.Tensor]) -> tuple[StateDict, dict[str, str]]:
    """Bit-pack boolean masks (8 entries a byte); shapes go to the metadata."""
    packed, meta = {}, {}
    for n, m in mask.items():
        packed[n] = torch.from_numpy(np.packbits(m.cpu().numpy().astype(bool).ravel()))
        meta[n] = ",".join(str(d) for d in m.shape)
    return packed, meta


def unpack(packed: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in packed.items():
        shape = tuple(int(d) for d in meta[n].split(",") if d)
        count = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(p.numpy())[:count].astype(bool)
        out[n] = torch.from_numpy(bits.reshape(shape))
    return out
