"""Stage functions on the pico checkpoint: fine-tuning, checkpoints, heads, scoring."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from calm import artifacts
from calm.config import FinetuneConfig, ModelConfig
from calm.io import write_json, write_parquet
from calm.stages.prepare import build_head, preprocess
from calm.stages.family import open_family
from calm.stages.finetune import finetune
from calm.stages.score import score


@pytest.fixture(scope="module")
def family(pico_model):
    return open_family(ModelConfig(max_length=16, logit_scale=10.0), pico_model, device="cpu")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    texts = [f"{w} number {i}" for i, w in enumerate(["good", "bad"] * 12)]
    frame = pd.DataFrame({"idx": range(24), "text": texts, "label": [i % 2 for i in range(24)]})
    for split, rows in {"train": frame.iloc[:12], "pool": frame.iloc[12:18], "test": frame.iloc[18:]}.items():
        write_parquet(rows, folder / f"{split}.parquet")
    write_json({"name": "toy", "classes": ["good", "bad"], "prompt": "something {}"}, folder / "task.json")
    return folder


def test_dynamic_padding_cuts_a_batch_to_its_longest_text(family):
    cache = family.preprocess(["a b", "a b c d e f", "a"])
    assert cache["input_ids"].shape == (3, 16)
    batch = family.batch(cache, torch.tensor([0, 2]))
    # [CLS] a b [SEP] is the longest of the two: 4 tokens
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_head_rows_are_unit_prompt_embeddings(family, task_dir, tmp_path):
    build_head(family, task_dir, tmp_path / "head.safetensors")
    head = artifacts.read_head(tmp_path / "head.safetensors")
    assert head.shape == (2, 16)
    assert torch.allclose(head.norm(dim=1), torch.ones(2), atol=1e-5)


def test_finetuned_checkpoint_reloads_identically(family, task_dir, tmp_path):
    preprocess(family, task_dir, tmp_path / "inputs.safetensors")
    build_head(family, task_dir, tmp_path / "head.safetensors")
    cfg = FinetuneConfig(lr=1e-3, epochs=1, batch_size=4)
    finetune(family, tmp_path / "inputs.safetensors", tmp_path / "head.safetensors", cfg, tmp_path / "ft")
    reloaded = family.load_state(tmp_path / "ft")
    theta0 = family.pretrained_state()
    assert set(reloaded) == set(theta0)
    changed = [n for n in theta0 if not torch.equal(reloaded[n], theta0[n])]
    assert changed, "fine-tuning moved no tensor"
    # saving the reloaded tensors again gives bit-identical tensors
    family.save(reloaded, tmp_path / "again")
    again = family.load_state(tmp_path / "again")
    assert all(torch.equal(again[n], reloaded[n]) for n in reloaded)
    # and the saved folder is what transformers loads
    from transformers import AutoModel
    model = AutoModel.from_pretrained(tmp_path / "ft")
    assert torch.equal(dict(model.named_parameters())["encoder.layer.0.attention.self.query.weight"],
                       reloaded["encoder.layer.0.attention.self.query.weight"])


def test_score_writes_entropy_and_pseudo_labels_of_the_logits(family, task_dir, tmp_path, pico_model):
    preprocess(family, task_dir, tmp_path / "inputs.safetensors")
    build_head(family, task_dir, tmp_path / "head.safetensors")
    frame = score(family, pico_model, tmp_path / "inputs.safetensors", tmp_path / "head.safetensors",
                         4, tmp_path / "scores.parquet")
    assert frame["idx"].tolist() == list(range(12, 18))
    logits = torch.tensor(np.stack(frame["logits"].to_numpy()))
    p = logits.softmax(-1)
    assert torch.allclose(torch.tensor(frame["entropy"].to_numpy()).float(), -(p * p.log()).sum(-1), atol=1e-5)
    assert frame["pseudo_label"].tolist() == logits.argmax(-1).tolist()


@pytest.fixture(scope="module")
def val_task(family, task_dir, tmp_path_factory):
    """The toy task with a val split that task.json lists, encoded, and its head."""
    import json
    import shutil
    folder = tmp_path_factory.mktemp("val") / "task"
    shutil.copytree(task_dir, folder)
    write_parquet(pd.DataFrame({"idx": range(30, 38), "text": [f"{w} val {i}" for i, w in enumerate(["good", "bad"] * 4)],
                                "label": [0, 1] * 4}), folder / "val.parquet")
    meta = json.loads((folder / "task.json").read_text())
    write_json({**meta, "splits": ["train", "pool", "test", "val"]}, folder / "task.json")
    preprocess(family, folder, folder / "inputs.safetensors")
    build_head(family, folder, folder / "head.safetensors")
    return folder


def test_a_val_split_that_task_json_lists_is_encoded_with_the_others(val_task):
    val = artifacts.read_inputs(val_task / "inputs.safetensors", "val")
    assert val["idx"].tolist() == list(range(30, 38)) and val["label"].tolist() == [0, 1] * 4
    assert artifacts.read_inputs(val_task / "inputs.safetensors", "test")["idx"].tolist() == list(range(18, 24))


@pytest.fixture(scope="module")
def val_file(family, val_task, tmp_path_factory):
    """The toy task's val split alone, as fetch_val and prepare_val write it."""
    import json
    import shutil
    from calm.stages.prepare import prepare_val
    folder = tmp_path_factory.mktemp("val_only")
    shutil.copyfile(val_task / "val.parquet", folder / "val.parquet")
    meta = json.loads((val_task / "task.json").read_text())
    write_json({**meta, "splits": ["val"]}, folder / "task.json")
    prepare_val(family, folder, folder / "val.safetensors")
    return folder / "val.safetensors"


