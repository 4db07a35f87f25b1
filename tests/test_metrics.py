"""Accuracy, the paired bootstrap and the results table on hand-made predictions."""
from __future__ import annotations

import pandas as pd
import pytest

from calm.metrics import accuracy, normalised, paired_bootstrap
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
