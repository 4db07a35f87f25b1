"""Iso-C and Iso-CTS (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces").

Iso-C, per matrix (every 2-D tensor): M = Σ_t ΔW_t = U Σ Vᵀ; the merged matrix is
α · σ̄ U Vᵀ with σ̄ the mean of all r = min(rows, cols) singular values, i.e. the spectrum of
the task-arithmetic sum made flat, so no direction (no task) dominates.

Iso-CTS keeps the top c singular directions of M (the common subspace) and fills the other
r − c with task-specific ones: each task's residual (I − U_c U_cᵀ) ΔW_t, the part of its
update outside the common subspace, gives its top (r − c) / T singular triplets. The common
and task-specific left vectors are stacked and replaced by their orthogonal polar factor,
likewise the right vectors, and the merged matrix is α · σ̄ U⊥ V⊥ᵀ with σ̄ the mean of all r
kept singular values (the common ones from M, the task-specific ones from the residuals).
c = ⌊r · common_space_fraction⌋, then moved so that r − c is T times a whole number
(round((r − c) / T) · T, rounding half to even, as the authors' code does).

In both, every other tensor gets the task vectors' mean, and α scales the whole merged
vector, means included (authors' code, danielm1405/iso-merging).

Literature defaults: alpha = 1.0 (FusionBench's default; the authors select α on a
validation split from {0.1, 0.2, …, 3.0}, so a tuned α is a sweep for the caller),
common_space_fraction = 0.8 (Iso-CTS; the authors' setting), exclude = () (tensors by
name-substring that get the mean instead; the CLIP code skips 'text_projection').

On an exactly rank-deficient M the singular vectors of the zero singular values are
arbitrary, and so is their share of σ̄ U Vᵀ; real task vectors are full rank up to rounding.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from calm.merging.spectral import merge_matrices, polar, working
from calm.vectors import StateDict


def iso_c_matrix(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(working(sum(matrices)), full_matrices=False)
    return s.mean() * (u @ vh)


def split_rank(r: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(c, per-task) with c + n_tasks · per-task = r."""
    common = int(r * common_space_fraction)
    per_task = round((r - common) / n_tasks)
    # The rounding can ask for more than r when the common share is small; give the
    # tasks what fits instead (the authors' code would slice a negative common size).
    per_task = min(per_task, r // n_tasks)
    return r - n_tasks * per_task, per_task


def iso_cts_matrix(matrices: Sequence[torch.Tensor], common_space_fraction: float) -> torch.Tensor:
    mats = [working(m) for m in matrices]
    common, per_task = split_rank(min(mats[0].shape), len(mats), common_space_fraction)
    u, s, vh = torch.linalg.svd(sum(mats), full_matrices=False)
    us, ss, vhs = [u[:, :common]], [s[:common]], [vh[:common]]
    if per_task:
        for m in mats:
            residual = m - us[0] @ (us[0].T @ m)
            ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vhs.append(vht[:per_task])
    return torch.cat(ss).mean() * (polar(torch.cat(us, dim=1)) @ polar(torch.cat(vhs, dim=0)))


def iso_c(vectors: Sequence[Mapping[str, torch.Tensor]], alpha: float = 1.0,
          exclude: Sequence[str] = ()) -> StateDict:
    return merge_matrices(vectors, iso_c_matrix, exclude, alpha=alpha)


def iso_cts(vectors: Sequence[Mapping[str, torch.Tensor]], alpha: float = 1.0, common_space_fraction: float = 0.8,
            exclude: Sequence[str] = ()) -> StateDict:
    if not 0 <= common_space_fraction <= 1:
        raise ValueError(f"Iso-CTS common_space_fraction must be in [0, 1], got {common_space_fraction}")
    return merge_matrices(vectors, lambda ms: iso_cts_matrix(ms, common_space_fraction), exclude, alpha=alpha)