def test_prepare_val_encodes_a_val_folder_alone(val_file):
    val = artifacts.read_inputs(val_file, "val")
    assert val["idx"].tolist() == list(range(30, 38)) and val["label"].tolist() == [0, 1] * 4
    with pytest.raises(ValueError, match="holds no 'test' split"):
        artifacts.read_inputs(val_file, "test")


def test_chosen_scale_is_the_best_on_validation_and_the_first_on_a_tie():
    from calm.metrics import chosen_scale
    assert chosen_scale({0.2: 0.5, 0.3: 0.7, 0.4: 0.7, 0.5: 0.6}) == 0.3
    assert chosen_scale({1.4: 0.9, 0.6: 0.1}) == 1.4
    # 445 of 600 val examples right both times, averaged over tasks in two orders: a tie
    assert 74.16666666666666 != 74.16666666666667
    assert chosen_scale({0.2: 74.16666666666666, 0.3: 74.16666666666667}) == 0.2
    with pytest.raises(ValueError, match="grid is empty"):
        chosen_scale({})


def test_a_scale_chosen_on_validation_rescales_the_merge_it_is_given(family, val_task, val_file, tmp_path):
    """A 'merge' θ0 + 0.5 d (d: a fixed random direction) evaluated at ×0, ×1, ×4: the curve
    holds the val accuracy of θ0 + g d built directly, and the test predictions are those of
    θ0 + g* d at the best g."""
    import json

    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_validated
    from calm.stages.family import predictions
    theta0 = family.pretrained_state()
    gen = torch.Generator().manual_seed(0)
    d = {n: 0.5 * torch.randn(t.shape, generator=gen) * t.float().std().clamp(min=1e-3) for n, t in theta0.items()}
    family.save({n: theta0[n] + 0.5 * d[n] for n in theta0}, tmp_path / "merged")
    files = {"toy": val_task / "inputs.safetensors"}, {"toy": val_task / "head.safetensors"}
    # the val split from its own file (prepare_val's), the test split from the task's inputs
    summary = evaluate_validated(family, tmp_path / "merged", 0.5, [0.0, 1.0, 4.0], {"toy": val_file}, *files, 16,
                                 tmp_path / "out.parquet", tmp_path / "curve.json")

    def direct(g, split):
        params = {n: theta0[n] + g * d[n] for n in theta0}
        return predictions(family, params, "toy", *(f["toy"] for f in files), 16, split=split)

    by_hand = {g: 100 * average(accuracy(direct(g, "val"))) for g in (0.0, 1.0, 4.0)}
    assert {r["scale"]: r["accuracy"] for r in summary["val_accuracy"]} == pytest.approx(by_hand)
    best = max(by_hand, key=lambda g: (by_hand[g], -g))
    assert summary["chosen"] == best and json.loads((tmp_path / "curve.json").read_text())["chosen"] == best
    assert summary["val_examples"] == {"toy": 8}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), direct(best, "test"))


