"""Model families behind one small interface (see `base.Family`); one module per family.

The CLIP, open_clip and RoBERTa modules import their heavy dependencies (open_clip needs
torchvision) only when a model is opened, so the registry costs nothing to import.
"""
from __future__ import annotations

from .base import Family
from .clip_hf import ClipHF
from .openclip import OpenClip
from .roberta import Roberta
from .text import TextEncoder

FAMILIES: dict[str, type[Family]] = {
    "text_encoder": TextEncoder,
    "clip_hf": ClipHF,
    "open_clip": OpenClip,
    "roberta": Roberta,
}


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
