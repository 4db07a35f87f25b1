"""Accuracy, normalised accuracy and the paired bootstrap over per-example predictions.

A predictions frame has columns task, idx, label, pred (one row per test example).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def accuracy(predictions: pd.DataFrame) -> dict[str, float]:
    """Per-task accuracy, in the frame's task order."""
    correct = predictions["label"] == predictions["pred"]
    acc = correct.groupby(predictions["task"], sort=False).mean()
    return {str(k): float(v) for k, v in acc.items()}


def average(per_task: dict[str, float]) -> float:
    return float(np.mean(list(per_task.values())))


def normalised(per_task: dict[str, float], individual: dict[str, float]) -> dict[str, float]:
    """Merged accuracy divided by the individual (fine-tuned) model's, per task."""
    return {t: per_task[t] / individual[t] if individual[t] else float("nan") for t in per_task}


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Average-accuracy difference a − b with a percentile interval.

    Test examples are resampled within each task, the same draw for both methods (paired by
    (task, example id); files that hold different examples are refused), and the statistic is
    the mean over tasks of the per-task accuracy, as in the tables.
    """
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n)
    observed = []
    for task, ga in a.groupby("task", sort=False):
        gb = b[b["task"] == task]
        ids_a, ids_b = set(ga["idx"]), set(gb["idx"])
        if len(ids_a) != len(ga) or len(ids_b) != len(gb):
            raise ValueError(f"task {task}: an example id appears twice in one predictions file, not paired")
        if ids_a != ids_b:
            only = sorted(ids_a ^ ids_b)[:3]
            raise ValueError(f"task {task}: the two predictions files hold different examples "
                             f"({len(ids_a)} vs {len(ids_b)}; e.g. id {only} in one only), not paired")
        # Row i of both is the same example: the pairing is by id, whatever order the files are in.
        ga, gb = ga.sort_values("idx"), gb.sort_values("idx")
        delta = (ga["label"] == ga["pred"]).to_numpy(float) - (gb["label"] == gb["pred"]).to_numpy(float)
        observed.append(delta.mean())
        draws = rng.integers(0, len(delta), size=(n, len(delta)))
        diffs += delta[draws].mean(axis=1)
    tasks = len(observed)
    diffs /= tasks
    tail = (1 - level) / 2
    return {"difference": float(np.mean(observed)), "low": float(np.quantile(diffs, tail)),
            "high": float(np.quantile(diffs, 1 - tail)), "resamples": n}