def test_an_option_grid_merges_once_per_value_and_chooses_it_with_the_scale(family, val_task, val_file, tmp_path):
    """TIES over two 'fine-tuned' models θ0 + d1, θ0 + d2 with k ∈ {0.1, 1} and λ ∈ {0.25, 1}: each
    k's merge at λ = 1, rescaled; the curve holds the val accuracy of every (k, λ), each computed
    here from that merge directly, the pair chosen is the best (the first on a tie), and the test
    predictions are that pair's."""
    from calm.config.baselines import BaselinesConfig
    from calm.merging.ties import ties
    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_validated
    from calm.stages.family import predictions
    theta0, ds, _ = _finetuned_directions(family, tmp_path, seed=1)
    cfg = BaselinesConfig(ties={"k": 0.2, "lam": 0.3, "merge": "sum"})
    files = {"toy": val_task / "inputs.safetensors"}, {"toy": val_task / "head.safetensors"}
    summary = evaluate_validated(family, None, 0.3, [0.25, 1.0], {"toy": val_file}, *files, 16,
                                 tmp_path / "out.parquet", tmp_path / "curve.json", method="ties",
                                 model_dirs=[tmp_path / "ft0", tmp_path / "ft1"], cfg=cfg, option_grid=[0.1, 1.0])

    def direct(k, g, split, inputs):
        merged = ties(ds, k=k, lam=1.0, merge="sum")
        params = {n: theta0[n] + g * merged[n] for n in theta0}
        return predictions(family, params, "toy", inputs, files[1]["toy"], 16, split=split)

    pairs_ = [(k, g) for k in (0.1, 1.0) for g in (0.25, 1.0)]
    by_hand = {(k, g): 100 * average(accuracy(direct(k, g, "val", val_file))) for k, g in pairs_}
    assert {(r["k"], r["scale"]): r["accuracy"] for r in summary["val_accuracy"]} == pytest.approx(by_hand)
    best = max(pairs_, key=lambda kg: (by_hand[kg], -pairs_.index(kg)))
    # a choice to make: one pair ahead of the rest, not the grid's first (k = 1, λ = 0.25 here)
    assert sorted(by_hand.values())[-2] < by_hand[best] and best != pairs_[0]
    assert (summary["option"], summary["chosen_option"], summary["chosen"]) == ("k", *best)
    assert summary["val_examples"] == {"toy": 8}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"),
                                  direct(*best, "test", files[0]["toy"]))
    with pytest.raises(ValueError, match="an option grid needs a method with an option \\('tsv' has none\\)"):
        evaluate_validated(family, None, 1.0, [1.0], {"toy": val_file}, *files, 16, tmp_path / "o.parquet",
                           tmp_path / "c.json", method="tsv", model_dirs=[tmp_path / "ft0"], cfg=cfg, option_grid=[0.5])


