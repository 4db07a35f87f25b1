"""The GPU check's scripts without a GPU: the kit's model round trip, what travels, and the whole
check rehearsed on the CPU on a pico config (.ci/device-pack, then .ci/device-check --device cpu),
so that the script cannot rot while no GPU is at hand."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pico_workflow import ROOT, pico_config

sys.path.insert(0, str(ROOT / ".ci"))
import device_kit  # noqa: E402


def test_the_model_travels_as_fp16_and_comes_back_in_its_dtypes(tmp_path):
    src, kit, back = tmp_path / "src", tmp_path / "kit", tmp_path / "back"
    src.mkdir()
    w = torch.tensor([[1.0, -3.0], [0.1, 1e-3]])
    save_file({"w": w, "ids": torch.tensor([1, 2, 3])}, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    device_kit.pack_model(src, kit)
    assert load_file(str(kit / "model.safetensors"))["w"].dtype == torch.float16
    device_kit.unpack_model(kit, back)
    restored = load_file(str(back / "model.safetensors"))
    assert restored["w"].dtype == torch.float32 and restored["ids"].dtype == torch.int64
    # fp16 keeps 11 significant bits: each weight within 2^-11 of itself, relative
    assert ((restored["w"] - w).abs() <= w.abs() * 2 ** -11).all()
    assert not torch.equal(restored["w"], w)  # 0.1 and 1e-3 are not fp16 numbers
    assert (back / "config.json").read_text() == "{}"


def test_a_weight_beyond_fp16_is_refused_naming_it(tmp_path):
    (tmp_path / "src").mkdir()
    save_file({"big": torch.tensor([7e4])}, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(SystemExit, match="tensor big reaches 70000"):
        device_kit.pack_model(tmp_path / "src", tmp_path / "kit")


def test_the_carried_wheels_are_what_the_gpu_image_lacks(capsys):
    device_kit.pins(None)
    pins = dict(line.split("==") for line in capsys.readouterr().out.split())
    assert {"pydantic", "pydantic-core", "snakemake", "jsonschema"} <= set(pins)
    assert not {"torch", "transformers", "pandas", "pulp"} & set(pins)


def test_the_check_rehearsed_on_the_cpu(tmp_path, pico_model):
    # A pico config of two tasks and no baseline keeps the rehearsal's own run to a few dozen
    # seconds; device-pack fetches its model and splits (Snakemake's fetch rules) into --work.
    kit, out = tmp_path / "kit", tmp_path / "out"
    cfg = pico_config(pico_model, tmp_path)
    cfg["data"]["tasks"] = ["colour", "mood"]
    cfg["calm"] |= {"iterations": 2, "checkpoint_every": 0}
    cfg["baselines"] |= {"methods": []}
    cfg["data"]["n_val"] = 4  # the val splits travel too: CALM's twin chooses its base's λ on them
    (tmp_path / "pico.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "fetched").mkdir()
    pack = subprocess.run([str(ROOT / ".ci/device-pack"), "--config", str(tmp_path / "pico.yaml"), "--kit", str(kit),
                           "--work", str(tmp_path / "fetched"), "--no-wheels"], capture_output=True, text=True)
    assert pack.returncode == 0, pack.stdout[-3000:] + pack.stderr[-3000:]
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["tasks"] == ["colour", "mood"] and "whl" not in manifest["bytes"]
    assert sorted(p.name for p in (kit / "data").iterdir()) == sorted(p.name for p in (kit / "val").iterdir()) == ["colour", "mood"]

    env = {**os.environ, "CALM_PYTHON": sys.executable}
    env.pop("OUT", None)
    check = subprocess.run([str(ROOT / ".ci/device-check"), "--device", "cpu", "--kit", str(kit), "--out", str(out),
                            "--work", str(tmp_path / "device"), "--quick", "--bench-model", "pico", "--budget", "1800",
                            "--step-limit-scale", "6"], capture_output=True, text=True, env=env)
    log = (out / "check.log").read_text()
    assert check.returncode == 0, log[-4000:]
    assert sorted(os.listdir(out)) == sorted(["check.log", "env.json", "cuda-tests.txt", "main.md", "main.csv",
                                              "rules.csv", "mask_loop.json", "limit.json"])
    # each step is announced before it runs, and ends with its status
    for step in ("env", "imports", "unpack", "tests", "workflow", "rules", "mask_loop", "limit"):
        assert log.index(f"] {step} (at most") < log.index(f"] {step}: rc 0"), step
    # the carried splits stand in for fetch_data; the model is fetched from the unpacked copy
    assert "rule fetch_data" not in log and "rule fetch_val" not in log and "rule fetch_model" in log
    assert "rule prepare_val" in log
    # the benchmarks fetched their tasks and wrote their results in the work folder, not in the checkout
    device = tmp_path / "device"
    assert (device / "benchmarks/quick/mask_loop.json").is_file() and any((device / "resources/data").iterdir())
    assert "skipped" in (out / "cuda-tests.txt").read_text()
    with (out / "main.csv").open() as fh:
        table = {row["method"]: row for row in csv.DictReader(fh)}
    assert "CALM" in table and set(table["CALM"]) >= {"colour", "mood", "Avg"}
    assert "CALM (chosen on validation)" in table
    with (out / "rules.csv").open() as fh:
        rules = {row["rule"] for row in csv.DictReader(fh)}
    assert {"fetch_model", "finetune", "calm_step", "evaluate", "table"} <= rules
    assert json.loads((out / "env.json").read_text())["cuda_available"] is False
