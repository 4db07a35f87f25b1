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


def tie_safe(score: float) -> float:
    """A val score as choices compare it: rounded to 1e-9. Two averages of per-task accuracies
    that count the same correct examples can differ in their last bit (445/6 as 74.16666666666666
    or 74.16666666666667, by the order of the terms), and "the first on a tie" must see a tie."""
    return round(score, 9)


def chosen_scale(scores: dict[float, float]) -> float:
    """The scale with the highest score (validation accuracy); on a tie the first in grid order."""
    if not scores:
        raise ValueError("no scale to choose from: the grid is empty")
    order = list(scores)
    return max(order, key=lambda k: (tie_safe(scores[k]), -order.index(k)))


def normalised(per_task: dict[str, float], individual: dict[str, float]) -> dict[str, float]:
    """Merged accuracy divided by the individual (fine-tuned) model's, per task."""
    return {t: per_task[t] / individual[t] if individual[t] else float("nan") for t in per_task}


def paired_differences(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per task (in a's order), the per-example correctness a − b (−1, 0 or +1), paired by
    (task, example id) whatever order the files are in; files that hold different examples are
    refused."""
    out = {}
    for task, ga in a.groupby("task", sort=False):
        gb = b[b["task"] == task]
        ids_a, ids_b = set(ga["idx"]), set(gb["idx"])
        if len(ids_a) != len(ga) or len(ids_b) != len(gb):
            raise ValueError(f"task {task}: an example id appears twice in one predictions file, not paired")
        if ids_a != ids_b:
            only = sorted(ids_a ^ ids_b)[:3]
            raise ValueError(f"task {task}: the two predictions files hold different examples "
                             f"({len(ids_a)} vs {len(ids_b)}; e.g. id {only} in one only), not paired")
        ga, gb = ga.sort_values("idx"), gb.sort_values("idx")
        out[str(task)] = (ga["label"] == ga["pred"]).to_numpy(float) - (gb["label"] == gb["pred"]).to_numpy(float)
    return out


def _resampled_means(deltas: dict[str, np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """n resamples of the mean over tasks of the per-task mean difference, the test examples
    drawn with replacement within each task."""
    diffs = np.zeros(n)
    for delta in deltas.values():
        draws = rng.integers(0, len(delta), size=(n, len(delta)))
        diffs += delta[draws].mean(axis=1)
    return diffs / len(deltas)


def _interval(observed: float, resampled: np.ndarray, level: float) -> dict[str, float]:
    tail = (1 - level) / 2
    return {"difference": float(observed), "low": float(np.quantile(resampled, tail)),
            "high": float(np.quantile(resampled, 1 - tail)), "resamples": len(resampled)}


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Average-accuracy difference a − b with a percentile interval.

    Test examples are resampled within each task, the same draw for both methods (paired by
    (task, example id); files that hold different examples are refused), and the statistic is
    the mean over tasks of the per-task accuracy, as in the tables.
    """
    deltas = paired_differences(a, b)
    observed = np.mean([d.mean() for d in deltas.values()])
    return _interval(observed, _resampled_means(deltas, np.random.default_rng(seed), n), level)


def hierarchical_bootstrap(a_by_seed: list[pd.DataFrame], b_by_seed: list[pd.DataFrame], n: int = 2000,
                           seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Average-accuracy difference a − b over fine-tuning seeds, with a percentile interval that
    counts both sources of noise: which seeds were run, and which test examples were drawn.

    a_by_seed[i] and b_by_seed[i] are the two methods' predictions under seed i. Each resample
    draws as many seeds as there are, with replacement; each drawn seed gets its own resample of
    every task's test examples (paired between a and b, as paired_bootstrap), and the resample's
    statistic is the mean over the drawn seeds of the mean over tasks of the per-task difference.
    `difference` is the mean over seeds of each seed's observed difference. With one seed there
    is no seed to draw, and the numbers are paired_bootstrap's with the same `seed`.
    """
    if len(a_by_seed) != len(b_by_seed) or not a_by_seed:
        raise ValueError(f"hierarchical bootstrap: {len(a_by_seed)} and {len(b_by_seed)} seeds of predictions; "
                         "expected one pair per seed")
    deltas = [paired_differences(a, b) for a, b in zip(a_by_seed, b_by_seed)]
    for i, d in enumerate(deltas[1:], start=1):
        if set(d) != set(deltas[0]):
            raise ValueError(f"hierarchical bootstrap: seed {i} has tasks {sorted(d)}, seed 0 {sorted(deltas[0])}")
    observed = np.mean([np.mean([x.mean() for x in d.values()]) for d in deltas])
    rng = np.random.default_rng(seed)
    k = len(deltas)
    # slot (resample, j) holds a drawn seed; every slot resamples its seed's examples afresh
    drawn = rng.integers(0, k, size=(n, k)) if k > 1 else np.zeros((n, 1), dtype=int)
    slots = np.empty((n, k))
    for i, d in enumerate(deltas):
        chosen = drawn == i
        if chosen.any():
            slots[chosen] = _resampled_means(d, rng, int(chosen.sum()))
    out = _interval(observed, slots.mean(axis=1), level)
    return {**out, "seeds": k}