def test_consensus_chooses_each_tasks_tall_lambda_on_its_own_val_split(family, val_task, val_file, tmp_path):
    """Consensus TA over two 'fine-tuned' models θ0 + d1, θ0 + d2, tasks 'toy' and 'twin' (the same
    val rows): for each task t and λ_t ∈ grid, θ0 + m_t ∘ (d1 + d2), m_t = |d_t| > λ_t |d1 + d2 − d_t|,
    built here from the formula, is scored on t's val split; each task keeps its best λ_t (the
    first on a tie), the consensus mask is m_toy ∧ m_twin (min_tasks 2) at those λ_t, and λ is
    then chosen over the merge rescaled; the test predictions are that model's."""
    from calm.config.baselines import BaselinesConfig
    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_validated
    from calm.stages.family import predictions
    theta0, ds, _ = _finetuned_directions(family, tmp_path, seed=5)
    tasks = ("toy", "twin")
    val = {t: val_file for t in tasks}
    inputs, heads = ({t: val_task / f for t in tasks} for f in ("inputs.safetensors", "head.safetensors"))
    total = {n: ds[0][n] + ds[1][n] for n in theta0}
    values, grid = [0.2, 1.0, 3.0], [0.25, 1.0]

    def mask(i, lam):
        return {n: ds[i][n].abs() > lam * (total[n] - ds[i][n]).abs() for n in theta0}

    def score(task, params):
        return 100 * average(accuracy(predictions(family, params, task, val[task], heads[task], 16, split="val")))

    by_hand = {(t, v): score(t, {n: theta0[n] + total[n] * m.float() for n, m in mask(i, v).items()})
               for i, t in enumerate(tasks) for v in values}
    chosen = {t: max(values, key=lambda v: (by_hand[(t, v)], -values.index(v))) for t in tasks}
    # a choice to make: the two tasks keep different values
    assert chosen["toy"] != chosen["twin"]
    both = {n: mask(0, chosen["toy"])[n] & mask(1, chosen["twin"])[n] for n in theta0}
    merged = {n: total[n] * both[n].float() for n in theta0}
    curve = {g: average({t: score(t, {n: theta0[n] + g * merged[n] for n in theta0}) for t in tasks}) for g in grid}
    best = max(grid, key=lambda g: (curve[g], -grid.index(g)))

    cfg = BaselinesConfig(consensus={"tall_lambda": 0.4, "min_tasks": 2, "lam": 0.3})
    summary = evaluate_validated(family, None, 0.3, grid, val, inputs, heads, 16, tmp_path / "out.parquet",
                                 tmp_path / "curve.json", method="consensus_ta",
                                 model_dirs=[tmp_path / "ft0", tmp_path / "ft1"], cfg=cfg, option_grid=values)
    assert summary["option"] == "tall_lambda" and summary["chosen_option"] == chosen
    assert {(r["task"], r["tall_lambda"]): r["accuracy"] for r in summary["option_val_accuracy"]} \
        == pytest.approx(by_hand)
    assert {r["scale"]: r["accuracy"] for r in summary["val_accuracy"]} == pytest.approx(curve)
    assert summary["chosen"] == best
    params = {n: theta0[n] + best * merged[n] for n in theta0}
    expected = pd.concat([predictions(family, params, t, inputs[t], heads[t], 16) for t in tasks], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), expected)
    with pytest.raises(ValueError, match="1 fine-tuned models for the val splits of 2 tasks"):
        evaluate_validated(family, None, 0.3, grid, val, inputs, heads, 16, tmp_path / "o.parquet",
                           tmp_path / "c.json", method="consensus_ta", model_dirs=[tmp_path / "ft0"], cfg=cfg,
                           option_grid=values)


def test_fisher_chosen_on_validation_searches_its_coefficients_over_one_set_of_fishers(family, val_task, val_file,
                                                                                       tmp_path):
    """Fisher over two 'fine-tuned' models θ0 + d1, θ0 + d2 (tasks 'toy' and 'twin', the same rows),
    each Fisher on the 6 pool rows with hand-set pseudo-labels: F_t, the mean squared gradient of
    −log p(pseudo-label) at θ0 + d_t, computed here with autograd; for each coefficient draw c,
    θ0 + Σ c_t (F_t + ε) d_t / Σ c_t (F_t + ε) is scored on the val splits, the best c (the first
    on a tie) is kept, and the test predictions are its model's."""
    import torch.nn.functional as F

    from calm.config.baselines import BaselinesConfig
    from calm.merging.fisher import coefficient_draws
    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_validated
    from calm.stages.family import predictions
    theta0, ds, dirs = _finetuned_directions(family, tmp_path, seed=1)
    tasks = ("toy", "twin")
    val = {t: val_file for t in tasks}
    inputs, heads = ({t: val_task / f for t in tasks} for f in ("inputs.safetensors", "head.safetensors"))
    pool = artifacts.read_inputs(inputs["toy"], "pool")
    labels = [[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 1]]  # each model's pseudo-labels of the 6 pool rows
    for t, y in zip(tasks, labels):
        write_parquet(pd.DataFrame({"idx": pool["idx"].tolist(), "pseudo_label": y}), tmp_path / f"{t}.parquet")

    def fisher(d, y):
        params = {n: (theta0[n] + d[n]).detach().requires_grad_(True) for n in theta0}
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for row in range(6):
            with family.autocast():
                logits = family.logits(params, family.batch(pool, torch.tensor([row])),
                                       artifacts.read_head(heads["toy"])).float()
            grads = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([y[row]])), list(params.values()),
                                        allow_unused=True)
            for n, g in zip(params, grads):
                if g is not None:
                    total[n] += g.float() ** 2
        return {n: f / 6 for n, f in total.items()}

    fishers, eps = [fisher(d, y) for d, y in zip(ds, labels)], 1e-6
    draws = coefficient_draws(2, 6, seed=0)

    def model(c):
        w = [{n: c[i] * (fishers[i][n] + eps) for n in theta0} for i in range(2)]
        return {n: theta0[n] + (w[0][n] * ds[0][n] + w[1][n] * ds[1][n]) / (w[0][n] + w[1][n]) for n in theta0}

    def score(params):
        return average({t: 100 * average(accuracy(predictions(family, params, t, val[t], heads[t], 16, split="val")))
                        for t in tasks})

    by_hand = [score(model(c)) for c in draws]
    best = max(range(len(draws)), key=lambda i: (by_hand[i], -i))
    assert best != 0  # a choice to make: a draw ahead of equal coefficients

    cfg = BaselinesConfig(fisher={"n_examples": 6, "epsilon": eps, "seed": 0})
    summary = evaluate_validated(family, None, 1.0, [1.0], val, inputs, heads, 16, tmp_path / "out.parquet",
                                 tmp_path / "curve.json", method="fisher", model_dirs=dirs, cfg=cfg, option_draws=6,
                                 scores={t: tmp_path / f"{t}.parquet" for t in tasks})
    assert [r["coefficients"] for r in summary["val_accuracy"]] == draws
    assert [r["accuracy"] for r in summary["val_accuracy"]] == pytest.approx(by_hand)
    assert summary["chosen_option"] == dict(zip(tasks, draws[best])) and summary["chosen"] == 1.0
    assert summary["examples"] == {"toy": 6, "twin": 6}
    expected = pd.concat([predictions(family, model(draws[best]), t, inputs[t], heads[t], 16) for t in tasks],
                         ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), expected)
    with pytest.raises(ValueError, match="method 'fisher', task toy: no scores file given"):
        evaluate_validated(family, None, 1.0, [1.0], val, inputs, heads, 16, tmp_path / "o.parquet",
                           tmp_path / "c.json", method="fisher", model_dirs=dirs, cfg=cfg, option_draws=6)
    with pytest.raises(ValueError, match="'ties' lists its k values \\(--option-grid\\); it draws none"):
        evaluate_validated(family, None, 1.0, [1.0], val, inputs, heads, 16, tmp_path / "o.parquet",
                           tmp_path / "c.json", method="ties", model_dirs=dirs, cfg=cfg, option_draws=6)


