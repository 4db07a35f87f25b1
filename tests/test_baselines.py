"""The baselines' maths against values worked out by hand on tiny tensors (docs/design.md §3)."""
from __future__ import annotations

import typing

import pytest
import torch

from calm.config.baselines import BaselineName
from calm.config.files import json_schema
from calm.methods import METHODS
from calm.merging.adamerging import adamerging
from calm.merging.consensus import consensus_mask, consensus_ta, consensus_ties, tall_masks, tall_vectors_ta
from calm.merging.fisher import coefficient_draws, diagonal_fisher, fisher_merge
from calm.merging.localize_stitch import localize, stitch
from calm.merging.regmean import regmean
from calm.merging.ties import elect_sign, ties, trim
from calm.merging.weight_averaging import weight_averaging


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_weight_averaging_is_the_mean_task_vector():
    out = weight_averaging([{"w": t(1, 2)}, {"w": t(3, -1)}, {"w": t(2, 2)}])
    assert out["w"].tolist() == pytest.approx([2.0, 1.0])


# --- TIES -----------------------------------------------------------------------------------

def ties_vectors():
    # Two tensors, five entries per task; k = 0.4 keeps int(0.4 · 5) = 2 entries per task,
    # chosen over both tensors together.
    return [
        {"a": t(3, -1, -2), "b": t(0.5, 1.5)},   # keeps 3, −2
        {"a": t(-3, 4, 0.1), "b": t(-1, 0.2)},   # keeps 4, −3
        {"a": t(1, -2, -5), "b": t(0.2, 3)},     # keeps −5, 3
    ]


def test_trim_keeps_top_k_over_all_tensors_and_ties_at_the_threshold():
    trimmed = [trim(v, 0.4) for v in ties_vectors()]
    assert trimmed[0]["a"].tolist() == [3, 0, -2] and trimmed[0]["b"].tolist() == [0, 0]
    assert trimmed[1]["a"].tolist() == [-3, 4, 0] and trimmed[1]["b"].tolist() == [0, 0]
    assert trimmed[2]["a"].tolist() == [0, 0, -5] and trimmed[2]["b"].tolist() == [0, 3]
    # n = max(1, int(0.25 · 4)) = 1: threshold 2, and every entry of magnitude 2 stays
    assert trim({"w": t(2, 2, 1, -2)}, 0.25)["w"].tolist() == [2, 2, 0, -2]


def test_sign_election_breaks_a_zero_sum_by_the_majority_sign():
    trimmed = [trim(v, 0.4) for v in ties_vectors()]
    sign = elect_sign(trimmed)
    # sums: a = (3 − 3 + 0, 0 + 4 + 0, −2 + 0 − 5) = (0, 4, −7), b = (0, 3);
    # elected signs of the non-zero sums: +, −, + → majority +, given to both zero sums
    assert sign["a"].tolist() == [1, 1, -1]
    assert sign["b"].tolist() == [1, 1]


@pytest.mark.parametrize("merge, expected_a", [("sum", [3, 4, -7]), ("mean", [3, 4, -3.5])])
def test_ties_disjoint_merge_by_hand(merge, expected_a):
    out = ties(ties_vectors(), k=0.4, lam=0.3, merge=merge)
    # a[0]: elected + by the tie rule, only task 1's 3 agrees (task 2's −3 is dropped);
    # a[2]: −2 and −5 agree (sum −7, mean −3.5); b[0]: nothing survives the trim; b[1]: 3
    assert out["a"].tolist() == pytest.approx([0.3 * v for v in expected_a])
    assert out["b"].tolist() == pytest.approx([0.0, 0.9])


# --- Consensus (TALL masks) -------------------------------------------------------------------

def consensus_vectors():
    return [{"w": t(1, 0, 2, -1)}, {"w": t(1, 1, -2, 0)}, {"w": t(0, 0, 1, -1)}]


