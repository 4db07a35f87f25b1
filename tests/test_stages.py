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
