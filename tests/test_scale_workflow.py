"""Paper-scale configs in the workflow: the CLIP pipeline end to end on pico checkpoints and
datasets through a config file as a user writes one, dry runs of every paper config (no hub:
the DAG is planned from the config alone), and the SLURM profile's GPU resources."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pico_workflow import ROOT, SNAKEMAKE, planned_jobs

PAPER_CONFIGS = {"clip-vit-b32": 8, "clip-vit-l14": 8, "clip-vit-b32-openclip": 8, "roberta-12": 12}


def dry_run(config: Path, workdir: Path, *extra: str, env: dict | None = None) -> str:
    proc = subprocess.run(SNAKEMAKE + ["-n", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                                       "--configfile", str(config), *extra],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_dry_run_plans_every_job_without_the_hub(name, tmp_path):
    t = PAPER_CONFIGS[name]
    baselines = 15 if name == "clip-vit-b32-openclip" else 16  # every baseline but TA (open_clip: no RegMean)
    out = dry_run(ROOT / "config" / f"{name}.yaml", tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert planned_jobs(out) == {
        "fetch_model": 1, "fetch_finetuned": t, "fetch_data": t, "prepare": t, "score": t, "select": t,
        "calm_base": 1, "calm_step": 2, "calm_model": 1, "evaluate_task_arithmetic": 1,
        # the baselines' rows, and task arithmetic's model at the config's λ
        "merge_baseline": baselines + 1, "evaluate": 3 + baselines, "table": 1, "all": 1}


SLURM_ENV = {"SLURM_ACCOUNT": "acct", "SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu", "SLURM_GPU_MODEL": "a100"}
needs_slurm_plugin = pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                                        reason="snakemake-executor-plugin-slurm is not installed "
                                               "(pip install -r requirements.txt)")


def planned_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the resources of each of its jobs, from a dry run's job blocks."""
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        line = next((ln for ln in block.splitlines() if ln.strip().startswith("resources:")), "")
        items = line.strip().removeprefix("resources:").split(", ")
        jobs.setdefault(rule, []).append(dict(item.strip().split("=", 1) for item in items if "=" in item))
    return jobs


@needs_slurm_plugin
def test_slurm_profile_sends_every_gpu_job_to_the_gpu_partition(tmp_path):
    """Every job of every target that declares gpu=1 (merge_baseline, mask_parts, ablation_topk
    and benchmarks included) asks for the GPU partition and model; every other job for the CPU
    partition; and the profile sets no memory or run time of its own."""
    out = dry_run(ROOT / "config/config.yaml", tmp_path, "--workflow-profile", str(ROOT / "profiles/slurm"),
                  "all", "paper", "ablations", "benchmarks", env=SLURM_ENV)
    jobs = planned_resources(out)
    gpu_rules = {rule for rule, runs in jobs.items() if any(r.get("gpu") == "1" for r in runs)}
    assert gpu_rules == {"finetune", "score", "calm_base", "calm_step", "calm_model", "evaluate",
                         "evaluate_task_arithmetic", "evaluate_validated", "merge_baseline", "mask_parts", "ablation_topk", "benchmarks"}
    for rule, runs in jobs.items():
        for r in runs:
            assert r["slurm_account"] == "acct", rule
            if rule in gpu_rules:
                assert (r["gpu"], r["gpu_model"], r["slurm_partition"]) == ("1", "a100", "gpu"), rule
            else:
                assert "gpu" not in r and "gpu_model" not in r and r["slurm_partition"] == "cpu", rule
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert "set-resources" not in profile and set(profile["default-resources"]) == {"slurm_account", "slurm_partition"}


@needs_slurm_plugin
def test_the_readme_slurm_command_needs_no_core_count(tmp_path):
    """`snakemake --workflow-profile profiles/slurm --configfile …` gives no --cores: parsing the
    workflow must not need one (a rule's `threads: workflow.cores` stopped it before any job)."""
    proc = subprocess.run(SNAKEMAKE + ["--workflow-profile", "profiles/slurm", "--configfile", "config/config.yaml",
                                       "--directory", str(tmp_path), "--summary"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **SLURM_ENV})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "calm_step" in proc.stdout or "step1-" in proc.stdout


