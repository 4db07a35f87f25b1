"""Reading checkpoint files safely, and the checks every model family applies to them.

- safetensors files are data only; a truncated or corrupt one gives one line naming it.
- `.pt` / `.bin` / `.pth` files are pickles: `load_torch_file` opens them with
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
  Full unpickling can run code hidden in the file, so it happens only with an explicit
  `model.trust_pickle: true`, only for a file that needs it, and says so in the log. Every
  torch.load in calm is in `load_torch_file` (the open_clip release's unpickler passes
  through it too).
- `check_finite` names the first tensor holding NaN or Inf. A family's `checked_state`
  (calm/families/base.py) adds the comparison with the pretrained model's tensors (names,
  shapes, dtypes, in the pretrained order, so the first mismatching tensor is named).
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from calm.vectors import StateDict

log = logging.getLogger("calm")

TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def first_line(exc: BaseException) -> str:
    """An error's first line (libraries' messages span lines and rarely name the file)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_safetensors(path: str | Path) -> StateDict:
    """All tensors of a safetensors file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        # No advice to remake it: the workflow writes every file atomically and checks every
        # checkpoint it fetches, so a broken one is a source's, which only its owner can mend.
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt "
                         f"({first_line(exc)})") from None


def load_torch_file(path: str | Path, trust_pickle: bool, pickle_module: Any = pickle) -> Any:
    """`torch.load` of a .pt/.bin file onto the CPU with weights_only=True; a file that holds
    more than tensors and plain containers is refused, or, when trusted, fully unpickled with
    `pickle_module` (the open_clip release's stands in for its missing classes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            # torch's two wordings: a global not on its allow-list, one of a blocked module (os, posix, …)
            found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
            what = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
            raise ValueError(f"{path}: holds {what}, which weights-only loading refuses; if you trust "
                             "the file, set model.trust_pickle: true") from None
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a readable PyTorch file, truncated or corrupt "
                         f"({first_line(exc)[:200]})") from None
    log.warning("%s: fully unpickling (model.trust_pickle: true); this runs any code the file holds, "
                "so use it only for files from a source you trust", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except Exception as exc:  # unpickling runs the file's code: any error can come out of it
        raise ValueError(f"{path}: cannot be unpickled ({type(exc).__name__}: {first_line(exc)[:200]})") from None


def read_tensors(path: str | Path, trust_pickle: bool = False) -> StateDict:
    """The name -> tensor dict of one weights file, whatever its format."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format (expected .safetensors, .bin, .pt or .pth)")
    obj = load_torch_file(path, trust_pickle)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a name -> tensor mapping")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors")
    return tensors


def read_checkpoint_dir(model_dir: str | Path, trust_pickle: bool = False) -> StateDict:
    """Every tensor of a checkpoint folder: its *.safetensors files, or failing those its
    *.bin / *.pt / *.pth files (shards are merged)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such checkpoint folder")
    files = sorted(model_dir.glob("*.safetensors")) or sorted(
        f for suffix in TORCH_SUFFIXES for f in model_dir.glob(f"*{suffix}"))
    files = [f for f in files if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weights file (*.safetensors, *.bin, *.pt or *.pth) "
                                "in the checkpoint folder")
    tensors: StateDict = {}
    for f in files:
        tensors.update(read_tensors(f, trust_pickle))
    return tensors


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise naming the first tensor that holds NaN or Inf."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise ValueError(f"tensor '{name}' of the {what} holds {nan} NaN and {inf} Inf values")

