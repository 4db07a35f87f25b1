"""The ablations' maths and tables against values worked out by hand: merging strategies,
top-k shares, layer groups, pseudo-label accuracy, the sweep plan and the trace hook."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from calm import sweeps
from calm.stages import ablations
from calm.config import CalmConfig, Config
from calm.merging.mask_optimisation import MaskSettings, optimise_mask
from calm.merging.mask import commit, dmix_dm, mix


def dsig(x):
    s = 1 / (1 + math.exp(-x))
    return s * (1 - s)


# --- merging strategies (paper Table 3) -------------------------------------------------------

PREV = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
NEW = torch.tensor([10.0, 20.0, -30.0], dtype=torch.float64)
SOFT = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("strategy, expected", [
    # (1−m)·prev + m·new: 1; 0.75·(−2) + 0.25·20 = 3.5; −30
    ("both", [1.0, 3.5, -30.0]),
    # prev + m·new: 1; −2 + 5 = 3; 4 − 30 = −26
    ("only_m", [1.0, 3.0, -26.0]),
    # (1−m)·prev + new: 1 + 10 = 11; −1.5 + 20 = 18.5; 0 − 30 = −30
    ("only_1m", [11.0, 18.5, -30.0]),
])
def test_soft_mix_of_each_strategy(strategy, expected):
    assert mix(PREV, NEW, SOFT, strategy).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("strategy, expected", [
    ("both", [9.0, 22.0, -34.0]),      # new − prev
    ("only_m", [10.0, 20.0, -30.0]),   # new
    ("only_1m", [-1.0, 2.0, -4.0]),    # −prev
])
def test_mix_derivative_of_each_strategy(strategy, expected):
    assert dmix_dm(PREV, NEW, strategy).tolist() == expected


def test_commit_only_m_keeps_the_previous_merge_whole():
    mask = {"w": torch.tensor([False, True, True])}
    out = commit({"w": PREV}, {"w": NEW}, mask, "only_m")["w"]
    assert out.tolist() == [1.0, 18.0, -26.0]  # prev + M·new


def test_commit_only_1m_adds_the_new_task_whole():
    mask = {"w": torch.tensor([False, True, True])}
    out = commit({"w": PREV}, {"w": NEW}, mask, "only_1m")["w"]
    assert out.tolist() == [11.0, 20.0, -30.0]  # (1−M)·prev + new


@pytest.mark.parametrize("strategy", ["only_m", "only_1m"])
def test_mask_is_trained_with_the_rule_it_is_applied_with(strategy):
    """θ0 = 0, τ_prev = (1, 0), τ_new = (0, 2), loss w·θ with w = (3, −1), one step, k = 0.
    ∂L/∂σ(R) = w ⊙ ∂mix/∂m: only_m → w ⊙ τ_new = (0, −2); only_1m → w ⊙ (−τ_prev) = (−3, 0).
    R = −5 − lr·g·σ'(−5) − α·σ'(−5) (polarise at R < 0), lr = 100, α = 1."""
    theta0 = {"w": torch.zeros(2, dtype=torch.float64)}
    prev = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    new = {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}
    w = torch.tensor([3.0, -1.0], dtype=torch.float64)

    def terms(_):
        yield "t", lambda p: (w * p["w"]).sum()

    cfg = MaskSettings(iterations=1, lr=100.0, alpha=1.0, init_fraction=0.0, init_value=5.0, strategy=strategy)
    res = optimise_mask(theta0, prev, new, terms, cfg, progress=False)
    g = [0.0, -2.0] if strategy == "only_m" else [-3.0, 0.0]
    expected = [-5.0 - 100.0 * gi * dsig(-5.0) - dsig(-5.0) for gi in g]
    assert res.logits["w"].tolist() == pytest.approx(expected, abs=1e-5)
    # only_m: R = (−5.0067, −3.67): both stay off, τ = τ_prev = (1, 0);
    # only_1m: R = (−3.01, −5.0067): both off, τ = τ_prev + τ_new = (1, 2)
    assert res.mask["w"].tolist() == [False, False]
    assert res.tau["w"].tolist() == ([1.0, 0.0] if strategy == "only_m" else [1.0, 2.0])


def test_trace_hook_sees_the_binarised_merge_every_n_iterations():
    """The example of test_one_optimisation_step_by_hand (g = (−4, −12) at every iteration, the
    loss being linear): after iteration 1, R = (−5 + 398·σ'(−5), −5 + 1198·σ'(−5)) ≈ (−2.35, 2.96);
    iteration 2 adds 398·σ'(−2.35) ≈ 31.5 to the first, so both are on and a hook every 2 of 3
    iterations sees τ = τ_new = (0, 2) once, at iteration 2."""
    theta0 = {"w": torch.zeros(2, dtype=torch.float64)}
    prev = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    new = {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}
    w1, w2 = torch.tensor([3.0, -1.0], dtype=torch.float64), torch.tensor([1.0, -5.0], dtype=torch.float64)
    seen = []

    def terms(_):
        yield "t", lambda p: (w1 * p["w"]).sum()
        yield "t", lambda p: (w2 * p["w"]).sum()

    def hook(tau):
        seen.append(tau["w"].tolist())
        return {"acc/t": 0.5}

    cfg = MaskSettings(iterations=3, lr=100.0, alpha=2.0, init_fraction=0.0, init_value=5.0, trace_eval_every=2)
    res = optimise_mask(theta0, prev, new, terms, cfg, progress=False, trace_eval=hook)
    assert seen == [[0.0, 2.0]]
    assert [row.get("acc/t") for row in res.trace] == [None, 0.5, None]


# --- top-k shares (paper Table 7) -------------------------------------------------------------

def test_topk_share_of_a_tiny_mask():
    # |τ| ranks: a2 .9, b01 .7, a0 .5, b00 .3, b10 .2, a1 .1, b11 .05, a3 0 (N = 8)
    tau = {"a": torch.tensor([0.5, -0.1, 0.9, 0.0]), "b": torch.tensor([[0.3, -0.7], [0.2, 0.05]])}
    mask = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([[False, True], [False, False]])}
    out = ablations.topk_shares(mask, tau, [10, 25, 50, 100])
    # active: a0, a1, b01. top 10 % = int(0.8) = 0 entries; 25 % = {a2, b01} → 1 of 3;
    # 50 % = {a2, b01, a0, b00} → 2 of 3; 100 % → 3 of 3
    assert out["top_percent"].tolist() == [10, 25, 50, 100]
    assert out["share"].tolist() == pytest.approx([0.0, 100 / 3, 200 / 3, 100.0])


def test_topk_ties_go_to_the_earlier_position():
    tau = {"a": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    mask = {"a": torch.tensor([False, False, True, False])}
    out = ablations.topk_shares(mask, tau, [50, 75])
    # top 50 % = positions 0, 1 (no active entry); 75 % = positions 0, 1, 2
    assert out["share"].tolist() == [0.0, 100.0]


# --- per-layer active fractions (paper Fig. 7) ------------------------------------------------

@pytest.mark.parametrize("name, group", [
    ("embeddings.word_embeddings.weight", "embeddings"),
    ("embeddings.LayerNorm.bias", "embeddings"),
    ("encoder.layer.0.attention.self.query.weight", "0"),
    ("encoder.layer.11.output.dense.bias", "11"),
    ("pooler.dense.weight", "other"),
    ("vision_model.encoder.layers.3.mlp.fc1.weight", "3"),
    ("visual.transformer.resblocks.7.attn.in_proj_weight", "7"),
    ("vision_model.embeddings.patch_embedding.weight", "embeddings"),
    ("vision_model.post_layernorm.weight", "other"),
])
def test_layer_group_of_tensor_names(name, group):
    assert ablations.layer_group(name) == group


def test_layer_rows_pool_tensors_of_a_layer():
    tensors = pd.DataFrame({
        "tensor": ["pooler.dense.weight", "encoder.layer.1.a", "encoder.layer.0.a", "encoder.layer.1.b",
                   "embeddings.word_embeddings.weight"],
        "numel": [10, 4, 8, 6, 100],
        "active": [0, 1, 2, 4, 5],
    })
    out = ablations.layer_rows(tensors)
    assert out["layer"].tolist() == ["embeddings", "0", "1", "other"]
    # layer 1: (1 + 4) / (4 + 6)
    assert out["active_fraction"].tolist() == pytest.approx([0.05, 0.25, 0.5, 0.0])


# --- pseudo labels, accuracy rows, traces -------------------------------------------------------

def test_pseudo_label_accuracy_and_averages():
    credible = pd.DataFrame({"idx": [1, 2, 3, 4], "target": [0, 1, 1, 2], "label": [0, 1, 0, 0]})
    assert ablations.pseudo_label_row(credible) == {"pl_accuracy": 50.0, "n_selected": 4}
    frame = pd.DataFrame({"sampler": ["ems", "ems"], "ratio": [0.5, 0.5], "task": ["a", "b"],
                          "pl_accuracy": [50.0, 80.0], "n_selected": [4, 6]})
    out = ablations.pseudo_label_averages(frame)
    assert out.iloc[-1].to_dict() == {"sampler": "ems", "ratio": 0.5, "task": "average",
                                      "pl_accuracy": 65.0, "n_selected": 10}


def predictions(task_hits):
    rows = []
    for task, (hits, n) in task_hits.items():
        rows += [{"task": task, "idx": i, "label": 1, "pred": 1 if i < hits else 0} for i in range(n)]
    return pd.DataFrame(rows)


def test_accuracy_rows_with_normalised_and_average():
    merged = predictions({"a": (3, 4), "b": (1, 2)})      # 75 %, 50 %
    individual = predictions({"a": (4, 4), "b": (2, 4)})  # 100 %, 50 %
    out = ablations.accuracy_rows(merged, individual)
    assert out["task"].tolist() == ["a", "b", "average"]
    assert out["accuracy"].tolist() == pytest.approx([75.0, 50.0, 62.5])
    assert out["normalised"].tolist() == pytest.approx([75.0, 100.0, 87.5])
    assert list(ablations.accuracy_rows(merged).columns) == ["task", "accuracy"]


def test_trace_rows_keep_evaluated_iterations():
    trace = pd.DataFrame({"iteration": [1, 2, 3, 4], "loss": [1.0, 0.9, 0.8, 0.7],
                          "acc/a": [None, 0.5, None, 0.75], "acc/b": [None, 1.0, None, 0.25]})
    out = ablations.trace_rows(trace)
    assert out.to_dict(orient="records") == [
        {"iteration": 2, "task": "a", "accuracy": 50.0}, {"iteration": 2, "task": "b", "accuracy": 100.0},
        {"iteration": 2, "task": "average", "accuracy": 75.0},
        {"iteration": 4, "task": "a", "accuracy": 75.0}, {"iteration": 4, "task": "b", "accuracy": 25.0},
        {"iteration": 4, "task": "average", "accuracy": 50.0},
    ]


def test_analysis_vectors_by_hand():
    prev, new = {"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([10.0, 20.0, 30.0])}
    out = ablations.analysis_vectors(prev, new, {"w": torch.tensor([True, False, True])})
    assert out["tau1"]["w"].tolist() == [1.0, 2.0, 3.0]
    assert out["not_m_tau1"]["w"].tolist() == [0.0, 2.0, 0.0]
    assert out["m_tau2"]["w"].tolist() == [10.0, 0.0, 30.0]


# --- the sweep plan -----------------------------------------------------------------------------

def small_config(**ablations_section) -> Config:
    return Config.model_validate({
        "data": {"tasks": ["a", "b", "c"]},
        "select": {"sampler": "cb_ems", "ratio": 0.5},
        "calm": {"sequential": ["c"], "lr": 1e8},
        "ablations": {"samplers": ["cb_ems", "ems", "supervised"], "ratios": [0.5, 1.0], "orders": 2,
                      "lr_grid": [1e7, 1e8], "alpha_grid": [1.0], "strategies": ["both", "only_m"],
                      "switches": [{"grad_reduction": "sum", "regulariser": "polarise"}], **ablations_section},
    })


def test_points_with_the_default_settings_share_the_default_variant():
    variants, table = sweeps.plan(small_config())
    by = {(r.ablation, r.sampler, r.ratio, r.lr, r.strategy): r.variant for r in table.itertuples()
          if r.ablation in ("samplers", "lr", "strategy") and (pd.isna(r.repeat) or r.repeat == 0)}
    assert by[("samplers", "cb_ems", 0.5, 1e8, "both")] == "default"
    assert by[("lr", "cb_ems", 0.5, 1e8, "both")] == "default"
    assert by[("lr", "cb_ems", 0.5, 1e7, "both")] == "lr1e+07"
    # at ratio 1, EMS keeps the whole pool with pseudo-labels, as CB-EMS does; supervised does not
    assert by[("samplers", "ems", 1.0, 1e8, "both")] == by[("samplers", "cb_ems", 1.0, 1e8, "both")] == "cb_ems-r1"
    assert by[("samplers", "supervised", 1.0, 1e8, "both")] == "supervised-r1"
    # the mask analysis merges calm.sequential[-1] = c alone: the default's own settings
    assert table[table.ablation == "mask_analysis"]["variant"].tolist() == ["default"]
    trace = variants[table[table.ablation == "trace"]["variant"].item()]
    assert trace.calm.trace_eval_every == 5 and variants["default"].calm.trace_eval_every == 0


def test_sampler_repeats_reseed_calm_and_only_the_drawing_samplers():
    """Three repeats at select.ratio 0.5: repeat k runs with calm.seed k; supervised also draws
    its set with select.seed k, the deterministic samplers keep repeat 0's set."""
    variants, table = sweeps.plan(small_config())
    rows = table[table.ablation == "samplers"]
    at = rows[rows.ratio == 0.5].set_index(["sampler", "repeat"])["variant"]
    assert sorted(at.index) == [(s, k) for s in ("cb_ems", "ems", "supervised") for k in (0, 1, 2)]
    assert at[("cb_ems", 0)] == "default" and at[("cb_ems", 2)] == "cb_ems-r0.5-s2"
    for (sampler, k), name in at.items():
        v = variants[name]
        assert v.calm.seed == k and v.ratio == 0.5
        assert v.select_seed == (k if sampler == "supervised" else 0)
    assert set(rows[rows.ratio == 1.0]["repeat"]) == {0}  # only select.ratio is repeated


