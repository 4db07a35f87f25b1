"""Task arithmetic (Ilharco et al., 2023): τ = λ Σ_t τ_t."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from calm.vectors import weighted_sum


def task_arithmetic(vectors: Sequence[Mapping[str, torch.Tensor]], lam: float = 0.3) -> dict[str, torch.Tensor]:
    return weighted_sum(vectors, lam)
