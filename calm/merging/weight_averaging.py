"""Weight averaging: θ = θ0 + mean_t τ_t, the mean of the fine-tuned models."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from calm.vectors import weighted_sum


def weight_averaging(vectors: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not vectors:
        raise ValueError("no task vectors to average")
    return weighted_sum(vectors, 1.0 / len(vectors))
