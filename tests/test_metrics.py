"""Accuracy, the paired bootstrap and the results table on hand-made predictions."""
from __future__ import annotations

import pandas as pd
import pytest

from calm.metrics import accuracy, hierarchical_bootstrap, normalised, paired_bootstrap
from calm.render import to_markdown
from calm.results_table import best_of, results_table


def preds(task_correct: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for task, correct in task_correct.items():
        for i, c in enumerate(correct):
            rows.append({"task": task, "idx": i, "label": 1, "pred": 1 if c else 0})
    return pd.DataFrame(rows)


def test_accuracy_and_normalised():
    p = preds({"a": [1, 1, 0, 0], "b": [1, 1, 1, 0]})
    assert accuracy(p) == {"a": 0.5, "b": 0.75}
    assert normalised(accuracy(p), {"a": 1.0, "b": 0.75}) == {"a": 0.5, "b": 1.0}


def test_bootstrap_of_identical_methods_is_zero():
    p = preds({"a": [1, 0, 1, 1], "b": [0, 1, 1, 0]})
    ci = paired_bootstrap(p, p, n=200)
    assert ci["difference"] == 0 and ci["low"] == 0 and ci["high"] == 0


def test_bootstrap_when_one_method_is_always_better():
    a = preds({"a": [1, 1, 1, 1], "b": [1, 1, 1, 1]})
    b = preds({"a": [0, 0, 0, 0], "b": [1, 1, 1, 1]})
    ci = paired_bootstrap(a, b, n=300)
    # task a: +1 on every example, task b: 0 -> mean over tasks +0.5, with no spread
    assert ci["difference"] == pytest.approx(0.5)
    assert ci["low"] == pytest.approx(0.5) and ci["high"] == pytest.approx(0.5)


def test_bootstrap_pairs_examples_by_id_not_by_row_position():
    # The same predictions, b's rows in another order: each example is still paired with itself.
    a = pd.DataFrame({"task": ["t"] * 4, "idx": [0, 1, 2, 3], "label": [1] * 4, "pred": [1, 0, 1, 0]})
    ci = paired_bootstrap(a, a.iloc[[3, 1, 0, 2]], n=100)
    assert ci["difference"] == 0 and ci["low"] == 0 and ci["high"] == 0


def test_bootstrap_refuses_files_whose_examples_differ():
    a = pd.DataFrame({"task": ["t"] * 3, "idx": [0, 1, 2], "label": [1] * 3, "pred": [1, 1, 1]})
    b = a.assign(idx=[0, 1, 7])
    with pytest.raises(ValueError, match=r"task t: the two predictions files hold different examples .*id \[2, 7\]"):
        paired_bootstrap(a, b, n=10)
    with pytest.raises(ValueError, match="appears twice"):
        paired_bootstrap(a, a.assign(idx=[0, 1, 1]), n=10)


def test_table_rows_averages_and_best_marks():
    rows = {
        "Individual": preds({"a": [1, 1, 1, 1], "b": [1, 1, 1, 0]}),
        "X": preds({"a": [1, 1, 0, 0], "b": [1, 1, 1, 0]}),
        "Y": preds({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]}),
    }
    table = results_table(rows)
    assert table.loc["X", "Avg"] == pytest.approx(62.5)
    assert table.loc["Y", "Avg"] == pytest.approx(50.0)
    assert table.loc["X", "Norm. avg"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    md = to_markdown(table)
    # best merged method per column in bold; Individual is never marked
    assert "| X | 50.0 | **75.0** | **62.5** | **75.0** |" in md
    assert "| Y | **75.0** | 25.0 | 50.0 | 54.2 |" in md  # (75/100 + 25/75) / 2
    assert "| Individual | 100.0 | 75.0 | 87.5 | 100.0 |" in md
    assert best_of({"X": rows["X"], "Y": rows["Y"]}) == "X"


def test_a_sweep_collapses_to_its_best_row_after_the_named_one():
    from calm.results_table import collapse_sweep
    rows = {
        "A": preds({"a": [1, 0]}),
        "TA (λ=0.3)": preds({"a": [1, 0]}),
        "TA λ=0.3": preds({"a": [1, 0]}),
        "TA λ=0.6": preds({"a": [1, 1]}),
        "CALM": preds({"a": [0, 0]}),
    }
    named, grid = collapse_sweep(rows, "TA λ=", "TA (λ=0.3)")
    assert list(named) == ["A", "TA (λ=0.3)", "TA λ=0.6 (best λ, oracle)", "CALM"]
    assert grid == {"TA λ=0.3": 50.0, "TA λ=0.6": 100.0}


def test_table_one_rounds_like_the_results_table(tmp_path):
    """246 of 399 correct is 61.654 %: 61.7 in both, where rounding the CSV to 61.65 first gave
    61.6 in Table 1."""
    from calm.paper.tables import main_results
    from calm.results_table import write_results

    rows = {"Individual": preds({"a": [1] * 399}), "CALM": preds({"a": [1] * 246 + [0] * 153})}
    text = write_results(rows, tmp_path / "main", sweep_prefix="TA λ=", insert_best_after="TA (λ=0.3)",
                         individual="Individual", target="CALM", bootstrap=10, seed=0)
    assert "| CALM | **61.7** | **61.7** | **61.7** |" in text
    table = main_results(pd.read_csv(tmp_path / "main.csv"))
    assert "| CALM | **61.7** | **61.7** | **61.7** |" in to_markdown(table.frame, exclude_from_best=table.exclude_from_best)


# --- over fine-tuning seeds -----------------------------------------------------------------

def test_hierarchical_bootstrap_of_a_constant_difference_is_that_value_with_no_spread():
    # task a: +1 on every example, task b: 0, under each of three seeds -> +0.5 wherever it draws
    a = preds({"a": [1, 1, 1], "b": [0, 1, 0]})
    b = preds({"a": [0, 0, 0], "b": [0, 1, 0]})
    ci = hierarchical_bootstrap([a, a, a], [b, b, b], n=300, seed=3)
    assert ci == {"difference": 0.5, "low": 0.5, "high": 0.5, "resamples": 300, "seeds": 3}


def test_hierarchical_bootstrap_of_one_seed_is_the_paired_bootstrap():
    a = preds({"a": [1, 0, 1, 1, 0, 1], "b": [1, 1, 0, 0]})
    b = preds({"a": [0, 0, 1, 0, 1, 1], "b": [1, 0, 0, 1]})
    one = hierarchical_bootstrap([a], [b], n=500, seed=7, level=0.9)
    assert one.pop("seeds") == 1
    assert one == paired_bootstrap(a, b, n=500, seed=7, level=0.9)


def test_hierarchical_bootstrap_resamples_the_seeds():
    """Two seeds whose examples all differ alike: d1 = 0 (both methods right everywhere), d2 = 0.5
    (a right and b wrong on task x, both right on y). Within a seed every resample gives its d,
    so a resample's mean is d1, (d1 + d2)/2 or d2, with probabilities 1/4, 1/2, 1/4: the 95 %
    and 60 % intervals are [d1, d2] (each end holds 1/4 > 20 %), the 40 % interval is the
    midpoint alone (it holds 1/2 > 40 %)."""
    same = preds({"x": [1, 1, 1, 1], "y": [1, 1, 1, 1]})
    a2, b2 = same, preds({"x": [0, 0, 0, 0], "y": [1, 1, 1, 1]})
    runs = ([same, a2], [same, b2])
    wide = hierarchical_bootstrap(*runs, n=4000, seed=0)
    assert wide["difference"] == pytest.approx(0.25) and wide["seeds"] == 2
    assert (wide["low"], wide["high"]) == (0.0, 0.5)
    ci60 = hierarchical_bootstrap(*runs, n=4000, seed=0, level=0.6)
    assert (ci60["low"], ci60["high"]) == (0.0, 0.5)
    ci40 = hierarchical_bootstrap(*runs, n=4000, seed=0, level=0.4)
    assert (ci40["low"], ci40["high"]) == (0.25, 0.25)


def test_hierarchical_bootstrap_refuses_unpaired_runs():
    a = pd.DataFrame({"task": ["t"] * 3, "idx": [0, 1, 2], "label": [1] * 3, "pred": [1, 1, 1]})
    with pytest.raises(ValueError, match="task t: the two predictions files hold different examples"):
        hierarchical_bootstrap([a, a], [a, a.assign(idx=[0, 1, 7])], n=10)
    with pytest.raises(ValueError, match="one pair per seed"):
        hierarchical_bootstrap([a, a], [a], n=10)
    with pytest.raises(ValueError, match="seed 1 has tasks"):
        hierarchical_bootstrap([a, a.assign(task="u")], [a, a.assign(task="u")], n=10)


def test_seeds_table_mean_sd_and_intervals_by_hand(tmp_path):
    """Two seeds, one task of 4 examples. X: 2/4 then 3/4 right (50, 75: mean 62.5, s.d. 25/√2);
    the individual models 4/4 then 3/4, so X's Norm. avg is 50 then 100 (mean 75, s.d. 50/√2);
    CALM 3/4 then 4/4: CALM − X is +25 under both seeds. Task arithmetic's best λ
    is 0.3 under seed 0 and 0.6 under seed 1: one row named after both."""
    import json

    from calm.results_table import seeds_results, write_seeds

    def seed_rows(ind, x, calm, ta3, ta6):
        return {"Pretrained": preds({"a": [0, 0, 0, 0]}), "Individual": preds({"a": ind}), "X": preds({"a": x}),
                "TA (λ=0.3)": preds({"a": ta3}), "TA λ=0.3": preds({"a": ta3}), "TA λ=0.6": preds({"a": ta6}),
                "CALM": preds({"a": calm})}

    runs = {0: seed_rows([1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]),
            1: seed_rows([1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0])}
    results = seeds_results(runs, sweep_prefix="TA λ=", insert_best_after="TA (λ=0.3)", individual="Individual",
                            target="CALM", bootstrap=200, seed=0)
    text = write_seeds(results, tmp_path / "seeds", target="CALM")
    table = pd.read_csv(tmp_path / "seeds.csv", index_col="method")
    assert list(table.index) == ["Pretrained", "Individual", "X", "TA (λ=0.3)",
                                 "TA λ=0.3, 0.6 (best λ per seed, oracle)", "CALM"]
    x = table.loc["X"]
    assert x["a"] == pytest.approx(62.5) and x["a s.d."] == pytest.approx(25 / 2 ** 0.5)
    assert x["Avg"] == pytest.approx(62.5) and x["Norm. avg"] == pytest.approx(75.0)
    assert x["Norm. avg s.d."] == pytest.approx(50 / 2 ** 0.5) and x["seeds"] == 2
    assert x["CALM − method"] == pytest.approx(25) and x["CALM − method low"] <= 25 <= x["CALM − method high"]
    best = table.loc["TA λ=0.3, 0.6 (best λ per seed, oracle)"]
    assert best["a"] == pytest.approx(37.5)  # 25 under seed 0 (λ = 0.3), 50 under seed 1 (λ = 0.6)
    assert pd.isna(table.loc["Individual", "CALM − method"]) and pd.isna(table.loc["CALM", "CALM − method"])
    assert "| X | 62.5 ± 17.7 | 62.5 ± 17.7 | 75.0 ± 35.4 | +25.0 [" in text
    assert "| CALM | **87.5 ± 17.7** |" in text
    summary = json.loads((tmp_path / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 2 * 6
    assert {c["method"] for c in summary["comparisons"]} == {"X", "TA (λ=0.3)", "TA λ=0.3, 0.6 (best λ per seed, oracle)"}
