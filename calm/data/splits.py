"""Train / pool / test splits of one task frame.

- test: class-balanced, so that accuracy on a skewed task (rt_subjectivity is 92 % one
  class) still tells methods apart;
- pool: uniform over what is left, i.e. the natural class distribution, because it stands
  for the unlabelled data a merging method may see (its labels are kept for analysis only);
- train: class-balanced as far as the remaining rows allow, so every class is fine-tuned;
- val (only when asked for, n_val > 0): class-balanced like test, from the rows the other three
  leave, drawn after them, so that asking for it changes none of them. It is where a method's
  scale may be chosen without looking at test.

Splits are disjoint by row; as the input has unique texts (`clean_frame` ensures it) they
are disjoint by text too.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "VAL", "make_splits", "split_with_notes", "balanced_allocation"]

log = logging.getLogger(__name__)

SPLITS = ("train", "pool", "test")
VAL = "val"


def balanced_allocation(available: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """How many rows to take from each class: as equal as the availabilities allow
    (water-filling), summing to min(total, available.sum()). Classes that get the one
    extra row left by integer division are drawn at random, not always the first ones."""
    available = np.asarray(available, dtype=np.int64)
    take = np.zeros_like(available)
    budget = int(min(total, available.sum()))
    while budget > 0:
        open_ = np.flatnonzero(take < available)
        share = budget // len(open_)
        if share == 0:
            extra = rng.permutation(open_)[:budget]
            take[extra] += 1
            break
        add = np.minimum(available[open_] - take[open_], share)
        take[open_] += add
        budget -= int(add.sum())
    return take


def split_with_notes(df: pd.DataFrame, n_train: int, n_pool: int, n_test: int, seed: int,
                     n_classes: int, n_val: int = 0, classes: list[str] | None = None
                     ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """`make_splits`, also returning human-readable notes on every shortfall. A test split
    that would lack a class (n_test below the number of classes, or a class with fewer than 2
    rows) is an error: accuracy on it says nothing about that class."""
    for key, value in (("n_train", n_train), ("n_pool", n_pool), ("n_test", n_test), ("n_val", n_val)):
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if df["text"].duplicated().any():
        dup = df.loc[df["text"].duplicated(), "text"].iloc[0]
        raise ValueError(f"texts must be unique (run clean_frame first); duplicate: {dup[:80]!r}")
    labels = df["label"].to_numpy(dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")

    idx = df["idx"].to_numpy(dtype=np.int64) if "idx" in df.columns else np.arange(len(df), dtype=np.int64)
    frame = pd.DataFrame({"idx": idx, "text": df["text"].to_numpy(dtype=object), "label": labels})

    rng = np.random.default_rng(seed)
    notes: list[str] = []
    order = rng.permutation(len(frame))
    # Rows of each class in one shared random order; every split takes from the front.
    by_class = [order[labels[order] == c] for c in range(n_classes)]
    used = np.zeros(len(frame), dtype=bool)

    # test: n_test // C per class, never more than half of a class, so the class is
    # still present in pool and train.
    per_class = n_test // n_classes
    if per_class == 0:
        raise ValueError(f"n_test {n_test} is below the {n_classes} classes: the class-balanced test split takes "
                         f"n_test // {n_classes} = 0 rows of each class")
    if n_test % n_classes:
        notes.append(f"test: {n_test} is not a multiple of {n_classes} classes; "
                     f"using {per_class} per class")
    test_rows = []
    for c, rows in enumerate(by_class):
        take = min(per_class, len(rows) // 2)
        if take < per_class:
            notes.append(f"test: class {c} has only {len(rows)} rows; took {take} of the "
                         f"{per_class} asked, leaving half for the other splits")
        test_rows.append(rows[:take])
    lacking = [c for c, rows in enumerate(test_rows) if len(rows) == 0]
    if lacking:
        c = lacking[0]
        name = f"'{classes[c]}'" if classes else str(c)
        raise ValueError(f"class {name} has {len(by_class[c])} row{'s' * (len(by_class[c]) != 1)}, too few for the test "
                         f"split, which takes {per_class} per class but at most half of a class's rows: it would hold "
                         f"{[len(r) for r in test_rows]} per class (rows per class: {[len(r) for r in by_class]})")
    test_pos = np.concatenate(test_rows) if test_rows else np.array([], dtype=np.int64)
    used[test_pos] = True

    # pool: uniform over the rest. A fresh permutation, not `order`: test took the front of
    # `order` for the small classes, so the front of what is left lacks them.
    rest = rng.permutation(np.flatnonzero(~used))
    pool_pos = rest[:n_pool]
    if len(pool_pos) < n_pool:
        notes.append(f"pool: asked for {n_pool} rows, only {len(pool_pos)} left")
    used[pool_pos] = True

    # train: balanced over what remains.
    remaining = [rows[~used[rows]] for rows in by_class]
    alloc = balanced_allocation(np.array([len(r) for r in remaining]), n_train, rng)
    train_pos = np.concatenate([r[:k] for r, k in zip(remaining, alloc)]) if remaining else np.array([], dtype=np.int64)
    if len(train_pos) < n_train:
        notes.append(f"train: asked for {n_train} rows, only {len(train_pos)} left")
    if n_train and len(train_pos):
        even = len(train_pos) // n_classes
        short = [c for c, k in enumerate(alloc) if k < even]
        if short:
            notes.append(f"train: classes {short} have fewer than {even} rows left; "
                         f"train is not balanced (per-class counts {alloc.tolist()})")
    # Shuffle so that a trainer reading train in order sees the classes mixed.
    train_pos = rng.permutation(train_pos)
    used[train_pos] = True

    # val: balanced like test, over what train left; drawn last, from the same generator, so
    # the three splits above are those of a run without it.
    val_pos = np.array([], dtype=np.int64)
    if n_val:
        remaining = [rows[~used[rows]] for rows in by_class]
        alloc = balanced_allocation(np.array([len(r) for r in remaining]), n_val, rng)
        val_pos = np.concatenate([r[:k] for r, k in zip(remaining, alloc)])
        if len(val_pos) < n_val:
            notes.append(f"val: asked for {n_val} rows, only {len(val_pos)} left")

    splits = {
        "train": frame.iloc[train_pos].reset_index(drop=True),
        # test and pool keep the frame's row order: their order carries no information.
        "pool": frame.iloc[np.sort(pool_pos)].reset_index(drop=True),
        "test": frame.iloc[np.sort(test_pos)].reset_index(drop=True),
    }
    if n_val:
        splits[VAL] = frame.iloc[np.sort(val_pos)].reset_index(drop=True)
    for note in notes:
        log.warning(note)
    return splits, notes


def make_splits(df: pd.DataFrame, n_train: int, n_pool: int, n_test: int, seed: int,
                n_classes: int, n_val: int = 0) -> dict[str, pd.DataFrame]:
    """Disjoint train / pool / test (and, with n_val > 0, val) splits with columns idx, text,
    label; deterministic for a seed. Shortfalls are logged as warnings (see `split_with_notes`
    to get them back)."""
    return split_with_notes(df, n_train, n_pool, n_test, seed, n_classes, n_val)[0]