def test_tall_masks_and_the_two_of_three_consensus():
    vs = consensus_vectors()
    merged = {"w": t(2, 1, 1, -2)}  # Σ τ_t
    masks = tall_masks(vs, merged, tall_lambda=0.5)
    # |τ_t| > 0.5 |Σ − τ_t|:  task 1: (1 > .5, 0 > .5, 2 > .5, 1 > .5)
    assert masks[0]["w"].tolist() == [True, False, True, True]
    # task 2: (1 > .5, 1 > 0, 2 > 1.5, 0 > 1)
    assert masks[1]["w"].tolist() == [True, True, True, False]
    # task 3: (0 > 1, 0 > .5, 1 > 0, 1 > .5)
    assert masks[2]["w"].tolist() == [False, False, True, True]
    # counts (2, 1, 3, 2): the entry only task 2 wants ("selfish") goes with k = 2
    assert consensus_mask(masks, 2)["w"].tolist() == [True, False, True, True]
    assert consensus_mask(masks, 3)["w"].tolist() == [False, False, True, False]
    assert consensus_ta(vs, tall_lambda=0.5, min_tasks=2, lam=0.3)["w"].tolist() == pytest.approx([0.6, 0, 0.3, -0.6])


def test_each_task_may_have_its_own_tall_lambda():
    vs = consensus_vectors()
    merged = {"w": t(2, 1, 1, -2)}  # Σ τ_t; |Σ − τ_t|: (1, 1, 1, 1), (1, 0, 3, 2), (2, 1, 0, 1)
    # task 1 at λ 2: |τ_1| = (1, 0, 2, 1) > (2, 2, 2, 2) nowhere; tasks 2 and 3 at 0.5 as above
    masks = tall_masks(vs, merged, tall_lambda=[2.0, 0.5, 0.5])
    assert [m["w"].tolist() for m in masks] == [[False] * 4, [True, True, True, False], [False, False, True, True]]
    # counts (1, 1, 2, 1): only the third entry has two tasks
    assert consensus_ta(vs, tall_lambda=[2.0, 0.5, 0.5], min_tasks=2, lam=0.3)["w"].tolist() == pytest.approx(
        [0, 0, 0.3, 0])
    # the vectors each task's λ_t is judged by: m_t ∘ Σ τ
    by_value = {(value, t): v["w"].tolist() for value, t, v in tall_vectors_ta(vs, [2.0, 0.5])}
    assert [by_value[(2.0, 0)], by_value[(0.5, 1)], by_value[(0.5, 2)]] == [
        [0, 0, 0, 0], [2, 1, 1, 0], [0, 0, 1, -2]]
    with pytest.raises(ValueError, match="2 TALL λ_t for 3 task vectors"):
        consensus_ta(vs, tall_lambda=[0.5, 0.5])


def test_tall_mask_is_strict_at_equality():
    # |τ| = 1 and λ|Σ − τ| = 0.5 · 2 = 1: not selected
    assert tall_masks([{"w": t(1.0)}], {"w": t(3.0)}, 0.5)[0]["w"].tolist() == [False]


def test_consensus_ties_masks_the_ties_vector():
    # k = 1 keeps everything; elected signs (+, +, +, −); agreeing sums: (2, 1, 2 + 1, −2).
    # TALL masks against (2, 1, 3, −2): task 1 (T, F, T, T), task 2 (T, T, F, F),
    # task 3 (F, F, F, T); counts (2, 1, 1, 2)
    out = consensus_ties(consensus_vectors(), tall_lambda=0.5, min_tasks=2, lam=0.3, k=1.0, merge="sum")
    assert out["w"].tolist() == pytest.approx([0.6, 0, 0, -0.6])


# --- Localize-and-Stitch ----------------------------------------------------------------------

def test_stitch_averages_the_vectors_where_masks_overlap():
    vs = [{"w": t(2, 4, 6, 8)}, {"w": t(10, 20, 30, 40)}]
    masks = [{"w": torch.tensor([True, True, False, False])}, {"w": torch.tensor([False, True, True, False])}]
    assert stitch(vs, masks)["w"].tolist() == [2, 12, 30, 0]


