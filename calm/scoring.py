"""Per-sample entropy and pseudo-labels from a fine-tuned model's logits."""
from __future__ import annotations

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy −Σ p log p of softmax(logits), in nats, one value per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)
