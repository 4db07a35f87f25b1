"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference
in Model Merging").

Per matrix ΔW_t = U_t Σ_t V_tᵀ (every 2-D tensor of a task vector), each of the T tasks keeps
its top k = ⌊r / T⌋ singular triplets, r = min(rows, cols). The kept left vectors of all tasks
are stacked side by side, U = [U_1,k … U_T,k], and likewise the right ones, V = [V_1,k … V_T,k];
each stack is replaced by its orthogonal polar factor (U = PΣQᵀ → PQᵀ, the orthogonal
Procrustes solution, which decorrelates the tasks' singular vectors while moving them as
little as possible), and the merged matrix is α · U⊥ diag(σ_1,k … σ_T,k) V⊥ᵀ. Every other
tensor gets the task vectors' mean. α scales the whole merged vector, means included.

Literature defaults (a config section needs only these): alpha = 1.0 (the paper's setting,
and FusionBench's), exclude = () (tensors by name-substring that get the mean instead).

Where the authors' code (AntoAndGar/task_singular_vectors) reads differently from the paper:
- The code orthogonalises r-column stacks with zero columns standing in for the components
  no task kept; the polar factor of the kept columns is the same (the zero columns only pick
  up arbitrary directions that multiply a zero singular value), so it is computed here on the
  kept columns alone.
- The code selects α on a validation split from {0.1, 0.2, …, 3.0}; the paper reports α = 1.
  Here α is a plain argument; a sweep belongs to the caller.
- The CLIP code skips 'text_projection' by name; CALM's `model.merge_prefixes` already picks
  the merged tensors, and `exclude` covers the rest.
With T > r no task keeps a component (k = 0) and the matrix's merged update is zero, as in
the code.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from calm.merging.spectral import merge_matrices, polar, working
from calm.vectors import StateDict


def tsv_matrix(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """The merged matrix before α, from the tasks' ΔW_t (all of one shape)."""
    k = min(matrices[0].shape) // len(matrices)
    if k == 0:
        return torch.zeros_like(working(matrices[0]))
    us, ss, vhs = [], [], []
    for m in matrices:
        u, s, vh = torch.linalg.svd(working(m), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    return polar(torch.cat(us, dim=1)) @ torch.diag(torch.cat(ss)) @ polar(torch.cat(vhs, dim=0))


def tsv_merge(vectors: Sequence[Mapping[str, torch.Tensor]], alpha: float = 1.0,
              exclude: Sequence[str] = ()) -> StateDict:
    return merge_matrices(vectors, tsv_matrix, exclude, alpha=alpha)