def test_sampler_repeats_add_repeat_zero_where_the_grid_lacks_select_ratio():
    _, table = sweeps.plan(small_config(ratios=[1.0], sampler_repeats=2))
    rows = table[(table.ablation == "samplers") & (table.ratio == 0.5)]
    assert sorted(zip(rows["sampler"], rows["repeat"])) == [(s, k) for s in ("cb_ems", "ems", "supervised")
                                                           for k in (0, 1)]
    assert rows[(rows.sampler == "cb_ems") & (rows.repeat == 0)]["variant"].item() == "default"


def test_n_seq_orders_are_distinct_prefixes_of_seeded_permutations():
    _, table = sweeps.plan(small_config())
    rows = table[table.ablation == "n_seq"]
    assert sorted(set(rows["n_seq"])) == [1, 2]  # 1 … T − 1
    for n, group in rows.groupby("n_seq"):
        assert len(group) == 2 and group["order"].is_unique
        for seed, order in zip(group["order_seed"], group["order"]):
            assert order.split(">") == sweeps.order_permutation(["a", "b", "c"], int(seed))[:n]


def test_sweep_iterations_knob_moves_every_point_off_the_default():
    variants, table = sweeps.plan(small_config(iterations=7))
    others = table[table.ablation != "iterations"]  # the iterations sweep sets its own
    assert "default" not in set(others["variant"])
    assert set(others["iterations"]) == {7}
    assert table[(table.ablation == "lr") & (table.lr == 1e8)]["variant"].item() == "sweep-base"
    assert variants["sweep-base"].calm.iterations == 7


