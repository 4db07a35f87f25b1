"""Checkpoint folders in HF format: fetch them as served, and read their tensors under the names
the family's module uses, whatever prefix the saving code put in front.

transformers 4.x saved a CLIPVisionModel with every key under `vision_model.` (as the vision keys
of a CLIPModel are), transformers 5 saves it without; a RobertaForSequenceClassification keeps its
encoder under `roberta.` while a RobertaModel does not. `pick` accepts either spelling of each
name, so a task vector always subtracts the same tensor from the same tensor.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from calm.checkpoints import check_finite
from calm.checkpoints import read_checkpoint_dir as read_tensors
from calm.io import atomic_dir, write_tensors
from calm.vectors import StateDict, check_compatible

if TYPE_CHECKING:
    from .base import Family


__all__ = ["read_tensors", "pick", "selected", "fetch_checkpoint", "check_finite"]


def selected(names: Iterable[str], prefixes: Sequence[str]) -> list[str]:
    """The names merged and masked: those starting with one of `prefixes` (all if none given)."""
    names = list(names)
    if not prefixes:
        return names
    chosen = [n for n in names if any(n.startswith(p) for p in prefixes)]
    if not chosen:
        raise ValueError(f"model.merge_prefixes {list(prefixes)} select no tensor; names look like {names[:3]}")
    return chosen


def pick(tensors: StateDict, reference: StateDict, prefixes: Sequence[str], where: str) -> StateDict:
    """reference's names from `tensors`, each found as-is or under one of `prefixes`."""
    out: StateDict = {}
    for name in reference:
        found = [k for k in (name, *(p + name for p in prefixes)) if k in tensors]
        if len(found) > 1:
            raise ValueError(f"{where} holds tensor '{name}' twice, as {found}: which one is meant is ambiguous")
        if found:
            out[name] = tensors[found[0]]
    check_compatible(reference, out, what=where)
    return out


def fetch_checkpoint(source: str, out_dir: str | Path, family: "Family") -> None:
    """Copy a checkpoint's config and weights as served ('hf:<id>' or a local folder) into out_dir,
    as safetensors, once `family` (opened on the pretrained model) has checked every tensor the
    stages will read from it: a broken checkpoint stops here, naming the source's file and
    tensor, before anything is written. A pytorch_model.bin is converted (trusted or not, as
    `family.trust_pickle` says)."""
    if source.startswith("hf:"):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source[len("hf:"):], allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(source[len("hf:"):], allow_patterns=["*.json", "*.bin"]))
    else:
        folder = Path(source)
    tensors = family.read_checkpoint(folder)
    family.check_finetuned(tensors, f"checkpoint {folder}")
    served = sorted(folder.glob("*.safetensors"))
    with atomic_dir(out_dir) as tmp:
        for f in folder.glob("*.json"):
            shutil.copyfile(f, tmp / f.name)
        for f in served:
            shutil.copyfile(f, tmp / f.name)
        if not served:
            write_tensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