def test_localize_step_averages_its_batches_and_turns_on_a_helpful_entry():
    """θ0 = 0, τ = (1, −1); batches with losses w1·θ and w2·θ: ∂L/∂σ(R) = mean(w) ⊙ τ.
    R starts at −5 (k = 0); one epoch: R ← R − lr·g·σ'(R) − α·σ'(R) (polarising, R < 0)."""
    import math

    def dsig(x):
        s = 1 / (1 + math.exp(-x))
        return s * (1 - s)

    theta0 = {"w": torch.zeros(2, dtype=torch.float64)}
    tau = {"w": t(1, -1)}
    w1, w2 = t(-4, 2), t(-2, 6)

    def terms(_):
        yield "task", lambda p: (w1 * p["w"]).sum()
        yield "task", lambda p: (w2 * p["w"]).sum()

    res = localize(theta0, tau, terms, epochs=1, lr=10.0, alpha=1.0, init_value=5.0, init_fraction=0.0,
                   progress=False)
    g = [(-4 - 2) / 2 * 1, (2 + 6) / 2 * -1]  # (−3, −4): lowering the loss needs both entries on
    expected = [-5 - 10 * gi * dsig(-5) - dsig(-5) for gi in g]
    assert res.logits["w"].tolist() == pytest.approx(expected, abs=1e-5)
    # −5 + 30σ' − σ' ≈ −4.81 stays off, −5 + 40σ' − σ' ≈ −4.74 too: lr 1000 turns both on
    assert res.mask["w"].tolist() == [False, False]
    res = localize(theta0, tau, terms, epochs=1, lr=1000.0, alpha=1.0, init_value=5.0, init_fraction=0.0,
                   progress=False)
    assert res.mask["w"].tolist() == [True, True]
    assert res.tau["w"].tolist() == [1, -1]


# --- AdaMerging -------------------------------------------------------------------------------

def linear_loss(_step):
    yield "task", lambda p: p["a"].sum() - p["b"].sum()


@pytest.mark.parametrize("init, expected", [(0.95, [0.85, 1.0]), (0.05, [0.0, 0.15])])
def test_task_wise_adamerging_clamps_after_a_step_that_leaves_the_range(init, expected):
    """L = θ_a − θ_b, τ1 = (a: 1, b: 0), τ2 = (a: 0, b: 1): ∂L/∂λ = (1, −1). Adam's first step
    moves each coefficient by lr against the sign of its gradient, then [0, 1] clamps it."""
    theta0 = {"a": t(0.0), "b": t(0.0)}
    vs = [{"a": t(1.0), "b": t(0.0)}, {"a": t(0.0), "b": t(1.0)}]
    res = adamerging(theta0, vs, linear_loss, "task", steps=1, lr=0.1, init=init, progress=False)
    assert res.coefficients.tolist() == pytest.approx(expected, abs=1e-6)
    assert res.tau["a"].tolist() == pytest.approx([expected[0]], abs=1e-6)
    assert res.tau["b"].tolist() == pytest.approx([expected[1]], abs=1e-6)
    assert res.trace[0]["loss"] == pytest.approx(init - init)


def test_layer_wise_adamerging_has_one_coefficient_per_tensor_and_task():
    theta0 = {"a": t(0.0), "b": t(0.0)}
    vs = [{"a": t(1.0), "b": t(2.0)}, {"a": t(3.0), "b": t(-1.0)}]
    res = adamerging(theta0, vs, linear_loss, "layer", steps=1, lr=0.1, init=0.05, progress=False)
    # ∂L/∂λ_{t,a} = τ_{t,a}, ∂L/∂λ_{t,b} = −τ_{t,b}: (1, −2; 3, 1)
    assert res.coefficients.flatten().tolist() == pytest.approx([0.0, 0.15, 0.0, 0.0], abs=1e-6)
    assert res.tau["a"].tolist() == pytest.approx([0.0], abs=1e-6)
    assert res.tau["b"].tolist() == pytest.approx([0.3], abs=1e-6)
    # the loss at the start: 0.05 · (1 + 3) − 0.05 · (2 − 1)
    assert res.trace[0]["loss"] == pytest.approx(0.15)


