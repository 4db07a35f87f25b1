"""The `prepare` rule's stage: each task's splits encoded once (tokenised texts or decoded
images) and its frozen head, which every later stage reads instead of the raw data."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from calm import artifacts
from calm.families.base import Family


def prepare(family: Family, data_dir: str | Path, inputs: str | Path, head: str | Path,
            model_dir: str | Path | None = None) -> None:
    """A task's model inputs (every split encoded once) and its frozen head."""
    preprocess(family, data_dir, inputs)
    build_head(family, data_dir, head, model_dir=model_dir)


def prepare_val(family: Family, data_dir: str | Path, inputs: str | Path) -> None:
    """A task's val split encoded (fetch_val's folder): a file of its own, beside the task's other
    splits, so that the stages reading those never rerun for it. The head is the task's one."""
    preprocess(family, data_dir, inputs)


def preprocess(family: Family, data_dir: str | Path, out: str | Path) -> None:
    """Tokenise (or decode) every split of a task once; later stages read only this file."""
    splits = {}
    meta = artifacts.task_meta(data_dir)
    for split in meta.get("splits", artifacts.SPLITS):
        frame = pd.read_parquet(Path(data_dir) / f"{split}.parquet")
        if frame.empty:
            raise ValueError(f"{data_dir}/{split}.parquet is empty: task '{meta.get('name')}' has "
                             f"{meta.get('rows_after_cleaning', 'too few')} usable rows, too few for its {split} "
                             f"split (see the notes in {data_dir}/task.json)")
        tensors = family.preprocess(_model_inputs(frame, family.modality, f"{data_dir}/{split}.parquet"))
        tensors["label"] = torch.tensor(frame["label"].to_numpy(), dtype=torch.int64)
        tensors["idx"] = torch.tensor(frame["idx"].to_numpy(), dtype=torch.int64)
        splits[split] = tensors
    n_classes = len(meta["classes"])
    for split, t in splits.items():
        bad = (t["label"] < 0) | (t["label"] >= n_classes)
        if bad.any():
            raise ValueError(f"{data_dir}/{split}.parquet: label {int(t['label'][bad][0])} is outside "
                             f"the {n_classes} classes of task.json")
    artifacts.write_inputs(splits, out, {"task": meta["name"], "classes": meta["classes"],
                                         "aliases": meta.get("aliases", {})})


def _model_inputs(frame: pd.DataFrame, modality: str, where: str) -> list:
    """A split's model inputs: encoded images, texts, or (text, text_pair) tuples."""
    column = "image" if modality == "image" else "text"
    if column not in frame.columns:
        raise ValueError(f"{where} has no '{column}' column, which a {modality} model family reads")
    if column == "text" and "text_pair" in frame.columns:
        return list(zip(frame["text"].tolist(), frame["text_pair"].tolist()))
    return frame[column].tolist()


def build_head(family: Family, data_dir: str | Path, out: str | Path, model_dir: str | Path | None = None) -> None:
    """Prompt families: a zero-shot head from the task's class names and templates; checkpoint
    families: the head stored with the task's fine-tuned model (`model_dir`)."""
    meta = artifacts.task_meta(data_dir)
    if family.head_source == "checkpoint":
        if model_dir is None:
            raise ValueError(f"{type(family).__name__} reads task heads from fine-tuned checkpoints; "
                             "give the task's checkpoint (--finetuned)")
        head = family.checkpoint_head(Path(model_dir))
    else:
        head = family.build_head(meta["classes"], meta.get("templates") or meta["prompt"])
    artifacts.write_head(head, meta["classes"], out)
