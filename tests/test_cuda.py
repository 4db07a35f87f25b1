"""Each GPU stage on CUDA against the same stage on the CPU (`pytest -m cuda`; skipped where
torch sees no CUDA device, so the ordinary suite passes over them).

Every stage is fed the same CPU-made files (pico BERT, three tiny tasks) and run twice, on the
CPU in fp32 and on CUDA, so that a difference belongs to that stage alone. The tolerances:
- tokenising does not touch the device: identical inputs;
- one forward pass in fp32 (heads, scores, evaluation): 1e-4 absolute on unit-norm features and
  logits, far above fp32 kernel differences (~1e-6) and far below anything that changes a
  prediction that is not a tie;
- closed-form merges (averages, TIES, SVD-based TSV / Iso / EMR): the merged vector within 1e-4
  of the CPU's, relative to the vector's norm (SVDs on the two devices agree to ~1e-6);
- learned merges and the mask step: optimisation amplifies rounding, so they are compared on
  what they produce (relative vector error 5e-2 after the pico's few steps; the CALM mask's
  entries agreeing on 99 %, the loss trace within 5e-2), fp32 and bf16 autocast alike.
Every figure measured is also written to $CALM_CUDA_REPORT (JSON) when it is set, with the mask
step's peak GPU memory, so that the device check can report them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from calm import artifacts
from calm.config import BaselinesConfig, CalmConfig, FinetuneConfig, ModelConfig
from calm.io import write_json, write_parquet
from calm.methods import METHODS
from calm.stages.baselines import merge_baseline
from calm.stages.evaluate import evaluate
from calm.stages.family import open_family
from calm.stages.finetune import finetune
from calm.stages.merge import calm_base, calm_step
from calm.stages.prepare import build_head, preprocess
from calm.stages.score import score, select

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")]

MODEL = ModelConfig(max_length=16, logit_scale=10.0)
TASKS = {"colour": (["red", "blue"], ["crimson fire brick tomato", "sky ocean navy azure"]),
         "animal": (["cat", "dog"], ["meow purr whiskers kitten", "bark woof puppy leash"]),
         "mood": (["sad", "happy"], ["tears gloom grief sorrow", "joy smile laugh delight"])}
BASELINES = BaselinesConfig(localize_stitch={"n_shot": 8, "epochs": 2, "batch_size": 4, "lr": 1e6},
                            adamerging={"steps": 2, "batch_size": 4, "batches_per_task": 1},
                            fisher={"n_examples": 4}, regmean={"n_examples": 8, "batch_size": 4},
                            wudi={"steps": 3}, adarank={"steps": 2, "batch_size": 4})
LEARNED = {"localize_stitch", "adamerging_task", "adamerging_layer", "fisher", "regmean", "wudi", "adarank"}
REPORT: dict = {}


def record(key: str, value) -> None:
    REPORT[key] = value
    path = os.environ.get("CALM_CUDA_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")


def families(pico_model, precision: str = "fp32"):
    return (open_family(MODEL, pico_model, device="cpu", precision="fp32"),
            open_family(MODEL, pico_model, device="cuda", precision=precision))


def relative_error(a: dict, b: dict, ref: dict) -> float:
    num = sum(float((a[n].double().cpu() - b[n].double().cpu()).pow(2).sum()) for n in ref)
    den = sum(float(ref[n].double().cpu().pow(2).sum()) for n in ref)
    return (num / max(den, 1e-30)) ** 0.5


@pytest.fixture(scope="module")
def made(tmp_path_factory, pico_model) -> dict:
    """On the CPU: each task's splits, inputs, head, fine-tuned model, scores and credible set."""
    root = tmp_path_factory.mktemp("cuda")
    cpu = open_family(MODEL, pico_model, device="cpu", precision="fp32")
    out = {}
    for name, (classes, vocab) in TASKS.items():
        data = root / "data" / name
        rows = [{"idx": i, "text": " ".join(vocab[i % 2].split()[(i + j) % 4] for j in range(3)) + f" item {i}",
                 "label": i % 2} for i in range(48)]
        frame = pd.DataFrame(rows)
        for split, part in {"train": frame.iloc[:24], "pool": frame.iloc[24:36], "test": frame.iloc[36:]}.items():
            write_parquet(part.reset_index(drop=True), data / f"{split}.parquet")
        write_json({"name": name, "classes": classes, "prompt": "a text about {}"}, data / "task.json")
        t = {"task": name, "data": data, "inputs": root / f"{name}.inputs.safetensors",
             "head": root / f"{name}.head.safetensors", "model": root / "ft" / name,
             "scores": root / f"{name}.scores.parquet", "credible": root / f"{name}.credible.parquet"}
        preprocess(cpu, data, t["inputs"])
        build_head(cpu, data, t["head"])
        finetune(cpu, t["inputs"], t["head"], FinetuneConfig(lr=1e-3, epochs=1, batch_size=8), t["model"])
        score(cpu, t["model"], t["inputs"], t["head"], 16, t["scores"])
        select(t["scores"], "cb_ems", 0.9, 0, t["credible"])
        out[name] = t
    return {"root": root, "tasks": out}