# --- Fisher -----------------------------------------------------------------------------------

def test_diagonal_fisher_is_the_mean_squared_per_example_gradient():
    params = {"w": t(1, 2)}

    def example(x, y):
        return lambda p: 0.5 * ((p["w"] * x).sum() - y) ** 2  # gradient (x·w − y) x

    # residuals 1 and 2: gradients (1, 0) and (2, 2), squares (1, 0) and (4, 4)
    fisher = diagonal_fisher(params, [example(t(1, 0), 0.0), example(t(1, 1), 1.0)], progress=False)
    assert fisher["w"].tolist() == pytest.approx([2.5, 2.0])


def test_fisher_weighted_mean_with_known_fishers():
    vs = [{"w": t(1, 2, 3)}, {"w": t(3, 0, -3)}]
    fishers = [{"w": t(1, 0, 3)}, {"w": t(1, 0, 1)}]
    out = fisher_merge(vs, fishers, epsilon=1e-6)
    # (1·1 + 1·3)/2; no information: the plain mean (2 + 0)/2; (3·3 + 1·(−3))/4
    assert out["w"].tolist() == pytest.approx([2.0, 1.0, 1.5], abs=1e-6)


def test_fisher_coefficients_weight_each_model():
    vs = [{"w": t(1, 2, 3)}, {"w": t(3, 0, -3)}]
    fishers = [{"w": t(1, 0, 3)}, {"w": t(1, 0, 1)}]
    out = fisher_merge(vs, fishers, epsilon=1e-6, coefficients=[0.75, 0.25])
    # (3·1·1 + 1·1·3)/(3 + 1); no information: (3·2 + 1·0)/4; (3·3·3 + 1·1·(−3))/(9 + 1)
    assert out["w"].tolist() == pytest.approx([1.5, 1.5, 2.4], abs=1e-5)
    # equal coefficients cancel, exactly: the plain Fisher merge
    assert torch.equal(fisher_merge(vs, fishers, 1e-6, [0.5, 0.5])["w"], fisher_merge(vs, fishers, 1e-6)["w"])
    with pytest.raises(ValueError, match="a coefficient ≥ 0 per model"):
        fisher_merge(vs, fishers, 1e-6, [1.0])


def test_fisher_coefficient_draws_start_equal_then_sample_a_flat_dirichlet():
    draws = coefficient_draws(2, 4001, seed=3)
    assert len(draws) == 4001 and draws[0] == [0.5, 0.5]
    assert all(min(c) >= 0 and sum(c) == pytest.approx(1.0) for c in draws)
    # Dirichlet(1, 1): the first coefficient is uniform on [0, 1] (a normalised uniform pair is not:
    # its quarter-quantile sits at 0.25 only by chance)
    first = torch.tensor([c[0] for c in draws[1:]])
    for q in (0.1, 0.25, 0.5, 0.9):
        assert (first < q).double().mean().item() == pytest.approx(q, abs=0.025)
    assert coefficient_draws(2, 5, seed=3) == draws[:5] and coefficient_draws(2, 5, seed=4) != draws[:5]