def test_iterations_sweep_shares_the_default_at_calm_iterations_and_keeps_its_other_settings():
    variants, table = sweeps.plan(small_config(iterations_grid=[20, 50, 100], iterations=7))
    rows = table[table.ablation == "iterations"].set_index("iterations")["variant"]
    # calm.iterations is 100 here (CalmConfig's default); ablations.iterations does not apply
    assert rows.to_dict() == {20: "iter20", 50: "iter50", 100: "default"}
    assert variants["iter20"].calm.model_dump() == {**variants["default"].calm.model_dump(), "iterations": 20}


def test_config_rejects_a_non_positive_iteration_count():
    with pytest.raises(ValueError, match="iterations_grid"):
        small_config(iterations_grid=[20, 0])


def test_config_rejects_an_n_seq_that_leaves_s_empty():
    with pytest.raises(ValueError, match="ablations.n_seq: 3"):
        small_config(n_seq=[3])


# --- the tables' columns (the paper's tables and figures read these) ---------------------------

def test_ablation_tables_have_the_contract_columns(tmp_path):
    from calm.stages.ablations import ablation_table

    merged, individual = tmp_path / "m.parquet", tmp_path / "i.parquet"
    predictions({"a": (3, 4), "b": (1, 2)}).to_parquet(merged)
    predictions({"a": (4, 4), "b": (2, 4)}).to_parquet(individual)
    out = ablation_table("accuracy", [{"sampler": "ems", "ratio": 0.3, "path": str(merged)}],
                         tmp_path / "samplers.csv", individual=individual)
    written = pd.read_csv(tmp_path / "samplers.csv")
    assert list(written.columns) == ["sampler", "ratio", "task", "accuracy", "normalised"]
    assert written["task"].tolist() == ["a", "b", "average"] and out["ratio"].tolist() == [0.3] * 3

    credible = tmp_path / "c.parquet"
    pd.DataFrame({"idx": [1, 2], "target": [0, 1], "label": [0, 0]}).to_parquet(credible)
    ablation_table("pseudo_labels", [{"sampler": "ems", "ratio": 0.3, "path": str(credible), "task": "a"}],
                   tmp_path / "pl.csv")
    pl = pd.read_csv(tmp_path / "pl.csv")
    assert list(pl.columns) == ["sampler", "ratio", "task", "pl_accuracy", "n_selected"]
    assert pl["task"].tolist() == ["a", "average"] and pl["pl_accuracy"].tolist() == [50.0, 50.0]

    # A point that names its CALM steps' benchmark files reports their summed seconds (the last
    # line of each: Snakemake appends a line per repeat).
    steps = [tmp_path / "step1.tsv", tmp_path / "step2.tsv"]
    steps[0].write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    steps[1].write_text("s\th:m:s\tmax_rss\n99.0\t0:01:39\t100\n30.25\t0:00:30\t100\n")
    ablation_table("accuracy", [{"iterations": 50, "path": str(merged), "benchmarks": [str(p) for p in steps]}],
                   tmp_path / "iterations.csv", individual=individual)
    it = pd.read_csv(tmp_path / "iterations.csv")
    assert list(it.columns) == ["iterations", "step_seconds", "task", "accuracy", "normalised"]
    assert it["step_seconds"].tolist() == [42.75] * 3

    ablation_table("accuracy", [{"row": "θ0", "path": str(merged)}], tmp_path / "mask.csv")
    assert list(pd.read_csv(tmp_path / "mask.csv").columns) == ["row", "task", "accuracy"]


