"""Matrix helpers shared by the SVD-based merges (TSV-Merge, Iso-C, Iso-CTS) and WUDI.

These methods treat every 2-D tensor of a task vector as a layer's weight update ΔW and
merge it as a matrix; every other tensor (biases, norms, 4-D convolutions) is merged
entry-wise by the method's fallback.
"""
from __future__ import annotations

from typing import Callable, Literal, Mapping, Sequence

import torch

from calm.merging.weight_averaging import weight_averaging
from calm.vectors import StateDict, zeros_like


def is_matrix(name: str, tensor: torch.Tensor, exclude: Sequence[str] = ()) -> bool:
    """A 2-D tensor whose name contains none of `exclude`."""
    return tensor.ndim == 2 and not any(s in name for s in exclude)


def working(t: torch.Tensor) -> torch.Tensor:
    """`t` in a dtype torch.linalg decomposes: half precisions go up to float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of a = P Σ Qᵀ: the matrix with orthonormal columns (or
    rows, if a is wide) nearest to a in Frobenius norm (orthogonal Procrustes)."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def merge_matrices(vectors: Sequence[Mapping[str, torch.Tensor]],
                   matrix_fn: Callable[[list[torch.Tensor]], torch.Tensor], exclude: Sequence[str] = (),
                   others: Literal["mean", "zero"] = "mean", alpha: float = 1.0) -> StateDict:
    """α · (matrix_fn of the tasks' matrices for each matrix; for every other tensor the tasks'
    mean, or zero: the pre-trained value kept)."""
    if not vectors:
        raise ValueError("no task vectors to merge")
    if others not in ("mean", "zero"):
        raise ValueError(f"unknown fallback for non-matrix tensors '{others}' (mean or zero)")
    out = weight_averaging(vectors) if others == "mean" else zeros_like(vectors[0])
    for n, t in vectors[0].items():
        if is_matrix(n, t, exclude):
            out[n] = matrix_fn([v[n] for v in vectors]).to(t.dtype)
    return {n: alpha * t for n, t in out.items()}
