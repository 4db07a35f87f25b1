"""File formats passed between stages: preprocessed splits, heads, credible sets, task vectors."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from calm.checkpoints import check_finite, read_safetensors
from calm.io import read_json, write_tensors
from calm.vectors import StateDict

SPLITS = ("train", "pool", "test")


def task_meta(data_dir: str | Path) -> dict:
    """task.json written by the data stage: name, classes, prompt, sizes, source."""
    return read_json(Path(data_dir) / "task.json")


def write_inputs(splits: dict[str, dict[str, torch.Tensor]], path: str | Path, meta: dict) -> None:
    flat = {f"{split}/{key}": t for split, tensors in splits.items() for key, t in tensors.items()}
    write_tensors(flat, path, metadata={"meta": json.dumps(meta)})


def read_inputs(path: str | Path, split: str) -> dict[str, torch.Tensor]:
    """One split of a preprocessed-inputs file: model inputs plus `label` and `idx`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out = {}
    try:
        with safe_open(str(path), "pt") as f:
            # A split stored once for two roles (the pool *is* the test split, transductively).
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            split = meta.get("aliases", {}).get(split, split)
            for key in f.keys():
                prefix, _, name = key.partition("/")
                if prefix == split:
                    out[name] = f.get_tensor(key)
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({exc})") from None
    if not out:
        raise ValueError(f"{path} holds no '{split}' split")
    return out


def write_head(head: torch.Tensor | dict[str, torch.Tensor], classes: list[str], path: str | Path) -> None:
    """A head is one tensor (class embeddings) or named tensors (a checkpoint's classifier)."""
    tensors = {"head": head} if isinstance(head, torch.Tensor) else {f"head.{k}": v for k, v in head.items()}
    write_tensors(tensors, path, metadata={"classes": json.dumps(classes)})


def read_head(path: str | Path) -> torch.Tensor | dict[str, torch.Tensor]:
    tensors = read_safetensors(path)
    if "head" in tensors:
        return tensors["head"]
    return {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}


def head_to(head: torch.Tensor | dict[str, torch.Tensor], device) -> torch.Tensor | dict[str, torch.Tensor]:
    return head.to(device) if isinstance(head, torch.Tensor) else {k: v.to(device) for k, v in head.items()}


def read_head_classes(path: str | Path) -> list[str]:
    """The class names a head was built for, in label order."""
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("classes", "[]"))


def write_vector(tau: StateDict, path: str | Path, meta: dict | None = None) -> None:
    write_tensors(tau, path, metadata={"meta": json.dumps(meta or {})})


def read_vector(path: str | Path, device: torch.device | str = "cpu") -> StateDict:
    """A task vector a merge stage wrote; one holding NaN or Inf stops the stage that reads it,
    naming the file (not, later, the model merged from it)."""
    tau = read_safetensors(path)
    check_finite(tau, f"task vector {path}")
    return {k: v.to(device) for k, v in tau.items()}


def read_mask(path: str | Path) -> dict[str, torch.Tensor]:
    """A bit-packed binary mask written by the CALM step, as boolean tensors."""
    from calm.merging.mask import unpack

    with safe_open(str(path), "pt") as f:
        shapes = f.metadata() or {}
    return unpack(read_safetensors(path), shapes)


def read_credible(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = {"idx", "target"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)} of a credible set")
    return frame