def _finetuned_directions(family, tmp_path, seed):
    """Two 'fine-tuned' models θ0 + d1, θ0 + d2 saved as ft0, ft1 (d: large random directions):
    θ0, [d1, d2] and their folders."""
    theta0 = family.pretrained_state()
    gen = torch.Generator().manual_seed(seed)
    ds = [{n: 3 * torch.randn(t.shape, generator=gen) * t.float().std().clamp(min=1e-3) for n, t in theta0.items()}
          for _ in range(2)]
    for i, d in enumerate(ds):
        family.save({n: theta0[n] + d[n] for n in theta0}, tmp_path / f"ft{i}")
    return theta0, ds, [tmp_path / "ft0", tmp_path / "ft1"]


def _two_finetuned(family, tmp_path, seed=2):
    theta0, _, dirs = _finetuned_directions(family, tmp_path, seed)
    return theta0, dirs


def test_cart_chosen_on_validation_is_cart_merged_at_the_chosen_lambda(family, val_task, val_file, tmp_path):
    """CART is τ̄ + λ·C, affine in λ: from its model at λ = 2 and weight averaging's (its origin),
    the val accuracy at λ ∈ {0, 1, 3} is that of CART merged anew at each λ, and the test
    predictions are CART's at the λ chosen. Rescaled from θ0 instead, λ = 0 would be θ0 itself."""
    from calm.merging.cart import cart
    from calm.merging.weight_averaging import weight_averaging
    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_validated
    from calm.stages.family import predictions, task_vectors
    theta0, dirs = _two_finetuned(family, tmp_path)
    taus = list(task_vectors(family, theta0, dirs))
    settings = {"rank_ratio": 0.5, "exclude": []}
    family.save({n: theta0[n] + v for n, v in cart(taus, lam=2.0, **settings).items()}, tmp_path / "cart")
    family.save({n: theta0[n] + v for n, v in weight_averaging(taus).items()}, tmp_path / "wa")
    files = {"toy": val_task / "inputs.safetensors"}, {"toy": val_task / "head.safetensors"}
    grid = [0.0, 1.0, 3.0]

    def direct(lam, split, inputs):
        params = {n: theta0[n] + v for n, v in cart(taus, lam=lam, **settings).items()}
        return predictions(family, params, "toy", inputs, files[1]["toy"], 16, split=split)

    by_hand = {g: 100 * average(accuracy(direct(g, "val", val_file))) for g in grid}
    summary = evaluate_validated(family, tmp_path / "cart", 2.0, grid, {"toy": val_file}, *files, 16,
                                 tmp_path / "out.parquet", tmp_path / "curve.json", origin_dir=tmp_path / "wa")
    assert {r["scale"]: r["accuracy"] for r in summary["val_accuracy"]} == pytest.approx(by_hand)
    best = max(grid, key=lambda g: (by_hand[g], -grid.index(g)))
    assert summary["chosen"] == best and summary["origin"] == str(tmp_path / "wa")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), direct(best, "test", files[0]["toy"]))
    # λ = 0 from weight averaging's model, not θ0's
    wa_val = 100 * average(accuracy(predictions(family, family.load_state(tmp_path / "wa"), "toy", val_file,
                                                files[1]["toy"], 16, split="val")))
    assert by_hand[0.0] == pytest.approx(wa_val)