# --- RegMean ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, expected", [(1.0, [4 / 11, 10 / 11]), (0.5, [25 / 47, 38 / 47])])
def test_regmean_closed_form_on_a_two_input_linear_layer(alpha, expected):
    """W (1 × 2), τ1 = (1, 0), τ2 = (0, 1), G1 = [[2, 1], [1, 1]], G2 = [[1, 0], [0, 3]].
    α = 1: [[3, 1], [1, 4]] x = G1 τ1ᵀ + G2 τ2ᵀ = (2, 4) → x = (4, 10)/11.
    α = 0.5: G1's off-diagonal halves: [[3, .5], [.5, 4]] x = (2, .5) + (0, 3) → (25, 38)/47."""
    vs = [{"w": t(1, 0).reshape(1, 2), "b": t(2)}, {"w": t(0, 1).reshape(1, 2), "b": t(4)}]
    grams = [{"w": t(2, 1, 1, 1).reshape(2, 2)}, {"w": t(1, 0, 0, 3).reshape(2, 2)}]
    out = regmean(vs, grams, alpha=alpha)
    assert out["w"].tolist() == [pytest.approx(expected)]
    assert out["b"].tolist() == [3.0]  # not a linear weight: averaged


def test_linear_grams_of_the_text_family_are_the_real_tokens_inputs(pico_model):
    from calm.config import ModelConfig
    from calm.stages.family import open_family

    family = open_family(ModelConfig(max_length=16), pico_model, device="cpu")
    batch = family.batch(family.preprocess(["red blue green", "sky"]), torch.tensor([0, 1]))
    grams = family.linear_grams(family.pretrained_state(), batch)
    with torch.inference_mode():
        hidden = family.module.embeddings(input_ids=batch["input_ids"])  # the first query layer's input
    x = hidden[batch["attention_mask"].bool()]
    assert x.shape[0] == int(batch["attention_mask"].sum()) < batch["input_ids"].numel()
    assert torch.allclose(grams["encoder.layer.0.attention.self.query.weight"], x.T @ x, atol=1e-4)
    assert grams["encoder.layer.0.intermediate.dense.weight"].shape == (16, 16)
    assert grams["encoder.layer.0.output.dense.weight"].shape == (32, 32)


# --- one list of names --------------------------------------------------------------------------

def test_registry_config_schema_and_cli_agree_on_the_method_names():
    from calm.cli import build_parser

    names = list(typing.get_args(BaselineName))
    assert list(METHODS) == names
    enum = json_schema()["$defs"]["BaselinesConfig"]["properties"]["methods"]["anyOf"][0]["items"]["enum"]
    assert enum == names
    merge = build_parser()._subparsers._group_actions[0].choices["merge-baseline"]
    method = next(a for a in merge._actions if a.dest == "method")
    assert list(method.choices) == names
    assert all(set(spec.needs) <= {"inputs", "head", "scores"} for spec in METHODS.values())
    assert all(callable(spec.fn) for spec in METHODS.values())


def test_each_data_driven_method_names_its_adapter_and_only_those_do():
    from calm.stages import baselines

    for name, spec in METHODS.items():
        assert bool(spec.needs) == bool(spec.adapter), name
        if spec.adapter:
            assert spec.adapter in baselines.ADAPTERS, name


# A data-free method added as docs/design.md §6.2 says: its module in calm.merging and one registry
# entry (a method with settings adds its section to BaselinesConfig too). The config, the schema,
# the CLI and the workflow's jobs and table rows take it up with nothing else changed.
TOY_METHOD = """
import sys, types
import torch
import calm.methods as methods

toy = types.ModuleType("calm.merging.toy")
toy.half_sum = lambda taus: {n: sum(t[n] for t in taus) / 2 for n in taus[0]}
sys.modules["calm.merging.toy"] = toy
methods.METHODS["toy_half_sum"] = methods.Method("toy:half_sum", "Toy (half sum)")

import typing
from calm.cli import build_parser
from calm.config.baselines import BaselineName, BaselinesConfig
from calm.config.files import json_schema

assert "toy_half_sum" in typing.get_args(BaselineName)
assert BaselinesConfig().methods[-1] == "toy_half_sum"
assert json_schema()["$defs"]["BaselinesConfig"]["properties"]["methods"]["anyOf"][0]["items"]["enum"][-1] == "toy_half_sum"
build_parser().parse_args(["merge-baseline", "--method", "toy_half_sum", "--models", "a", "--out", "b", "--pretrained", "p"])
tau = methods.METHODS["toy_half_sum"]([{"w": torch.tensor([2.0, 4.0])}, {"w": torch.tensor([6.0, -2.0])}])
assert tau["w"].tolist() == [4.0, 1.0]

from snakemake.cli import main
main(sys.argv[1:])
"""