# --- the sweeps over fine-tuning seeds (replicates.ablations) ---------------------------------

def test_sweeps_over_seeds_by_hand(tmp_path):
    """Two seeds. Strategy averages: both 80, 82; only M 83, 81 (mean 82, s.d. √2 each). only M −
    both from the predictions: one task of 4 examples, only M one more right under seed 0 and
    one fewer under seed 1, so +25 and −25 points: the mean +0, an interval around it. |S̄| = 1:
    the mean over two orders per seed, (70 + 74)/2 = 72 and (76 + 76)/2 = 76: mean 74, s.d. 2√2."""
    def preds(correct):
        return pd.DataFrame({"task": "t", "idx": range(4), "label": 1, "pred": correct})

    runs = {"strategy": [], "n_seq": []}
    for seed, (both, only_m, p_both, p_m, orders) in enumerate([
            (80, 83, [1, 1, 0, 0], [1, 1, 1, 0], (70, 74)), (82, 81, [1, 1, 1, 0], [1, 1, 0, 0], (76, 76))]):
        strategy = pd.DataFrame([{"strategy": s, "task": task, "accuracy": acc}
                                 for s, acc in (("both", both), ("only_m", only_m)) for task in ("t", "average")])
        strategy.to_csv(tmp_path / f"strategy{seed}.csv", index=False)
        for name, p in (("both", p_both), ("only_m", p_m)):
            preds(p).to_parquet(tmp_path / f"{name}{seed}.parquet")
        runs["strategy"].append({"seed": seed, "table": str(tmp_path / f"strategy{seed}.csv"),
                                 "predictions": {s: str(tmp_path / f"{s}{seed}.parquet") for s in ("both", "only_m")}})
        n_seq = pd.DataFrame([{"n_seq": 1, "order_seed": o, "order": "t", "task": "average", "accuracy": acc}
                              for o, acc in enumerate(orders)])
        n_seq.to_csv(tmp_path / f"n_seq{seed}.csv", index=False)
        runs["n_seq"].append({"seed": seed, "table": str(tmp_path / f"n_seq{seed}.csv")})

    text = ablations.seeds_ablations(runs, tmp_path / "seeds", bootstrap=200, seed=0)
    table = pd.read_csv(tmp_path / "seeds_ablations.csv").set_index(["sweep", "setting"])
    both, only_m = table.loc[("strategy", "both")], table.loc[("strategy", "only_m")]
    assert (both["accuracy"], both["accuracy s.d."]) == pytest.approx((81, 2 ** 0.5))
    assert (only_m["accuracy"], only_m["accuracy s.d."]) == pytest.approx((82, 2 ** 0.5))
    assert (only_m["accuracy (seed 0)"], only_m["accuracy (seed 1)"]) == (83, 81)
    assert only_m["comparison"] == "only_m − both" and only_m["difference"] == pytest.approx(0)
    assert only_m["low"] < 0 < only_m["high"] and pd.isna(both["difference"])
    one = table.loc[("n_seq", "1")]
    assert (one["accuracy"], one["accuracy s.d."], one["seeds"]) == pytest.approx((74, 2 * 2 ** 0.5, 2))
    assert "| only M | **82.0 ± 1.4** | 83.0 | 81.0 | +0.0 [" in text
    assert (tmp_path / "seeds_n_seq.png").stat().st_size > 5000 and (tmp_path / "seeds_n_seq.pdf").exists()