@needs_slurm_plugin
def test_job_memory_and_run_time_follow_the_config_scale(tmp_path):
    """mem_mb and runtime come from the model and data the config names (calm/resources.py),
    not from the profile: the paper's ViT-L/14 asks for more than the MiniLM default."""
    def calm_step(config):
        out = dry_run(config, tmp_path / config.stem, "--workflow-profile", str(ROOT / "profiles/slurm"),
                      env={**SLURM_ENV, "HF_HUB_OFFLINE": "1"})
        return planned_resources(out)["calm_step"][0]

    small, large = calm_step(ROOT / "config/config.yaml"), calm_step(ROOT / "config/clip-vit-l14.yaml")
    # MiniLM (91 MB): 3000 + 14 × 91 + 2 × every task's pool (6 × 400 rows × 64 tokens × 16 B)
    assert int(small["mem_mb"]) == math.ceil(3000 + 14 * 91 + 2 * 6 * 400 * 64 * 16 / 2**20)
    assert int(large["mem_mb"]) > 3 * int(small["mem_mb"]) and int(large["runtime"]) > int(small["runtime"])


# --- end to end on pico CLIP checkpoints and pico datasets -------------------------------------

def clip_config(src: Path) -> dict:
    """A paper-scale (CLIP HF) config as a user writes one, over the pico sources in `src`."""
    return {
        "device": "cpu", "threads": 1,
        "model": {"family": "clip_hf", "source": str(src / "pretrained"), "logit_scale": 100.0, "finetuned": {
            "colours": str(src / "ft-colours"), "hues": str(src / "ft-hues")}},
        "data": {"tasks": ["colours", "hues"], "hf": {
            "colours": {"source": str(src / "colours"), "templates": ["a {} photo.", "a photo of something {}."]},
            "hues": {"source": str(src / "hues"), "pool_split": "train"}}},
        "score": {"batch_size": 8},
        "select": {"sampler": "cb_ems", "ratio": 0.9},
        "calm": {"sequential": ["hues"], "iterations": 2, "batch_size": 4, "batches_per_task": 1, "lr": 1e6},
        # The methods that read the family's own inputs (pixels, its heads, its linear layers), at
        # pico sizes: a data-free merge is the same on every family, and AdaRank reads what
        # AdaMerging reads (calm.stages.baselines).
        "baselines": {"methods": ["localize_stitch", "adamerging_layer", "fisher", "regmean"],
                      "task_arithmetic_lambda": 0.3, "lambda_grid": [0.3],
                      "localize_stitch": {"n_shot": 4, "epochs": 2, "batch_size": 4, "lr": 1e6},
                      "adamerging": {"steps": 2, "batch_size": 4}, "fisher": {"n_examples": 4},
                      "regmean": {"n_examples": 8, "batch_size": 4}},
        "evaluate": {"batch_size": 8, "bootstrap": 50},
    }


@pytest.fixture(scope="module")
def clip_sources(tmp_path_factory) -> Path:
    """The pico CLIP, its two fine-tuned towers and the two image datasets, as served."""
    pytest.importorskip("datasets", reason="HF datasets is not installed (pip install -r requirements.txt)")
    from picos import make_clip, make_clip_finetuned, save_images_parquet, save_images_to_disk

    src = tmp_path_factory.mktemp("clip-src")
    pretrained = make_clip(src / "pretrained")
    # one served as transformers 4.x wrote it (vision_model. keys), one as 5 writes it
    make_clip_finetuned(pretrained, src / "ft-colours", {"post_layernorm.bias": 0.1}, "v4")
    make_clip_finetuned(pretrained, src / "ft-hues", {"encoder.layers.0.mlp.fc2.bias": -0.2}, "v5")
    save_images_to_disk(src / "colours", ["red", "blue"])
    save_images_parquet(src / "hues", ["red", "blue", "green"])
    return src


