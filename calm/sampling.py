"""Credible-set samplers over a scored pool (columns idx, entropy, pseudo_label, label).

Each returns the selected rows, sorted by idx, with the label the merge will train on in
`target`: the pseudo-label, except for `supervised`, which uses the true label.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd


def _finish(frame: pd.DataFrame, target: str = "pseudo_label") -> pd.DataFrame:
    out = frame.sort_values("idx").reset_index(drop=True)
    out["target"] = out[target].astype("int64")
    return out


def _lowest(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    # Ties in entropy go to the lower idx, so the choice is reproducible whatever the row order.
    return frame.sort_values(["entropy", "idx"], kind="stable").head(n)


def cb_ems(scores: pd.DataFrame, ratio: float, seed: int = 0) -> pd.DataFrame:
    """Class-balanced EMS: in each pseudo-class keep the floor(ratio · n_c) lowest-entropy samples."""
    groups = [_lowest(g, math.floor(ratio * len(g))) for _, g in scores.groupby("pseudo_label", sort=True)]
    return _finish(pd.concat(groups) if groups else scores.head(0))


def ems(scores: pd.DataFrame, ratio: float, seed: int = 0) -> pd.DataFrame:
    """EMS: one global cut, the floor(ratio · n) lowest-entropy samples, classes ignored."""
    return _finish(_lowest(scores, math.floor(ratio * len(scores))))


def supervised(scores: pd.DataFrame, ratio: float, seed: int = 0) -> pd.DataFrame:
    """True labels, no entropy filter: a random floor(ratio · n) of the pool (an upper reference)."""
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(scores))[: math.floor(ratio * len(scores))]
    return _finish(scores.iloc[np.sort(keep)], target="label")


def random(scores: pd.DataFrame, ratio: float, seed: int = 0) -> pd.DataFrame:
    """A random floor(ratio · n) of the pool with pseudo-labels, entropy ignored."""
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(scores))[: math.floor(ratio * len(scores))]
    return _finish(scores.iloc[np.sort(keep)])


@dataclass(frozen=True)
class Sampler:
    draw: Callable[[pd.DataFrame, float, int], pd.DataFrame]
    label: str  # its name in the paper's figures
    seeded: bool  # its choice depends on the seed (below ratio 1); otherwise deterministic
    pseudo_labels: bool = True  # trains on pseudo-labels (not the true labels)


# The one list of samplers: the config's choices, the workflow's wildcard and the figures' labels
# come from here.
SAMPLERS: dict[str, Sampler] = {
    "cb_ems": Sampler(cb_ems, "CB-EMS", seeded=False),
    "ems": Sampler(ems, "EMS", seeded=False),
    "supervised": Sampler(supervised, "Supervised (true labels)", seeded=True, pseudo_labels=False),
    "random": Sampler(random, "Random", seeded=True),
}
SEEDED = frozenset(name for name, s in SAMPLERS.items() if s.seeded)


def draw_credible(scores: pd.DataFrame, sampler: str, ratio: float, seed: int = 0) -> pd.DataFrame:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; known: {sorted(SAMPLERS)}")
    if not 0 < ratio <= 1:
        raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
    return SAMPLERS[sampler].draw(scores, ratio, seed)
