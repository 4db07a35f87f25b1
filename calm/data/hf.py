"""Tasks read with HF `datasets`: from the hub ('hf:<id>') or a local folder.

The fetch stage (which may need the network) writes the pool and test splits as parquet files
(idx, image bytes or text, label) plus task.json, the same folder layout as the built-in tasks;
every later stage reads only those files, so compute jobs never touch the hub. When the pool and
the test set are the same split (the paper's transductive setting), the pool is not written
twice: task.json records it as an alias of test.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calm.config import HFTask
from calm.data.task_splits import class_counts
from calm.data.vision_tasks import VISION_TASKS
from calm.io import write_json, write_parquet

__all__ = ["write_hf_task_splits", "load_split"]

log = logging.getLogger(__name__)


def _parquet_files(folder: Path, split: str) -> list[Path]:
    """<split>.parquet or <split>-00000-of-00001.parquet anywhere under folder (the hub's layout)."""
    return sorted(p for p in folder.rglob("*.parquet")
                  if p.stem == split or p.stem.startswith(f"{split}-") or p.stem.startswith(f"{split}_"))


def load_split(source: str, config: str, split: str, cache_dir: str | Path | None = None):
    """One split as a `datasets.Dataset`."""
    import datasets

    cache = str(cache_dir) if cache_dir else None
    if source.startswith("hf:"):
        return datasets.load_dataset(source[len("hf:"):], config or None, split=split, cache_dir=cache)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source {source}: no such file or folder")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"data source {source} has splits {sorted(loaded)}, not '{split}'")
            return loaded[split]
        return loaded
    files = _parquet_files(path, split) if path.is_dir() else ([path] if path.suffix == ".parquet" else [])
    if files:
        return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split,
                                     cache_dir=cache)
    if path.is_dir() and any(path.rglob("*.parquet")):
        raise ValueError(f"data source {source}: no parquet file named after the split '{split}'")
    if not (path / split).is_dir():
        raise ValueError(f"data source {source}: not a save_to_disk folder, no {split}*.parquet file, "
                         f"and no image folder {path / split}")
    return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, cache_dir=cache)


def _image_bytes(value: Any, source: str) -> bytes:
    """The encoded bytes of an undecoded `datasets.Image` value (or raw bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    raise ValueError(f"{source}: an image value is neither bytes nor a dict with bytes or path: {type(value).__name__}")


def _frame(ds, spec: HFTask, source: str) -> pd.DataFrame:
    import datasets

    for column in filter(None, (spec.input_column, spec.pair_column, spec.label_column)):
        if column not in ds.column_names:
            raise ValueError(f"{source}: no column '{column}' (columns: {ds.column_names})")
    feature = ds.features[spec.input_column]
    is_image = isinstance(feature, datasets.Image)
    if is_image:
        # Keep the encoded bytes: decoding happens once, in the prepare stage.
        ds = ds.cast_column(spec.input_column, datasets.Image(decode=False))
    frame = pd.DataFrame({"idx": np.arange(len(ds), dtype=np.int64),
                          "label": np.asarray(ds[spec.label_column], dtype=np.int64)})
    values = ds[spec.input_column]
    if is_image:
        frame["image"] = [_image_bytes(v, source) for v in values]
    else:
        frame["text"] = [str(v) for v in values]
        if spec.pair_column:
            frame["text_pair"] = [str(v) for v in ds[spec.pair_column]]
    return frame


def _classes(name: str, spec: HFTask, ds) -> list[str]:
    if spec.classes:
        return list(spec.classes)
    if name in VISION_TASKS:
        return list(VISION_TASKS[name].classes)
    names = getattr(ds.features.get(spec.label_column), "names", None)
    if names:
        return list(names)
    raise ValueError(f"task {name}: give data.hf.{name}.classes (no built-in list, and the label column "
                     "is not a ClassLabel)")


def _templates(name: str, spec: HFTask) -> list[str]:
    if spec.templates:
        return list(spec.templates)
    if name in VISION_TASKS:
        return list(VISION_TASKS[name].templates)
    return ["{}"]


def write_hf_task_splits(name: str, spec: HFTask | dict, out_dir: Path, seed: int = 0,
                    cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Write train.parquet (unless train_split is ''), pool.parquet (unless it aliases test),
    test.parquet and task.json into out_dir."""
    spec = spec if isinstance(spec, HFTask) else HFTask.model_validate(spec)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    roles = {"test": (spec.test_split, spec.test_limit), "pool": (spec.pool_split, spec.pool_limit)}
    if spec.train_split:
        roles["train"] = (spec.train_split, spec.train_limit)
    aliases = {"pool": "test"} if roles["pool"] == roles["test"] else {}
    notes: list[str] = []
    classes: list[str] | None = None
    sizes, counts = {}, {}
    for role, (split, limit) in roles.items():
        if role in aliases:
            continue
        where = f"{spec.source} ({spec.config or 'default'}) split {split}"
        ds = load_split(spec.source, spec.config, split, cache_dir)
        if classes is None:
            classes = _classes(name, spec, ds)
        frame = _frame(ds, spec, where)
        unlabelled = frame["label"] < 0
        if unlabelled.any():  # SNLI marks pairs without a gold label with -1
            notes.append(f"{role}: dropped {int(unlabelled.sum())} rows with no label (< 0)")
            frame = frame[~unlabelled]
        bad = frame["label"] >= len(classes)
        if bad.any():
            raise ValueError(f"{where}: label {int(frame['label'][bad].iloc[0])} is outside the "
                             f"{len(classes)} classes of task {name}")
        if limit and limit < len(frame):
            frame = frame.iloc[np.sort(rng.choice(len(frame), size=limit, replace=False))]
        if frame.empty:
            raise ValueError(f"{where}: no labelled rows")
        write_parquet(frame.reset_index(drop=True), out_dir / f"{role}.parquet")
        sizes[role] = len(frame)
        counts[role] = class_counts(frame, len(classes))
    for note in notes:
        log.warning("task %s: %s", name, note)
    templates = _templates(name, spec)
    info = {
        "name": name,
        "description": f"{spec.source} ({spec.config or 'default'})",
        "classes": classes,
        "prompt": templates[0],
        "templates": templates,
        "splits": [r for r in ("train", "pool", "test") if r in roles and r not in aliases],
        "aliases": aliases,
        "seed": seed,
        "sizes": {**sizes, **{r: sizes[a] for r, a in aliases.items()}},
        "class_counts": counts,
        "notes": notes,
        "source": {"kind": "hf", **spec.model_dump()},
    }
    write_json(info, out_dir / "task.json")
    return info
