"""Model families behind one small interface (see `base.Family`); one module per family."""
from __future__ import annotations

from .base import Family
from .text import TextEncoder

FAMILIES: dict[str, type[Family]] = {
    "text_encoder": TextEncoder,
}


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
