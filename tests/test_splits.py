"""Disjoint, class-balanced train / pool / test splits: sizes, seeds, shortfalls reported."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from calm.data.splits import balanced_allocation, make_splits, split_with_notes


def _frame(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


def test_splits_disjoint_and_balanced():
    df = _frame([10, 10, 10])
    s = make_splits(df, n_train=9, n_pool=6, n_test=6, seed=0, n_classes=3)
    assert np.bincount(s["test"]["label"], minlength=3).tolist() == [2, 2, 2]
    assert np.bincount(s["train"]["label"], minlength=3).tolist() == [3, 3, 3]
    assert len(s["pool"]) == 6
    idx = [set(s[k]["idx"]) for k in ("train", "pool", "test")]
    texts = [set(s[k]["text"]) for k in ("train", "pool", "test")]
    assert sum(map(len, idx)) == len(set().union(*idx)) == 21
    assert sum(map(len, texts)) == len(set().union(*texts)) == 21
    for split in s.values():
        assert list(split.columns) == ["idx", "text", "label"]
        assert (df["text"].to_numpy()[split["idx"]] == split["text"].to_numpy()).all()
        assert (df["label"].to_numpy()[split["idx"]] == split["label"].to_numpy()).all()


def test_splits_deterministic_for_a_seed():
    df = _frame([10, 10, 10])
    a = make_splits(df, 9, 6, 6, seed=3, n_classes=3)
    b = make_splits(df, 9, 6, 6, seed=3, n_classes=3)
    c = make_splits(df, 9, 6, 6, seed=4, n_classes=3)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    assert any(not a[k]["idx"].equals(c[k]["idx"]) for k in a)


def test_splits_small_class_and_shortfalls_are_reported():
    df = _frame([20, 3])
    s, notes = split_with_notes(df, n_train=100, n_pool=4, n_test=8, seed=0, n_classes=2)
    # class 1 has 3 rows: test takes 1 (3 // 2), leaving 2 for the other splits
    assert np.bincount(s["test"]["label"], minlength=2).tolist() == [4, 1]
    assert any("class 1 has only 3 rows" in n for n in notes)
    assert len(s["train"]) == 23 - 5 - 4
    assert any("train: asked for 100" in n for n in notes)


def test_train_is_balanced_on_a_skewed_task():
    df = _frame([40, 8])
    s = make_splits(df, n_train=10, n_pool=0, n_test=4, seed=1, n_classes=2)
    assert np.bincount(s["train"]["label"], minlength=2).tolist() == [5, 5]


def test_balanced_allocation():
    rng = np.random.default_rng(0)
    assert balanced_allocation(np.array([2, 10, 10]), 12, rng).tolist() == [2, 5, 5]
    assert balanced_allocation(np.array([2, 10, 10]), 100, rng).tolist() == [2, 10, 10]
    assert sorted(balanced_allocation(np.array([5, 5, 5]), 4, rng).tolist()) == [1, 1, 2]


def test_splits_reject_duplicate_texts():
    df = pd.DataFrame({"text": ["a", "a", "b"], "label": [0, 1, 0]})
    with pytest.raises(ValueError, match="unique"):
        make_splits(df, 1, 1, 1, 0, 2)




def test_a_val_split_leaves_train_pool_and_test_as_they_were_and_overlaps_none():
    df = _frame([12, 12, 12])
    plain = make_splits(df, n_train=9, n_pool=6, n_test=6, seed=0, n_classes=3)
    with_val = make_splits(df, n_train=9, n_pool=6, n_test=6, seed=0, n_classes=3, n_val=6)
    assert "val" not in plain and list(with_val) == ["train", "pool", "test", "val"]
    for k in plain:
        pd.testing.assert_frame_equal(plain[k], with_val[k])
    val = set(with_val["val"]["idx"])
    assert len(val) == 6 and np.bincount(with_val["val"]["label"], minlength=3).tolist() == [2, 2, 2]
    for k in ("train", "pool", "test"):
        assert not val & set(with_val[k]["idx"]), f"val overlaps {k}"


def test_a_val_split_larger_than_the_rows_left_takes_them_all_and_says_so():
    df = _frame([10, 10])
    s, notes = split_with_notes(df, n_train=6, n_pool=6, n_test=4, seed=0, n_classes=2, n_val=10)
    assert len(s["val"]) == 20 - 16 and "val: asked for 10 rows, only 4 left" in notes
    assert set(s["val"]["idx"]) == set(range(20)) - set().union(*(set(s[k]["idx"]) for k in ("train", "pool", "test")))