def test_a_new_method_is_its_module_and_one_registry_entry(tmp_path):
    import subprocess
    import sys

    from pico_workflow import ROOT, planned_jobs

    proc = subprocess.run([sys.executable, "-c", TOY_METHOD, "all", "-n", "--directory", str(tmp_path), "-s",
                           str(ROOT / "Snakefile"), "--configfile", str(ROOT / "config/config.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    # the default's 16 baselines and 19 evaluations (test_workflow.py), each one more
    assert jobs["merge_baseline"] == 17 and jobs["evaluate"] == 20
    assert "results/eval/baseline_toy_half_sum.parquet" in proc.stdout + proc.stderr


def test_a_data_driven_method_without_its_files_names_what_is_missing(pico_model, tmp_path):
    from calm.config import ModelConfig
    from calm.stages.baselines import merge_baseline
    from calm.stages.family import open_family

    family = open_family(ModelConfig(max_length=16), pico_model, device="cpu")
    with pytest.raises(ValueError, match="method 'adamerging_task' needs per-task inputs, head"):
        merge_baseline(family, "adamerging_task", [pico_model, pico_model], tmp_path / "out")
    with pytest.raises(ValueError, match="task b: no head file given"):
        merge_baseline(family, "localize_stitch", [pico_model, pico_model], tmp_path / "out",
              tasks=[{"task": "a", "inputs": "x", "head": "y"}, {"task": "b", "inputs": "x"}])
    with pytest.raises(ValueError, match="unknown merging method 'dare'"):
        merge_baseline(family, "dare", [pico_model], tmp_path / "out")


def test_the_data_free_methods_off_the_pico_run_go_through_the_merge_stage(pico_model, tmp_path):
    """The methods the pico workflow leaves out (pico_workflow.PICO_METHODS) are data-free: the
    merge stage, called as its command calls it, writes θ0 + the method's τ as a model folder
    that transformers loads, with its summary. Together with the pico run: every method."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from calm.checkpoints import read_checkpoint_dir
    from calm.config import ModelConfig
    from calm.config.baselines import BaselinesConfig
    from calm.stages.baselines import merge_baseline
    from calm.stages.family import open_family
    from pico_workflow import PICO_METHODS

    off_run = [m for m in METHODS if m not in PICO_METHODS]
    assert off_run == ["weight_averaging", "consensus_ta", "consensus_ties", "tsv", "iso_c", "iso_cts", "cart"]
    assert all(not METHODS[m].needs and not METHODS[m].per_task for m in off_run)
    finetuned = []
    for i in range(3):  # three "fine-tuned" models: θ0 plus a seeded perturbation
        folder = tmp_path / f"ft{i}"
        shutil.copytree(pico_model, folder)
        weights = load_file(str(folder / "model.safetensors"))
        g = torch.Generator().manual_seed(i)
        save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in weights.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        finetuned.append(folder)
    theta0 = read_checkpoint_dir(pico_model)
    taus = [{k: w - theta0[k] for k, w in read_checkpoint_dir(f).items()} for f in finetuned]
    family = open_family(ModelConfig(max_length=16), pico_model, device="cpu")
    cfg = BaselinesConfig()
    name = "encoder.layer.0.attention.self.query.weight"
    for method in off_run:
        out = tmp_path / method
        merge_baseline(family, method, finetuned, out / "model", cfg, summary_out=out / "summary.json")
        AutoModel.from_pretrained(out / "model")
        assert json.loads((out / "summary.json").read_text())["method"] == method
        expected = theta0[name] + METHODS[method](taus, **METHODS[method].options(cfg))[name]
        assert torch.allclose(read_checkpoint_dir(out / "model")[name], expected, atol=1e-6), method