def test_calm_base_cart_chooses_its_lambda_from_the_weight_average(family, val_task, tmp_path):
    """calm.base cart with its λ chosen on validation: the base written is CART of S's vectors at
    the chosen λ, τ̄ + λ*·C, as CART itself computes it at λ*."""
    from calm.config.baselines import BaselinesConfig
    from calm.merging.cart import cart
    from calm.metrics import accuracy, average
    from calm.stages.family import predictions, task_vectors
    from calm.stages.merge import calm_base
    theta0, dirs = _two_finetuned(family, tmp_path, seed=3)
    taus = list(task_vectors(family, theta0, dirs))
    cfg = BaselinesConfig(cart={"lam": 2.0, "rank_ratio": 0.5, "exclude": []})
    inputs, head = val_task / "inputs.safetensors", val_task / "head.safetensors"
    grid = [0.5, 2.0, 4.0]
    by_hand = {g: 100 * average(accuracy(predictions(
        family, {n: theta0[n] + v for n, v in cart(taus, lam=g, rank_ratio=0.5, exclude=[]).items()},
        "toy", inputs, head, 16, split="val"))) for g in grid}
    record = calm_base(family, dirs, 0.3, tmp_path / "base.safetensors", base="cart", cfg=cfg,
                       validation={"toy": (inputs, head)}, grid=grid, batch_size=16)
    best = max(grid, key=lambda g: (by_hand[g], -grid.index(g)))
    assert {r["scale"]: r["accuracy"] for r in record["val_accuracy"]} == pytest.approx(by_hand)
    assert record["chosen"] == best and record["scale"] == 2.0
    written = artifacts.read_vector(tmp_path / "base.safetensors")
    expected = cart(taus, lam=best, rank_ratio=0.5, exclude=[])
    assert all(torch.allclose(written[n], expected[n], atol=1e-5) for n in expected)


