"""Merging methods: one registry of the data-free ones (name -> pure function over task
vectors); CALM, which needs data, lives in `calm.merging.calm`."""
from __future__ import annotations

from typing import Callable

from .task_arithmetic import task_arithmetic

METHODS: dict[str, Callable] = {
    "task_arithmetic": task_arithmetic,
}
