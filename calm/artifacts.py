"""File formats passed between stages: preprocessed splits, heads, credible sets, task vectors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from calm.io import read_json, write_tensors

SPLITS = ("train", "pool", "test")
StateDict = dict[str, torch.Tensor]


def task_meta(data_dir: str | Path) -> dict:
    """task.json written by the data stage: name, classes, prompt, sizes, source."""
    return read_json(Path(data_dir) / "task.json")


def write_inputs(splits: dict[str, dict[str, torch.Tensor]], path: str | Path, meta: dict) -> None:
    flat = {f"{split}/{key}": t for split, tensors in splits.items() for key, t in tensors.items()}
    write_tensors(flat, path, metadata={"meta": json.dumps(meta)})


def read_inputs(path: str | Path, split: str) -> dict[str, torch.Tensor]:
    """One split of a preprocessed-inputs file: model inputs plus `label` and `idx`."""
    out = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            prefix, _, name = key.partition("/")
            if prefix == split:
                out[name] = f.get_tensor(key)
    if not out:
        raise ValueError(f"{path} holds no '{split}' split")
    return out


def write_head(head: torch.Tensor, classes: list[str], path: str | Path) -> None:
    write_tensors({"head": head}, path, metadata={"classes": json.dumps(classes)})


def read_head(path: str | Path) -> torch.Tensor:
    return load_file(str(path))["head"]


def write_vector(tau: StateDict, path: str | Path, meta: dict | None = None) -> None:
    write_tensors(tau, path, metadata={"meta": json.dumps(meta or {})})


def read_vector(path: str | Path, device: torch.device | str = "cpu") -> StateDict:
    return {k: v.to(device) for k, v in load_file(str(path)).items()}


def read_mask(path: str | Path) -> dict[str, torch.Tensor]:
    """A bit-packed binary mask written by the CALM step, as boolean tensors."""
    from calm.merging.mask import unpack

    with safe_open(str(path), "pt") as f:
        shapes = f.metadata() or {}
    return unpack(load_file(str(path)), shapes)


def read_credible(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = {"idx", "target"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)} of a credible set")
    return frame
