"""Batched inference over a preprocessed split (scoring and evaluation share it)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from calm.families.base import Family, Head, StateDict


def predict_logits(family: Family, params: StateDict, cache: dict[str, torch.Tensor],
                   head: Head, batch_size: int, desc: str = "inference") -> torch.Tensor:
    """Logits for every row of `cache`, in row order, computed in length-sorted batches."""
    n = len(cache["idx"])
    out = None  # allocated from the first batch: a head need not be one tensor with a row per class
    family.train_mode(False)
    with torch.inference_mode(), family.autocast():
        for rows in tqdm(list(family.eval_order(cache, batch_size)), desc=desc, unit="batch",
                         mininterval=2.0):
            logits = family.logits(params, family.batch(cache, rows), head).float().cpu()
            if out is None:
                out = torch.empty(n, logits.shape[1])
            out[rows] = logits
    if out is None:
        raise ValueError("no rows to predict")
    return out
