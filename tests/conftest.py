"""Shared fixtures: a pico BERT checkpoint in the real HF format, with the real tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from calm.testing import make_pico_bert


@pytest.fixture(scope="session")
def pico_model(tmp_path_factory) -> Path:
    return make_pico_bert(tmp_path_factory.mktemp("pico") / "model")


def same_tensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same names, tensors (bitwise) and metadata. Not a byte
    comparison: safetensors writes a metadata dict of several keys (a mask's per-tensor
    shapes) in hash order, which differs from one process to the next."""
    from safetensors import safe_open
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))
