"""Batched inference over a preprocessed split (scoring and evaluation share it)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from calm.families.base import Family, StateDict


def predict_logits(family: Family, params: StateDict, cache: dict[str, torch.Tensor],
                   head: torch.Tensor, batch_size: int, desc: str = "inference") -> torch.Tensor:
    """Logits for every row of `cache`, in row order, computed in length-sorted batches."""
    n = len(cache["idx"])
    out = torch.empty(n, head.shape[0])
    family.train_mode(False)
    with torch.inference_mode(), family.autocast():
        for rows in tqdm(list(family.eval_order(cache, batch_size)), desc=desc, unit="batch",
                         mininterval=2.0):
            out[rows] = family.logits(params, family.batch(cache, rows), head).float().cpu()
    return out