@pytest.mark.parametrize("base, scale_of", [("task_arithmetic", lambda lam, a: lam), ("tsv", lambda lam, a: a)])
def test_calm_base_chooses_its_scale_on_the_val_splits_of_s(family, val_task, tmp_path, base, scale_of):
    """Two 'fine-tuned' models θ0 + d1, θ0 + d2 and the merge m of d1, d2 at its configured scale
    s (λ = 0.3 for task arithmetic, α = 0.7 for TSV): the base written is g*·m/s, g* the grid
    value whose θ0 + g·m/s has the best val accuracy, computed here directly."""
    from calm.config.baselines import BaselinesConfig
    from calm.merging.task_arithmetic import task_arithmetic
    from calm.merging.tsv import tsv_merge
    from calm.metrics import accuracy, average
    from calm.stages.family import predictions, task_vectors
    from calm.stages.merge import calm_base
    theta0 = family.pretrained_state()
    gen = torch.Generator().manual_seed(1)
    ds = [{n: torch.randn(t.shape, generator=gen) * t.float().std().clamp(min=1e-3) for n, t in theta0.items()}
          for _ in range(2)]
    for i, d in enumerate(ds):
        family.save({n: theta0[n] + d[n] for n in theta0}, tmp_path / f"ft{i}")
    cfg = BaselinesConfig(tsv={"alpha": 0.7})
    scale = scale_of(0.3, 0.7)
    taus = list(task_vectors(family, theta0, [tmp_path / "ft0", tmp_path / "ft1"]))  # d up to rounding
    merged = task_arithmetic(taus, lam=0.3) if base == "task_arithmetic" else tsv_merge(taus, alpha=0.7)
    direction = {n: v / scale for n, v in merged.items()}
    grid = [0.5, 1.0, 2.0]
    inputs, head = val_task / "inputs.safetensors", val_task / "head.safetensors"
    by_hand = {g: 100 * average(accuracy(predictions(family, {n: theta0[n] + g * direction[n] for n in theta0},
                                                     "toy", inputs, head, 16, split="val"))) for g in grid}
    record = calm_base(family, [tmp_path / "ft0", tmp_path / "ft1"], 0.3, tmp_path / "base.safetensors", base=base,
                       cfg=cfg, validation={"toy": (inputs, head)}, grid=grid, batch_size=16)
    best = max(by_hand, key=lambda g: (by_hand[g], -grid.index(g)))
    assert {r["scale"]: r["accuracy"] for r in record["val_accuracy"]} == pytest.approx(by_hand)
    assert record["chosen"] == best and record["scale"] == pytest.approx(scale)
    written = artifacts.read_vector(tmp_path / "base.safetensors")
    assert all(torch.allclose(written[n], best * direction[n], atol=1e-6) for n in theta0)
    # without val splits the base is the merge at its configured scale
    calm_base(family, [tmp_path / "ft0", tmp_path / "ft1"], 0.3, tmp_path / "fixed.safetensors", base=base, cfg=cfg)
    fixed = artifacts.read_vector(tmp_path / "fixed.safetensors")
    assert all(torch.allclose(fixed[n], merged[n], atol=1e-6) for n in theta0)


def test_calm_base_command_takes_the_val_splits_of_s(family, val_task, tmp_path, pico_model):
    """`calm-base --val TASK=INPUTS,HEAD --grid`: τ1 + τ2 = (3, −1, 2) on one tensor's first
    entries, so the base written is g* (3, −1, 2), g* the grid value the recorded curve puts first."""
    import json

    from safetensors import safe_open

    from calm.cli import main
    theta0 = family.pretrained_state()
    name = next(n for n, t in theta0.items() if t.dim() == 1 and t.numel() >= 3)
    models = []
    for task, delta in (("one", [1.0, -2.0, 3.0]), ("two", [2.0, 1.0, -1.0])):
        params = {n: t.detach().clone() for n, t in theta0.items()}
        params[name][:3] += torch.tensor(delta)
        family.save(params, tmp_path / task)
        models.append(str(tmp_path / task))
    out = tmp_path / "base.safetensors"
    assert main(["calm-base", "--pretrained", str(pico_model), "--model-max-length", "16", "--model-logit-scale", "10",
                 "--device", "cpu", "--lam", "0.3", "--models", *models, "--out", str(out), "--grid", "0.5,2",
                 "--val", f"toy={val_task / 'inputs.safetensors'},{val_task / 'head.safetensors'}",
                 "--batch-size", "16"]) == 0
    with safe_open(str(out), "pt") as f:
        record = json.loads(f.metadata()["meta"])["chosen_on_validation"]
    curve = {r["scale"]: r["accuracy"] for r in record["val_accuracy"]}
    assert list(curve) == [0.5, 2.0] and record["scale"] == 0.3 and record["val_examples"] == {"toy": 8}
    assert record["chosen"] == max(curve, key=lambda g: (curve[g], -g))
    tau = artifacts.read_vector(out)
    assert torch.allclose(tau[name][:3], record["chosen"] * torch.tensor([3.0, -1.0, 2.0]), atol=1e-5)


def test_preprocess_rejects_a_label_outside_the_head(family, task_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "pool", "test"):
        frame = pd.read_parquet(task_dir / f"{split}.parquet")
        if split == "test":
            frame.loc[frame.index[0], "label"] = 5
        write_parquet(frame, bad / f"{split}.parquet")
    (bad / "task.json").write_text((task_dir / "task.json").read_text())
    with pytest.raises(ValueError, match="label 5 is outside the 2 classes"):
        preprocess(family, bad, tmp_path / "x.safetensors")


def test_checkpoint_with_a_wrong_shape_names_the_tensor(family, tmp_path, pico_model):
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(pico_model / "model.safetensors"))
    name = "encoder.layer.1.output.dense.weight"
    tensors[name] = torch.zeros(3, 3)
    folder = tmp_path / "broken"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=name):
        family.load_state(folder)
