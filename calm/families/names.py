"""Tensor names in checkpoint folders: which names are merged, and each name found whatever
prefix the saving code put in front of it.

transformers 4.x saved a CLIPVisionModel with every key under `vision_model.` (as the vision keys
of a CLIPModel are), transformers 5 saves it without; a RobertaForSequenceClassification keeps its
encoder under `roberta.` while a RobertaModel does not. `pick` accepts either spelling of each
name, so a task vector always subtracts the same tensor from the same tensor.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from calm.vectors import StateDict, check_compatible


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