def test_preprocess_and_heads_agree(made, pico_model, tmp_path):
    _, gpu = families(pico_model)
    t = made["tasks"]["colour"]
    preprocess(gpu, t["data"], tmp_path / "inputs.safetensors")
    for split in ("train", "pool", "test"):
        a, b = artifacts.read_inputs(t["inputs"], split), artifacts.read_inputs(tmp_path / "inputs.safetensors", split)
        assert all(torch.equal(a[k], b[k]) for k in a), split
    build_head(gpu, t["data"], tmp_path / "head.safetensors")
    diff = float((artifacts.read_head(t["head"]) - artifacts.read_head(tmp_path / "head.safetensors")).abs().max())
    record("head_max_abs_diff", diff)
    assert diff < 1e-4


def test_finetune_agrees(made, pico_model, tmp_path):
    cpu, gpu = families(pico_model)
    t = made["tasks"]["mood"]
    finetune(gpu, t["inputs"], t["head"], FinetuneConfig(lr=1e-3, epochs=1, batch_size=8), tmp_path / "ft")
    theta0 = cpu.pretrained_state()
    a, b = cpu.load_state(t["model"]), cpu.load_state(tmp_path / "ft")
    tau = {n: a[n] - theta0[n] for n in theta0}
    err = relative_error(a, b, tau)
    record("finetune_relative_error", err)
    assert err < 5e-2


def test_score_and_evaluate_agree(made, pico_model, tmp_path):
    cpu, gpu = families(pico_model)
    t = made["tasks"]["animal"]
    scored = score(gpu, t["model"], t["inputs"], t["head"], 16, tmp_path / "scores.parquet")
    ref = pd.read_parquet(t["scores"])
    logit_diff = max(float(abs(x - y).max()) for x, y in zip(ref["logits"], scored["logits"]))
    record("score_logits_max_abs_diff", logit_diff)
    assert logit_diff < 1e-4
    assert (ref["pseudo_label"].to_numpy() == scored["pseudo_label"].to_numpy()).all()
    models = {t["task"]: t["model"]}
    a = evaluate(cpu, models, {t["task"]: t["inputs"]}, {t["task"]: t["head"]}, 16, tmp_path / "cpu.parquet")
    b = evaluate(gpu, models, {t["task"]: t["inputs"]}, {t["task"]: t["head"]}, 16, tmp_path / "gpu.parquet")
    assert list(a.columns) == list(b.columns)
    agree = float((a["pred"].to_numpy() == b["pred"].to_numpy()).mean())
    record("evaluate_prediction_agreement", agree)
    assert agree == 1.0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_baseline_merge_agrees(made, pico_model, tmp_path, method):
    cpu, gpu = families(pico_model)
    tasks = [{"task": t["task"], "inputs": t["inputs"], "head": t["head"], "scores": t["scores"]}
             for t in made["tasks"].values()]
    dirs = [t["model"] for t in made["tasks"].values()]
    merge_baseline(cpu, method, dirs, tmp_path / "cpu", BASELINES, tasks)
    merge_baseline(gpu, method, dirs, tmp_path / "gpu", BASELINES, tasks)
    theta0 = cpu.pretrained_state()
    if METHODS[method].per_task:
        pairs = [(tmp_path / "cpu" / d.name, tmp_path / "gpu" / d.name) for d in dirs]
    else:
        pairs = [(tmp_path / "cpu", tmp_path / "gpu")]
    errs = []
    for a_dir, b_dir in pairs:
        a, b = cpu.load_state(a_dir), cpu.load_state(b_dir)
        errs.append(relative_error(a, b, {n: a[n] - theta0[n] for n in theta0}))
    record(f"merge_{method}_relative_error", max(errs))
    assert max(errs) < (5e-2 if method in LEARNED else 1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_calm_step_agrees(made, pico_model, tmp_path, precision):
    cpu, gpu = families(pico_model, precision)
    assert gpu.bf16 == (precision == "bf16")
    tasks = list(made["tasks"].values())
    calm_base(cpu, [t["model"] for t in tasks[:2]], 0.3, tmp_path / "base.safetensors")
    visible = [{k: t[k] for k in ("task", "inputs", "head", "credible")} for t in tasks]
    cfg = CalmConfig(sequential=["mood"], iterations=5, batch_size=8, batches_per_task=1, lr=1e6,
                     checkpoint_every=0)
    runs = {}
    for name, family in (("cpu", cpu), ("cuda", gpu)):
        if name == "cuda":
            torch.cuda.reset_peak_memory_stats()
        calm_step(family, tmp_path / "base.safetensors", tasks[-1]["model"], visible, cfg, 1, tmp_path / name)
        if name == "cuda":
            record(f"calm_step_{precision}_peak_gpu_mb", torch.cuda.max_memory_allocated() / 2**20)
        runs[name] = (artifacts.read_mask(tmp_path / name / "mask.safetensors"),
                      pd.read_csv(tmp_path / name / "trace.csv"))
    (ma, ta), (mb, tb) = runs["cpu"], runs["cuda"]
    same = sum(int((ma[n] == mb[n]).sum()) for n in ma) / sum(ma[n].numel() for n in ma)
    loss_gap = float((ta["loss"] - tb["loss"]).abs().max() / ta["loss"].abs().max())
    record(f"calm_step_{precision}_mask_agreement", same)
    record(f"calm_step_{precision}_loss_relative_gap", loss_gap)
    assert same >= 0.99
    assert loss_gap < 5e-2