def snakemake_in(work: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(work),
                                       "--configfile", str(work / "config.yaml"), *args],
                          capture_output=True, text=True, cwd=work, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, clip_sources):
    work = tmp_path_factory.mktemp("clip-e2e")
    proc = snakemake_in(work, clip_config(clip_sources), "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work


def test_clip_pipeline_end_to_end_from_a_config_file(clip_run):
    work = clip_run
    table = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    assert list(table.columns) == ["colours", "hues", "Avg", "Norm. avg"]
    assert table.index[0] == "Pretrained" and table.index[-1] == "CALM"
    # fetched checkpoints are kept as served: the 4.x one still carries its prefix
    from safetensors.torch import load_file
    keys = set(load_file(str(work / "resources/models/finetuned/colours/model.safetensors")))
    assert all(k.startswith("vision_model.") for k in keys)
    # every split decoded once into uint8; the colours pool is its test split, stored once
    from calm import artifacts
    for task, n_pool in (("colours", 12), ("hues", 6)):
        pool = artifacts.read_inputs(work / f"results/inputs/{task}.safetensors", "pool")
        assert pool["pixels"].dtype.is_floating_point is False and len(pool["idx"]) == n_pool
    head = artifacts.read_head(work / "results/heads/hues.safetensors")
    assert tuple(head.shape) == (3, 8)
    summary = json.loads((work / "results/merge/calm/default/step1-hues/summary.json").read_text())
    assert summary["visible"] == ["colours", "hues"] and summary["iterations"] == 2
    from transformers import CLIPVisionModel
    CLIPVisionModel.from_pretrained(work / "results/merge/calm/default/model")
    preds = pd.read_parquet(work / "results/eval/calm.parquet")
    assert preds.groupby("task").size().to_dict() == {"colours": 12, "hues": 12}


# --- a broken fine-tuned checkpoint stops the run at its fetch ---------------------------------

def faulty_checkpoint(clip_sources: Path, folder: Path, fault: str) -> Path:
    """The pretrained vision tower as transformers 5 saves it, broken as `fault` says."""
    import torch
    from safetensors.torch import load_file, save_file

    from picos import make_clip_finetuned

    make_clip_finetuned(clip_sources / "pretrained", folder, {}, "v5")
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    if fault == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif fault == "nan":
        tensors["encoder.layers.1.mlp.fc1.weight"][0, :3] = float("nan")
        save_file(tensors, str(weights))
    elif fault == "shape":
        tensors["encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 16)
        save_file(tensors, str(weights))
    elif fault == "pickle":  # a pytorch_model.bin that also pickles a reference to os.system
        weights.unlink()
        torch.save({**tensors, "hook": os.system}, folder / "pytorch_model.bin")
    return folder


def started_jobs(output: str) -> set[str]:
    import re

    return set(re.findall(r"^(?:local)?rule (\w+):", output, re.MULTILINE))


@pytest.fixture
def fetched(clip_run, tmp_path) -> Path:
    """A folder where the pretrained model and the datasets are fetched, the checkpoints not."""
    import shutil

    for part in ("resources/models/pretrained", "resources/data"):
        shutil.copytree(clip_run / part, tmp_path / part)
    return tmp_path


BROKEN = [
    ("truncated", "{ft}/model.safetensors: not a readable safetensors file, truncated or corrupt "
                  "(Error while deserializing header: incomplete metadata, file not fully covered)"),
    ("nan", "tensor 'encoder.layers.1.mlp.fc1.weight' of the checkpoint {ft} holds 3 NaN and 0 Inf values"),
    ("shape", "tensor 'encoder.layers.0.self_attn.q_proj.weight' of the checkpoint {ft} is (8, 16) torch.float32, "
              "expected (16, 16) torch.float32"),
    ("pickle", "{ft}/pytorch_model.bin: holds the Python object posix.system, which weights-only loading refuses; "
               "if you trust the file, set model.trust_pickle: true"),
]


def test_a_broken_checkpoint_stops_the_run_at_its_fetch_naming_the_users_file(clip_sources, fetched):
    """The whole workflow, as a user runs it: only the checkpoint fetches run; the broken one's
    log ends with one line naming the user's file and tensor; resources/ holds no copy of it."""
    fault, message = BROKEN[0]
    ft = faulty_checkpoint(clip_sources, fetched / "user" / f"ft-{fault}", fault)
    config = clip_config(clip_sources)
    config["model"]["finetuned"]["colours"] = str(ft)
    # one core: the order is the scheduler's alone (with two, a good checkpoint's fetch may end
    # and free a core for a prepare job while the broken one is still being read)
    proc = snakemake_in(fetched, config, "--cores", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert started_jobs(output) == {"fetch_finetuned"}, output[-3000:]
    expected = "error: " + message.format(ft=ft)
    log = (fetched / "logs/fetch_finetuned/colours.log").read_text().strip().splitlines()
    assert log[-1] == expected, log[-5:]
    assert expected in output  # Snakemake shows the failed job's log
    assert "Traceback" not in "\n".join(log)
    copies = fetched / "resources/models/finetuned"
    # the good checkpoint's fetch may have run first; no trace of the broken one, not even a temporary
    assert (sorted(p.name for p in copies.iterdir()) if copies.exists() else []) in ([], ["hues"])


@pytest.mark.parametrize("fault, message", BROKEN[1:])
def test_each_broken_checkpoint_is_one_line_from_the_fetch_stage(clip_sources, fetched, fault, message, capsys,
                                                                monkeypatch):
    """The other faults through the stage's command line, as the rule above runs it, called in
    this process (a workflow or an interpreter each would repeat what the test above shows)."""
    from calm.cli import main
    from calm.config import ModelConfig
    from calm.flags import render_flags

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ft = faulty_checkpoint(clip_sources, fetched / "user" / f"ft-{fault}", fault)
    model = render_flags(ModelConfig(**clip_config(clip_sources)["model"]), prefix="model_",
                         exclude=("source", "trust_pickle"))
    out = fetched / "resources/models/finetuned/colours"
    code = main(["fetch-finetuned", "--source", str(ft), *shlex.split(model),
                 "--pretrained", str(fetched / "resources/models/pretrained"), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code != 0
    assert stderr.strip().splitlines()[-1] == "error: " + message.format(ft=ft), stderr[-2000:]
    assert not out.exists()


def test_a_pickled_checkpoint_loads_when_trusted_with_the_warning(clip_sources, fetched):
    from safetensors.torch import load_file

    ft = faulty_checkpoint(clip_sources, fetched / "user" / "ft-pickle", "pickle")
    config = clip_config(clip_sources)
    config["model"]["finetuned"]["colours"] = str(ft)
    config["model"]["trust_pickle"] = True
    proc = snakemake_in(fetched, config, "--cores", "1", "resources/models/finetuned/colours")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (fetched / "logs/fetch_finetuned/colours.log").read_text()
    assert (f"WARNING {ft}/pytorch_model.bin: fully unpickling (model.trust_pickle: true); this runs any code "
            "the file holds, so use it only for files from a source you trust") in log
    import torch

    fetched_tensors = load_file(str(fetched / "resources/models/finetuned/colours/model.safetensors"))
    served = torch.load(ft / "pytorch_model.bin", weights_only=False)  # a reference to os.system runs nothing
    assert served.pop("hook") is os.system
    assert set(fetched_tensors) == set(served) and all(torch.equal(fetched_tensors[k], served[k]) for k in served)


def test_turning_trust_pickle_on_reruns_nothing(clip_run):
    """It decides whether a fetch may unpickle, not what the fetched safetensors hold."""
    config = yaml.safe_load((clip_run / "config.yaml").read_text())
    config["model"]["trust_pickle"] = True
    (clip_run / "trusting.yaml").write_text(yaml.safe_dump(config))
    out = dry_run(clip_run / "trusting.yaml", clip_run)
    assert "Nothing to be done" in out, planned_jobs(out)
