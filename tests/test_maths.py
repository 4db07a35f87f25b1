"""The merging maths against values worked out by hand (docs/design.md §1–§2)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from calm import sampling, scoring, vectors
import calm.merging.mask_optimisation as calm_loop
from calm.merging.mask_optimisation import MaskSettings, optimise_mask
from calm.merging.mask import binarise, commit, init_mask_logits, pack, unpack, update_logits
from calm.merging.task_arithmetic import task_arithmetic


def sig(x):
    return 1 / (1 + math.exp(-x))


def dsig(x):
    return sig(x) * (1 - sig(x))


# --- scores ---------------------------------------------------------------------------------

def test_entropy_of_known_distributions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]])
    h = scoring.entropy(logits)
    # uniform over 4 -> ln 4; p = (1/4, 3/4) -> −(¼ ln ¼ + ¾ ln ¾)
    assert h[0].item() == pytest.approx(math.log(4), abs=1e-6)
    assert h[1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_pseudo_labels_are_argmax():
    assert scoring.pseudo_labels(torch.tensor([[0.1, 2.0, 1.0], [3.0, -1.0, 0.0]])).tolist() == [1, 0]


# --- samplers -------------------------------------------------------------------------------

def scores_table():
    # class 0: five samples; class 1: one sample; class 2: two samples tied in entropy
    return pd.DataFrame({
        "idx": [10, 11, 12, 13, 14, 20, 30, 31],
        "entropy": [0.5, 0.1, 0.3, 0.2, 0.4, 0.05, 0.7, 0.7],
        "pseudo_label": [0, 0, 0, 0, 0, 1, 2, 2],
        "label": [0, 1, 0, 0, 0, 1, 2, 0],
    })


def test_cb_ems_keeps_floor_ratio_lowest_per_class():
    out = sampling.cb_ems(scores_table(), ratio=0.6)
    # class 0: floor(3.0) = 3 lowest -> idx 11, 13, 12; class 1: floor(0.6) = 0;
    # class 2: floor(1.2) = 1, the tie goes to the lower idx 30
    assert out["idx"].tolist() == [11, 12, 13, 30]
    assert out["target"].tolist() == [0, 0, 0, 2]


def test_cb_ems_full_ratio_keeps_everything():
    assert sampling.cb_ems(scores_table(), ratio=1.0)["idx"].tolist() == [10, 11, 12, 13, 14, 20, 30, 31]


def test_ems_is_one_global_cut():
    out = sampling.ems(scores_table(), ratio=0.5)  # floor(4.0) = 4 lowest overall
    assert out["idx"].tolist() == [11, 12, 13, 20]


def test_supervised_trains_on_true_labels():
    out = sampling.supervised(scores_table(), ratio=1.0)
    assert out["target"].tolist() == [0, 1, 0, 0, 0, 1, 2, 0]


def test_only_the_seeded_samplers_change_with_the_seed():
    """The sampler sweep's repeats share a deterministic sampler's credible set (sampling.SEEDED)."""
    for name in sampling.SAMPLERS:
        draws = {tuple(sampling.draw_credible(scores_table(), name, 0.5, seed)["idx"]) for seed in range(20)}
        assert (len(draws) > 1) == (name in sampling.SEEDED), name


def test_sampler_rejects_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        sampling.draw_credible(scores_table(), "cb_ems", 1.5)


# --- task arithmetic ---------------------------------------------------------------------------

def test_task_arithmetic_by_hand():
    t1 = {"w": torch.tensor([1.0, 2.0])}
    t2 = {"w": torch.tensor([3.0, -1.0])}
    assert torch.allclose(task_arithmetic([t1, t2], lam=0.3)["w"], torch.tensor([1.2, 0.3]))


def test_task_vector_names_first_mismatching_tensor():
    pre = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="'b'"):
        vectors.task_vector({"a": torch.zeros(2), "b": torch.zeros(4)}, pre)
    with pytest.raises(ValueError, match="'b'"):
        vectors.task_vector({"a": torch.zeros(2)}, pre)


# --- mask ------------------------------------------------------------------------------------

def test_init_is_global_top_k_with_strict_threshold():
    tau = {"a": torch.tensor([0.1, -0.9, 0.3, 0.0, 0.2]), "b": torch.tensor([[0.8, -0.05], [0.4, 0.6]])}
    # N = 9, k = int(0.45 * 9) = 4; the 4 largest |τ| are .9 .8 .6 .4, threshold .4 (strict) ->
    # on: -0.9 (a[1]), 0.8 (b[0,0]), 0.6 (b[1,1])
    R = init_mask_logits(tau, fraction=0.45, value=5.0)
    assert R["a"].tolist() == [-5, 5, -5, -5, -5]
    assert R["b"].tolist() == [[5, -5], [-5, 5]]


def test_init_with_ties_at_threshold_and_k_zero():
    tau = {"a": torch.tensor([2.0, 2.0, 2.0, 1.0])}
    assert init_mask_logits(tau, 0.5, 5.0)["a"].tolist() == [-5, -5, -5, -5]  # nothing strictly above 2
    assert init_mask_logits(tau, 0.1, 5.0)["a"].tolist() == [-5, -5, -5, -5]  # k = 0


@pytest.mark.parametrize("regulariser", ["polarise", "l1"])
def test_mask_update_by_hand(regulariser):
    R = {"w": torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)}
    g = {"w": torch.tensor([0.5, -2.0, 4.0], dtype=torch.float64)}
    lr, alpha = 0.1, 0.3
    out = update_logits(R["w"], g["w"], lr, alpha, regulariser).tolist()
    signs = [1.0, -1.0, 0.0]
    for r, gi, s, o in zip([2.0, -1.0, 0.0], [0.5, -2.0, 4.0], signs, out):
        reg = alpha * s * dsig(r) if regulariser == "polarise" else -alpha * dsig(r)
        assert o == pytest.approx(r - lr * gi * dsig(r) + reg, abs=1e-12)


@pytest.mark.parametrize("chunk", [1, calm_loop.CHUNK])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("regulariser", ["polarise", "l1"])
def test_one_optimisation_step_by_hand(reduction, regulariser, chunk, monkeypatch):
    """θ0 = 0, τ_prev = (1, 0), τ_new = (0, 2); two batches with losses w1·θ and w2·θ, so
    ∂L/∂θ = w and ∂L/∂σ(R) = w ⊙ (τ_new − τ_prev). k = 0, so R starts at −5 everywhere.
    With chunk = 1 the loop forms θ and updates R one entry at a time."""
    monkeypatch.setattr(calm_loop, "CHUNK", chunk)
    theta0 = {"w": torch.zeros(2, dtype=torch.float64)}
    prev = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    new = {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}
    w1, w2 = torch.tensor([3.0, -1.0], dtype=torch.float64), torch.tensor([1.0, -5.0], dtype=torch.float64)

    def terms(_):
        yield "t", lambda p: (w1 * p["w"]).sum()
        yield "t", lambda p: (w2 * p["w"]).sum()

    cfg = MaskSettings(iterations=1, lr=100.0, alpha=2.0, init_fraction=0.0, init_value=5.0,
                     grad_reduction=reduction, regulariser=regulariser)
    res = optimise_mask(theta0, prev, new, terms, cfg, progress=False)
    divisor = 2 if reduction == "mean" else 1
    g = [(3.0 + 1.0) * (0 - 1) / divisor, (-1.0 - 5.0) * (2 - 0) / divisor]  # (w1+w2) ⊙ (τ_new − τ_prev)
    reg = [-2.0 * dsig(-5.0)] * 2 if regulariser == "polarise" else [-2.0 * dsig(-5.0)] * 2
    expected = [-5.0 - 100.0 * gi * dsig(-5.0) + ri for gi, ri in zip(g, reg)]
    assert res.logits["w"].tolist() == pytest.approx(expected, abs=1e-5)  # R is kept in fp32
    # g = (−4, −12) with sum: −5 + 100·12·σ'(−5) − 2σ'(−5) ≈ 2.96 > 0 turns the second entry on;
    # halved with mean (≈ −1.03), it stays off. The first stays off either way.
    on = reduction == "sum"
    assert res.mask["w"].tolist() == [False, on]
    assert res.tau["w"].tolist() == [1.0, 2.0 if on else 0.0]
    assert res.trace[0]["loss"] == pytest.approx(((w1 + w2) * (0.9933071 * prev["w"] + 0.0066929 * new["w"])).sum().item() / 2, abs=1e-5)


def test_gradient_that_favours_the_new_task_turns_the_mask_on():
    theta0 = {"w": torch.zeros(1, dtype=torch.float64)}
    prev, new = {"w": torch.tensor([1.0], dtype=torch.float64)}, {"w": torch.tensor([-1.0], dtype=torch.float64)}

    def terms(_):
        yield "t", lambda p: (p["w"] * 10.0).sum()  # lower θ is better: prefer τ_new

    cfg = MaskSettings(iterations=1, lr=1e4, alpha=1.0, init_fraction=0.0, init_value=5.0)
    res = optimise_mask(theta0, prev, new, terms, cfg, progress=False)
    # g = 10 · (−1 − 1) = −20; R = −5 + 1e4 · 20 · σ'(−5) − σ'(−5) > 0
    assert res.logits["w"].item() == pytest.approx(-5 + 1e4 * 20 * dsig(-5) - dsig(-5))
    assert res.mask["w"].tolist() == [True]
    assert res.tau["w"].tolist() == [-1.0]
    assert res.trace[0]["active_fraction"] == 1.0


def test_binarise_and_commit_each_strategy():
    R = {"w": torch.tensor([-1.0, 0.0, 2.0])}
    m = binarise(R)
    assert m["w"].tolist() == [False, False, True]  # σ(0) = 0.5 rounds to 0
    prev, new = {"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([10.0, 20.0, 30.0])}
    assert commit(prev, new, m, "both")["w"].tolist() == [1.0, 2.0, 30.0]
    assert commit(prev, new, m, "only_m")["w"].tolist() == [1.0, 2.0, 33.0]
    assert commit(prev, new, m, "only_1m")["w"].tolist() == [11.0, 22.0, 30.0]


def test_pack_is_eight_entries_a_byte_and_round_trips():
    mask = {"a": torch.tensor([[True, False, True], [False, False, True], [True, True, True]]),
            "b": torch.tensor([True])}
    packed, meta = pack(mask)
    assert packed["a"].numel() == 2 and packed["b"].numel() == 1
    assert packed["a"].tolist() == [0b10100111, 0b10000000]  # row-major T F T F F T T T | T
    back = unpack(packed, meta)
    assert all(torch.equal(back[k], mask[k]) for k in mask)


def test_a_tensor_no_batch_reaches_only_feels_the_regulariser():
    theta0 = {"used": torch.zeros(1), "unused": torch.zeros(1)}
    prev = {"used": torch.ones(1), "unused": torch.ones(1)}
    new = {"used": -torch.ones(1), "unused": -torch.ones(1)}

    def terms(_):
        yield "t", lambda p: p["used"].sum()  # "unused" plays no part, as a model's unused pooler

    cfg = MaskSettings(iterations=1, lr=1.0, alpha=1.0, init_fraction=0.0, init_value=5.0)
    res = optimise_mask(theta0, prev, new, terms, cfg, progress=False)
    assert res.logits["unused"].item() == pytest.approx(-5 - dsig(-5), abs=1e-6)  # polarised further off
