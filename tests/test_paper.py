"""The paper's tables and figures on small hand-made frames: known means, best marks and
layouts for the tables; a non-empty PNG and PDF for every figure; the registry's input
checks and code digests."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.collections import PathCollection

from calm.paper import comparison, figures, registry, style
from calm.paper import tables as pt
from calm.render import to_latex, to_markdown


def sweep_frame(key: str, values: dict, with_average: bool = True) -> pd.DataFrame:
    """values: setting -> {task: accuracy}; normalised = accuracy / 2 (individual at 200 %)."""
    rows = []
    for setting, accs in values.items():
        for task, acc in accs.items():
            rows.append({key: setting, "task": task, "accuracy": acc, "normalised": acc / 2})
        if with_average:
            mean = sum(accs.values()) / len(accs)
            rows.append({key: setting, "task": "average", "accuracy": mean, "normalised": mean / 2})
    return pd.DataFrame(rows)


# --- tables -----------------------------------------------------------------------------------

def test_task_table_averages_replicates_and_uses_the_average_row():
    frame = pd.DataFrame([
        {"lr": 1e7, "seed": 0, "task": "a", "accuracy": 60.0, "normalised": 70.0},
        {"lr": 1e7, "seed": 1, "task": "a", "accuracy": 80.0, "normalised": 90.0},
        {"lr": 1e7, "seed": 0, "task": "b", "accuracy": 50.0, "normalised": 50.0},
        {"lr": 1e7, "seed": 1, "task": "b", "accuracy": 50.0, "normalised": 50.0},
        # the average rows say 61 and 63: the table reports their mean, not the mean of a and b
        {"lr": 1e7, "seed": 0, "task": "average", "accuracy": 61.0, "normalised": 10.0},
        {"lr": 1e7, "seed": 1, "task": "average", "accuracy": 63.0, "normalised": 20.0},
    ])
    table = pt.task_table(frame, ["lr"])
    assert list(table.columns) == ["a", "b", "Avg", "Norm. avg"]
    assert table.loc[1e7, "a"] == 70.0 and table.loc[1e7, "b"] == 50.0
    assert table.loc[1e7, "Avg"] == 62.0 and table.loc[1e7, "Norm. avg"] == 15.0


def test_task_table_without_average_rows_means_the_tasks():
    frame = sweep_frame("alpha", {0.5: {"a": 90.0, "b": 60.0}}, with_average=False)
    table = pt.task_table(frame, ["alpha"])
    assert table.loc[0.5, "Avg"] == 75.0 and table.loc[0.5, "Norm. avg"] == 37.5


def test_lr_table_sorts_formats_and_marks_the_best_of_each_column():
    frame = sweep_frame("lr", {1e8: {"a": 80.0, "b": 70.0}, 5e6: {"a": 90.0, "b": 60.0},
                               2e7: {"a": 85.0, "b": 72.0}})
    table = pt.lr_sweep(frame)
    assert [lr for _, lr in table.frame.index] == ["5e6", "2e7", "1e8"]
    md = to_markdown(table.frame, exclude_from_best=table.exclude_from_best)
    assert md.splitlines()[0] == "| Method | Learning rate | a | b | Avg | Norm. avg |"
    assert md.splitlines()[1] == "|---|---|---:|---:|---:|---:|"
    assert "| CALM | 5e6 | **90.0** | 60.0 | 75.0 | 37.5 |" in md
    assert "| CALM | 2e7 | 85.0 | **72.0** | **78.5** | **39.2** |" in md  # 78.5 / 2 = 39.25
    assert "| CALM | 1e8 | 80.0 | 70.0 | 75.0 | 37.5 |" in md


def test_latex_is_booktabs_with_bold_best_and_escaped_names():
    frame = sweep_frame("alpha", {1: {"rt_a": 50.0}, 2: {"rt_a": 40.0}})
    table = pt.alpha_sweep(frame)
    tex = to_latex(table.frame, exclude_from_best=table.exclude_from_best)
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{llrrr}" and lines[1] == r"\toprule" and lines[3] == r"\midrule"
    assert lines[2] == r"Method & Coefficient $\alpha$ & rt\_a & Avg & Norm. avg \\"
    assert lines[4] == r"CALM & 1 & \textbf{50.0} & \textbf{50.0} & \textbf{25.0} \\"
    assert lines[5] == r"CALM & 2 & 40.0 & 40.0 & 20.0 \\"
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]


def test_main_table_never_marks_the_references():
    main = pd.DataFrame({"method": ["Pretrained", "Individual", "TA", "CALM"],
                         "a": [99.0, 95.0, 80.0, 85.0], "b": [10.0, 90.0, 70.0, 60.0],
                         "Avg": [54.5, 92.5, 75.0, 72.5], "Norm. avg": [58.0, 100.0, 81.0, 78.0]})
    table = pt.main_results(main)
    md = to_markdown(table.frame, exclude_from_best=table.exclude_from_best)
    assert "| Pretrained | 99.0 | 10.0 | 54.5 | 58.0 |" in md
    assert "| Individual | 95.0 | 90.0 | 92.5 | 100.0 |" in md
    assert "| TA | 80.0 | **70.0** | **75.0** | **81.0** |" in md
    assert "| CALM | **85.0** | 60.0 | 72.5 | 78.0 |" in md


def test_strategy_rows_in_the_papers_order():
    frame = sweep_frame("strategy", {"both": {"a": 80.0}, "only_1m": {"a": 70.0}, "only_m": {"a": 75.0}})
    table = pt.strategies(frame).frame
    assert [s for _, s in table.index] == ["only M", "only 1 − M", "both (CALM)"]
    assert list(table["a"]) == [75.0, 70.0, 80.0]


def test_mask_analysis_rows_in_the_papers_order_without_marks():
    names = ["θ0+(1−M)τ1+Mτ2", "θ0", "θ0+Mτ2", "θ0+τ2", "θ0+τ1", "θ0+(1−M)τ1"]
    rows = [{"row": r, "task": "a", "accuracy": float(i)} for i, r in enumerate(names)]
    table = pt.mask_analysis(pd.DataFrame(rows))
    assert not table.bold_best
    assert list(table.frame.index) == ["θ₀", "θ₀ + τ₁", "θ₀ + (1 − M) ⊙ τ₁", "θ₀ + τ₂", "θ₀ + M ⊙ τ₂",
                                       "θ₀ + (1 − M) ⊙ τ₁ + M ⊙ τ₂"]
    assert list(table.frame["a"]) == [1.0, 4.0, 5.0, 3.0, 2.0, 0.0]
    tex = to_latex(table.frame, bold_best=False, labels=table.latex_labels)
    assert r"$\theta_0 + (1 - M) \odot \tau_1 + M \odot \tau_2$ & 0.0 & 0.0 \\" in tex


def test_topk_table_one_column_per_task_and_step_where_a_task_recurs():
    frame = pd.DataFrame([
        {"step": 1, "task": "a", "top_percent": 10, "share": 30.0},
        {"step": 1, "task": "a", "top_percent": 1, "share": 4.0},
        {"step": 2, "task": "b", "top_percent": 1, "share": 5.0},
        {"step": 2, "task": "b", "top_percent": 10, "share": 25.0},
    ])
    table = pt.magnitude_ranks(frame).frame
    assert list(table.index) == ["Top 1 %", "Top 10 %"] and list(table.columns) == ["a", "b"]
    assert table.loc["Top 10 %", "a"] == 30.0 and table.loc["Top 1 %", "b"] == 5.0
    again = pd.concat([frame, frame.assign(step=3)])
    assert list(pt.magnitude_ranks(again).frame.columns) == ["a (step 1)", "b (step 2)", "a (step 3)", "b (step 3)"]


def test_run_times_sum_files_and_average_repeats():
    frame = pd.DataFrame([
        {"method": "CALM (|S̄|=2)", "path": "s1.tsv", "s": 60.0},
        {"method": "CALM (|S̄|=2)", "path": "s2.tsv", "s": 100.0},
        {"method": "CALM (|S̄|=2)", "path": "s2.tsv", "s": 140.0},  # a repeat of s2: mean 120
        {"method": "L&S", "path": "ls.tsv", "s": 30.0},
    ])
    table = pt.run_times(frame, iterations={"CALM (|S̄|=2)": 200})
    assert table.frame.loc["CALM (|S̄|=2)", "Run time (s)"] == 180.0
    assert table.frame.loc["CALM (|S̄|=2)", "Run time (min)"] == 3.0
    md = to_markdown(table.frame, digits=2, bold_best=False)
    assert "| CALM (\\|S̄\\|=2) | 3.00 | 180.00 | – | 1 | 200 |" in md
    assert "| L&S | 0.50 | 30.00 | – | 1 | – |" in md


def test_run_times_average_a_rows_runs():
    """CALM at |S̄| = 2 over two task orders: each order's run sums its two steps (60 + 120 and
    90 + 150 s), the row is their mean (210 s) and their s.d. (sqrt(((180-210)² + (240-210)²)/1))."""
    frame = pd.DataFrame([
        {"method": "CALM, |S̄| = 2", "path": "o0/step1.tsv", "s": 60.0},
        {"method": "CALM, |S̄| = 2", "path": "o0/step2.tsv", "s": 120.0},
        {"method": "CALM, |S̄| = 2", "path": "o1/step1.tsv", "s": 90.0},
        {"method": "CALM, |S̄| = 2", "path": "o1/step2.tsv", "s": 150.0},
        {"method": "CALM step 1", "path": "o0/step1.tsv", "s": 60.0},
    ])
    runs = {"o0/step1.tsv": "o0", "o0/step2.tsv": "o0", "o1/step1.tsv": "o1", "o1/step2.tsv": "o1"}
    table = pt.run_times(frame, iterations={"CALM, |S̄| = 2": 40}, runs=runs).frame
    assert table.loc["CALM, |S̄| = 2", "Run time (s)"] == 210.0
    assert table.loc["CALM, |S̄| = 2", "s.d. over runs (s)"] == pytest.approx(1800 ** 0.5)
    assert table.loc["CALM, |S̄| = 2", "Runs"] == 2
    assert table.loc["CALM step 1", "Run time (s)"] == 60.0 and table.loc["CALM step 1", "Runs"] == 1


def test_write_table_writes_csv_markdown_latex_and_html(tmp_path):
    table = pt.lr_sweep(sweep_frame("lr", {1e7: {"a": 80.0}}))
    paths = pt.write_table(table, tmp_path / "t4")
    assert sorted(p.name for p in paths.values()) == ["t4.csv", "t4.html", "t4.md", "t4.tex"]
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == ["Method", "Learning rate", "a", "Avg", "Norm. avg"]
    assert "<b>80.0</b>" in paths["html"].read_text()


# --- figures ----------------------------------------------------------------------------------

def tiny_inputs() -> dict[str, pd.DataFrame]:
    """The smallest frames each figure accepts, with one-value sweeps where a sweep may have one."""
    main = pd.DataFrame({"method": ["Pretrained", "Individual", "TA", "CALM"], "a": [50.0, 90.0, 80.0, 85.0],
                         "b": [40.0, 80.0, 70.0, 78.0], "Avg": [45.0, 85.0, 75.0, 81.5],
                         "Norm. avg": [50.0, 100.0, 88.2, 96.0]})
    samplers = pd.concat([sweep_frame("ratio", {0.5: {"a": 80.0, "b": 70.0}, 0.9: {"a": 82.0, "b": 71.0}})
                          .assign(sampler=s) for s in ("cb_ems", "ems")]
                         + [sweep_frame("ratio", {0.9: {"a": 83.0, "b": 72.0}}).assign(sampler="supervised")])
    # CB-EMS and EMS at 0.9 over three seeds: repeat 0 is the sweep's run, averages 75.5, 77.5, 79.5
    repeats = pd.concat([samplers.assign(repeat=0)]
                        + [sweep_frame("ratio", {0.9: {"a": 82.0 + 2 * k, "b": 71.0 + 2 * k}})
                           .assign(sampler=s, repeat=k) for s in ("cb_ems", "ems") for k in (1, 2)])
    n_seq = pd.concat([sweep_frame("n_seq", {1: {"a": 80.0 + s, "b": 70.0}}).assign(order_seed=s) for s in (0, 1)])
    layers = pd.DataFrame([{"step": 1, "task": "b", "layer": f"layer.{i}", "active_fraction": 0.01 * i}
                           for i in range(3)])
    pseudo = pd.DataFrame([{"sampler": s, "ratio": r, "task": t, "pl_accuracy": 100 - 10 * r, "n_selected": 10}
                           for s in ("ems", "cb_ems") for r in (0.5, 0.9) for t in ("a", "b")])
    scores = pd.DataFrame({"task": ["a"] * 6 + ["b"] * 4, "idx": range(10),
                           "label": [0, 1, 2, 0, 1, 2, 0, 1, 0, 1], "pseudo_label": [0, 1, 2, 0, 1, 1, 0, 1, 1, 1],
                           "entropy": [0.1, 0.5, 0.9, 0.2, 0.4, 0.3, 0.1, 0.6, 0.2, 0.3]})
    trace_acc = pd.DataFrame([{"step": st, "task_merged": "b", "iteration": it, "task": t, "accuracy": 70.0 + it}
                              for st in (1,) for it in (0, 10, 20) for t in ("a", "b")])
    traces = pd.DataFrame({"run": ["b (step 1)"] * 3, "iteration": [1, 2, 3], "active_fraction": [1e-5, 1e-3, 2e-2]})
    return {"fig3_normalised": main, "fig4_ratio": samplers, "fig5_samplers": repeats, "fig6_n_seq": n_seq,
            "fig7_layers": layers, "fig8_pseudo_labels": pseudo, "fig9_entropy": scores,
            "fig11_trace_accuracy": trace_acc, "fig12_active_fraction": traces}


def test_every_figure_has_a_tiny_input():
    assert set(tiny_inputs()) == set(registry.FIGURES)


@pytest.mark.parametrize("name", registry.FIGURES)
def test_each_figure_writes_a_png_and_a_pdf(name, tmp_path):
    fig = registry.build(name, tiny_inputs()[name])
    assert all(ax.has_data() for ax in fig.axes if ax.get_label() != "<colorbar>")
    paths = style.save_figure(fig, tmp_path / name)
    png, pdf = paths["png"].read_bytes(), paths["pdf"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert pdf[:5] == b"%PDF-" and len(pdf) > 1000


def test_the_seeds_figure_puts_a_row_per_method_best_mean_on_top():
    # means over seeds 0 and 1: TA 76, CALM 80, TSV 81, Individual 90 (a line), Pretrained left out
    per_seed = pd.DataFrame([{"seed": s, "method": m, "Avg": v} for m, vs in
                             {"Pretrained": (50, 52), "Individual": (89, 91), "TA": (75, 77), "CALM": (81, 79),
                              "TSV": (80, 82)}.items() for s, v in zip((0, 1), vs)])
    fig = figures.seed_averages(per_seed)
    ax = fig.axes[0]
    # y ticks run bottom up: the worst row at 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["TA", "CALM", "TSV"]
    bars = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert bars == pytest.approx([76.0, 80.0, 81.0])
    dashed = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    dotted = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert dashed == pytest.approx([90.0]) and dotted == pytest.approx([80.0])
    assert [t.get_color() for t in ax.get_yticklabels()][1] == style.OURS_COLOUR
    # a marker per (method, seed): three rows, two seeds
    assert sum(len(c.get_offsets()) for c in ax.collections) == 6


def test_a_figure_without_its_rows_says_so():
    samplers = tiny_inputs()["fig4_ratio"]
    with pytest.raises(ValueError, match="sampler 'random': no rows"):
        figures.sampling_ratio(samplers, sampler="random")


def test_fig3_is_relative_to_the_individual_model():
    fig = comparison.normalised_accuracy(tiny_inputs()["fig3_normalised"])
    bars, heat = fig.axes[:2]
    # TA: 80/90, 70/80, avg 88.2; CALM: 85/90, 78/80, avg 96.0 (all in %); CALM's row first
    assert sorted(round(p.get_width(), 3) for p in bars.patches) == [88.2, 96.0]
    assert heat.images[0].get_array().round(3).tolist() == [[94.444, 97.5, 96.0], [88.889, 87.5, 88.2]]


def test_fig3_groups_methods_by_kind_sorts_them_by_average_and_draws_the_seeds_spread():
    names = ["Weight averaging", "TIES", "AdaMerging (layer-wise)", "RegMean", "EMR-Merging (a model per task)",
             "CALM"]
    averages = [80.0, 90.0, 85.0, 88.0, 95.0, 92.0]
    main = pd.DataFrame({"method": ["Individual"] + names, "a": [100.0] + averages, "Avg": [100.0] + averages,
                         "Norm. avg": [100.0] + averages})
    seeds = pd.DataFrame({"method": ["TIES", "CALM"], "Avg": [90.0, 92.0], "Norm. avg s.d.": [0.5, 0.25]})
    frame = pd.concat([main.assign(source="main"), seeds.assign(source="seeds")], ignore_index=True)
    bars = comparison.normalised_accuracy(frame).axes[0]
    order = [t.get_text() for t in bars.get_yticklabels()]
    assert order == ["CALM", "TIES", "Weight averaging", "RegMean", "AdaMerging (layer-wise)",
                     "EMR-Merging (a model per task)"]
    colours = [tuple(p.get_facecolor()) for p in bars.patches]
    assert colours[1] == colours[2] and colours[3] == colours[4]  # one colour per kind
    assert len({colours[0], colours[1], colours[3], colours[5]}) == 4  # each kind its own
    errorbars = next(c for c in bars.containers if isinstance(c, ErrorbarContainer))
    spans = sorted(round(float(seg[1][0] - seg[0][0]), 6) for seg in errorbars.lines[2][0].get_segments())
    assert spans == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0]  # ± s.d. where the seeds table has the method
    assert comparison.method_kind("Task arithmetic λ=0.6 (best λ, oracle)") == "data-free"
    assert comparison.method_kind("Iso-CTS") == "data-free" and comparison.method_kind("AdaRank") == "data-driven"


def test_fig5_shows_mean_and_sd_over_seeds_where_a_setting_repeats():
    fig = figures.sampler_comparison(tiny_inputs()["fig5_samplers"])
    curve, seeds = fig.axes
    # CB-EMS at 90 %: runs averaging 76.5, 78.5, 80.5 -> mean 78.5, s.d. 2
    mean = [line for line in seeds.lines if list(line.get_ydata()) == [78.5]]
    assert len(mean) == 2  # CB-EMS and EMS, the same runs
    # supervised ran once at 90 % (77.5): no spread
    assert sorted({round(float(y), 6) for line in seeds.lines for y in line.get_ydata()}) == [76.5, 77.5, 78.5, 80.5]
    dots = sorted(float(y) for c in seeds.collections if isinstance(c, PathCollection) for y in c.get_offsets()[:, 1])
    assert dots == [76.5, 76.5, 77.5, 78.5, 78.5, 80.5, 80.5]
    assert seeds.get_title().startswith("(b) At ratio 90 %")
    single = figures.sampler_comparison(tiny_inputs()["fig4_ratio"])
    assert len(single.axes) == 1


# --- registry -----------------------------------------------------------------------------------

def test_inputs_must_hold_the_items_columns(tmp_path):
    path = tmp_path / "lr.csv"
    pd.DataFrame({"lr": [1e7], "task": ["a"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lr.csv: missing columns \['accuracy'\] needed by table4_lr"):
        registry.read_inputs("table4_lr", [str(path)])


def test_labelled_inputs_are_stacked_with_their_label(tmp_path):
    for k, s in ((1, 60.0), (2, 90.0)):
        (tmp_path / f"b{k}.tsv").write_text(f"s\th:m:s\n{s}\t0:01:00\n")
    frame = registry.read_inputs("table8_runtime", [f"CALM (|S̄|=2)={tmp_path}/b1.tsv", f"CALM (|S̄|=2)={tmp_path}/b2.tsv"])
    assert list(frame["method"]) == ["CALM (|S̄|=2)"] * 2 and list(frame["s"]) == [60.0, 90.0]
    with pytest.raises(ValueError, match="expected LABEL=PATH"):
        registry.read_inputs("table8_runtime", [f"{tmp_path}/b1.tsv"])


def test_digest_follows_a_change_to_the_function_or_the_helpers_it_uses(tmp_path):
    source = "STYLE = {'a': 1}\n\ndef helper():\n    return STYLE\n\ndef f():\n    return helper()\n\ndef g():\n    return 2\n"
    path = tmp_path / "m.py"

    def digests(text):
        path.write_text(text)
        return registry.source_digest(path, ["f"]), registry.source_digest(path, ["g"])

    f0, g0 = digests(source)
    f1, g1 = digests(source.replace("return 2", "return 3"))  # g changes, f does not
    assert f1 == f0 and g1 != g0
    f1, g1 = digests(source.replace("{'a': 1}", "{'a': 2}"))  # the style, used by f through helper
    assert f1 != f0 and g1 == g0
    f2, _ = digests(source.replace("def f():", "# a comment\ndef f():"))  # comments are not code
    assert f2 == f0


def test_digest_follows_helpers_imported_from_other_modules_of_the_project(tmp_path):
    # A package laid out like calm/paper: the item's module imports a helper by name, a module
    # (then uses module.attr) and, relatively, a renderer; numpy stands for third-party code.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py"):
        init.write_text("")
    (pkg / "helpers.py").write_text("def labels():\n    return 1\n\ndef unused():\n    return 0\n")
    (pkg / "render.py").write_text("def to_md():\n    return 'md'\n")
    (pkg / "sub" / "items.py").write_text(
        "import numpy as np\nfrom pkg.helpers import labels\nfrom pkg import render\nfrom ..helpers import unused\n\n"
        "def fig():\n    return labels(), np.pi\n\ndef table():\n    return render.to_md()\n\ndef other():\n    return unused()\n")

    def digests():
        return {n: registry.source_digest(pkg / "sub" / "items.py", [n]) for n in ("fig", "table", "other")}

    d0 = digests()
    (pkg / "helpers.py").write_text("def labels():\n    return 2\n\ndef unused():\n    return 0\n")
    d1 = digests()
    assert d1["fig"] != d0["fig"] and d1["table"] == d0["table"] and d1["other"] == d0["other"]
    (pkg / "render.py").write_text("def to_md():\n    return 'markdown'\n")
    d2 = digests()
    assert d2["table"] != d1["table"] and d2["fig"] == d1["fig"] and d2["other"] == d1["other"]
    (pkg / "helpers.py").write_text("def labels():\n    return 2\n\ndef unused():\n    return 5\n")
    d3 = digests()
    assert d3["other"] != d2["other"] and d3["fig"] == d2["fig"]


def test_editing_step_labels_or_a_renderer_changes_the_digest_of_the_items_that_use_them(tmp_path):
    # A copy of the package, so that the real files are not edited.
    import shutil
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "calm", tmp_path / "calm", ignore=shutil.ignore_patterns("__pycache__"))
    figures_py, tables_py = tmp_path / "calm/paper/figures.py", tmp_path / "calm/paper/tables.py"

    def digest(module, *names):
        return registry.source_digest(module, list(names))

    fig7 = digest(figures_py, "layer_heatmap")
    fig6 = digest(figures_py, "sequential_count")
    table3 = digest(tables_py, "strategies", "write_table")
    text = tables_py.read_text()
    tables_py.write_text(text.replace("def step_labels(frame: pd.DataFrame) -> dict[tuple, str]:\n",
                                      "def step_labels(frame: pd.DataFrame) -> dict[tuple, str]:\n    frame = frame.copy()\n"))
    assert digest(figures_py, "layer_heatmap") != fig7
    assert digest(figures_py, "sequential_count") == fig6  # does not use step_labels
    renderers = tmp_path / "calm/render.py"
    renderers.write_text(renderers.read_text().replace("def to_markdown(", "def to_markdown(*_unused, "))
    assert digest(tables_py, "strategies", "write_table") != table3


def test_every_item_has_a_digest_and_a_caption_that_renders_cleanly():
    import io
    import re
    from pathlib import Path

    import docutils.core

    root = Path(__file__).resolve().parents[1]
    for name in registry.ITEMS:
        assert len(registry.item_digest(name)) == 12
        text = re.sub(r"{{.*?}}", "x", (root / "workflow/report/paper" / f"{name}.rst").read_text(), flags=re.S)
        warnings = io.StringIO()  # e.g. a bare |x| is a substitution reference in reST
        docutils.core.publish_doctree(text, settings_overrides={"warning_stream": warnings, "report_level": 2})
        assert warnings.getvalue() == "", f"{name}.rst: {warnings.getvalue()}"
