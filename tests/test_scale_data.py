"""The HF `datasets` source on pico datasets saved with `datasets` itself (save_to_disk, the
hub's parquet layout) and as an image folder; the cached uint8 inputs it leads to."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytest.importorskip("datasets", reason="HF datasets is not installed; pip install -r requirements.txt installs it")

from calm import artifacts  # noqa: E402
from calm.config import ModelConfig  # noqa: E402
from calm.data.hf import write_hf_task_splits  # noqa: E402
from calm.data.vision_tasks import VISION_TASKS  # noqa: E402
from calm.stages.prepare import build_head, preprocess  # noqa: E402
from calm.stages.family import open_family  # noqa: E402

from picos import COLOURS, make_clip, png, save_images_parquet, save_images_to_disk  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {"disk": save_images_to_disk(root / "disk", ["red", "blue"]),
            "parquet": save_images_parquet(root / "parquet", ["red", "blue", "green"])}


def test_save_to_disk_source_with_the_pool_aliasing_the_test_split(sources, tmp_path):
    info = write_hf_task_splits("colours", {"source": str(sources["disk"])}, tmp_path / "task", cache_dir=tmp_path / "c")
    assert info["classes"] == ["red", "blue"]  # the ClassLabel names
    assert info["templates"] == ["{}"] and info["aliases"] == {"pool": "test"}
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["task.json", "test.parquet", "train.parquet"]
    test = pd.read_parquet(tmp_path / "task" / "test.parquet")
    assert test["idx"].tolist() == list(range(12)) and test["label"].tolist() == [i % 2 for i in range(12)]
    assert test["image"].iloc[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_parquet_source_with_distinct_pool_split_and_limits(sources, tmp_path):
    spec = {"source": str(sources["parquet"]), "pool_split": "train", "test_limit": 5,
            "classes": ["r", "b", "g"], "templates": ["a {} thing.", "the {}."]}
    info = write_hf_task_splits("colours", spec, tmp_path / "task", seed=3, cache_dir=tmp_path / "c")
    assert info["aliases"] == {} and info["sizes"] == {"train": 6, "pool": 6, "test": 5}
    test = pd.read_parquet(tmp_path / "task" / "test.parquet")
    assert len(set(test["idx"])) == 5 and test["idx"].is_monotonic_increasing
    assert (test["label"] == test["idx"] % 3).all()  # rows keep their own labels when subsampled


def test_built_in_task_names_bring_fusionbench_classes_and_templates(sources, tmp_path):
    # the two-class disk data stands in for mnist: labels 0 and 1 are the digits "0" and "1"
    info = write_hf_task_splits("mnist", {"source": str(sources["disk"])}, tmp_path / "task", cache_dir=tmp_path / "c")
    assert info["classes"] == list(VISION_TASKS["mnist"].classes)
    assert info["templates"] == ['a photo of the number: "{}".']


def test_image_folder_source_and_rows_without_a_label(tmp_path):
    for split, n in (("train", 2), ("test", 3)):
        for c, name in enumerate(["blue", "red"]):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(png(COLOURS[1 - c], seed=i))
    info = write_hf_task_splits("folder", {"source": str(tmp_path / "folder")}, tmp_path / "task", cache_dir=tmp_path / "c")
    assert info["classes"] == ["blue", "red"] and info["sizes"]["test"] == 6


def test_text_pairs_and_unlabelled_rows_are_handled(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [0, -1, 1]})
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "nli"))
    spec = {"source": str(tmp_path / "nli"), "input_column": "premise", "pair_column": "hypothesis",
            "pool_split": "validation", "test_split": "validation", "train_split": "", "classes": ["yes", "no"]}
    info = write_hf_task_splits("nli", spec, tmp_path / "task", cache_dir=tmp_path / "c")
    frame = pd.read_parquet(tmp_path / "task" / "test.parquet")
    assert frame[["text", "text_pair", "label"]].values.tolist() == [["a", "x", 0], ["c", "z", 1]]
    assert info["notes"] == ["test: dropped 1 rows with no label (< 0)"]


def test_prepare_caches_uint8_pixels_once_and_the_pool_reads_the_test_rows(sources, tmp_path):
    write_hf_task_splits("colours", {"source": str(sources["disk"])}, tmp_path / "task", cache_dir=tmp_path / "c")
    family = open_family(ModelConfig(family="clip_hf", logit_scale=100.0),
                                make_clip(tmp_path / "clip"), device="cpu")
    preprocess(family, tmp_path / "task", tmp_path / "inputs.safetensors")
    build_head(family, tmp_path / "task", tmp_path / "head.safetensors")
    test = artifacts.read_inputs(tmp_path / "inputs.safetensors", "test")
    pool = artifacts.read_inputs(tmp_path / "inputs.safetensors", "pool")
    assert test["pixels"].dtype == torch.uint8 and test["pixels"].shape == (12, 3, 32, 32)
    assert torch.equal(pool["pixels"], test["pixels"]) and torch.equal(pool["idx"], test["idx"])
    from safetensors import safe_open
    with safe_open(str(tmp_path / "inputs.safetensors"), "pt") as f:
        assert not any(k.startswith("pool/") for k in f.keys())  # stored once
    # red images (label 0): the red channel dominates the centre pixel
    red = test["pixels"][test["label"] == 0][:, :, 16, 16].float().mean(0)
    assert red[0] > 150 and red[2] < 80
    head = artifacts.read_head(tmp_path / "head.safetensors")
    assert head.shape == (2, 8) and json.loads((tmp_path / "task" / "task.json").read_text())["splits"] == ["train", "test"]
