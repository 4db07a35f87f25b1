"""Scoring each fine-tuned model's pool, and the credible sets the samplers keep of it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from calm import artifacts, sampling, scoring
from calm.families.base import Family
from calm.inference import predict_logits
from calm.io import write_parquet


def score(family: Family, model_dir: str | Path, inputs: str | Path, head: str | Path,
          batch_size: int, out: str | Path, split: str = "pool") -> pd.DataFrame:
    """Entropy, pseudo-label and logits of a fine-tuned model over its task's pool."""
    cache = artifacts.read_inputs(inputs, split)
    logits = predict_logits(family, family.load_state(Path(model_dir)), cache, artifacts.read_head(head),
                            batch_size, desc=f"score {split}")
    frame = pd.DataFrame({
        "idx": cache["idx"].numpy(),
        "label": cache["label"].numpy(),
        "pseudo_label": scoring.pseudo_labels(logits).numpy(),
        "entropy": scoring.entropy(logits).numpy(),
        "logits": list(logits.numpy()),
    })
    write_parquet(frame, out)
    return frame


def select(scores: str | Path, sampler: str, ratio: float, seed: int, out: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(scores)
    chosen = sampling.draw_credible(frame.drop(columns=["logits"]), sampler, ratio, seed)
    if chosen.empty:
        raise ValueError(f"{scores}: the {sampler} sampler at ratio {ratio} selected no sample "
                         f"from a pool of {len(frame)}")
    write_parquet(chosen, out)
    return chosen
