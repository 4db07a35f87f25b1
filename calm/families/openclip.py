"""CLIP in open_clip format: the task-vectors release's checkpoints (the paper's own).

The release ships pickled whole modules: zeroshot.pt and <Task>/finetuned.pt (an ImageEncoder
holding an open_clip CLIP model) and head_<Task>.pt (a Linear head whose weight is
100 · the normalised zero-shot class embeddings). Unpickling runs code from the file, so the
fetch stage does it only when the config says `model.trust_pickle: true`; it keeps the vision
tower's tensors and the head's weight and writes them as safetensors, once. Every later stage
reads only those files and rebuilds the tower from its open_clip config with fresh code, so
nothing from the pickle is ever executed again.

A converted folder holds model.safetensors (the vision tower's state dict, open_clip's names:
conv1.weight, transformer.resblocks.0.attn.in_proj_weight, …, proj), config.json (the tower's
open_clip config, whether it uses QuickGELU, image size, normalisation) and, for a fine-tuned
model, head.safetensors. logits = normalise(visual(image)) @ head.T.
"""
from __future__ import annotations

import json
import logging
import pickle
import types
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call

from calm.checkpoints import check_finite, load_torch_file, read_checkpoint_dir, read_safetensors
from calm.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, decode_images, normalise
from calm.families.names import pick, selected
from calm.io import atomic_dir, write_json, write_tensors

from .base import Batch, Family, StateDict

log = logging.getLogger("calm")

STAND_IN = "calm.families.task_vectors_modeling"
# Where the tower's tensors sit in what the release pickled (ImageEncoder.model.visual), in a
# whole CLIP model, or in a bare tower state dict.
VISUAL_PREFIXES = ("model.visual.", "visual.", "")


class _Missing(torch.nn.Module):
    """Stands in for a class or function the installed packages no longer have (for example a
    transform of an older open_clip). Being a Module, it keeps any tensors it held."""


class _ReleaseUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("src.modeling", "modeling"):
            module = STAND_IN
        try:
            return super().find_class(module, name)
        except (AttributeError, ModuleNotFoundError):
            log.warning("unpickling: %s.%s is not available here; a placeholder stands in", module, name)
            # Named after the original, so that checks by class name (QuickGELU) still work.
            return type(name, (_Missing,), {"__module__": module})


# torch.load wants a module-like object with Unpickler and load.
_release_pickle = types.SimpleNamespace(
    __name__="calm_release_pickle", Unpickler=_ReleaseUnpickler,
    load=lambda f, **kw: _ReleaseUnpickler(f, **kw).load())


def load_release_file(path: str | Path, trust_pickle: bool) -> Any:
    """A tensor dict, or (with trust_pickle) a pickled module of the release."""
    return load_torch_file(path, trust_pickle, pickle_module=_release_pickle)


def _state(obj: Any, path: Path) -> StateDict:
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(f"{path} holds a {type(obj).__name__}, neither a module nor a tensor state dict")


def _visual_state(obj: Any, path: Path) -> StateDict:
    state = _state(obj, path)
    for prefix in VISUAL_PREFIXES:
        if f"{prefix}conv1.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise ValueError(f"{path}: no vision tower found (no tensor named conv1.weight under "
                     f"{[p for p in VISUAL_PREFIXES if p]} or at the top level)")


def _uses_quick_gelu(obj: Any) -> bool | None:
    if not isinstance(obj, torch.nn.Module):
        return None
    return any(type(m).__name__ == "QuickGELU" for m in obj.modules())


def _preprocess_spec(obj: Any, image_size: int) -> dict:
    """Image size and normalisation, from the release's val_preprocess when it is there."""
    spec = {"image_size": image_size, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    transforms = getattr(getattr(obj, "val_preprocess", None), "transforms", None) or []
    for t in transforms:
        if type(t).__name__ == "Normalize":
            spec["mean"], spec["std"] = [float(x) for x in t.mean], [float(x) for x in t.std]
    return spec


def build_tower(config: dict) -> torch.nn.Module:
    from open_clip.model import _build_vision_tower  # open_clip's own builder (pinned version)

    return _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=config["quick_gelu"])


def convert_head(path: str | Path, trust_pickle: bool) -> torch.Tensor:
    obj = load_release_file(path, trust_pickle)
    state = _state(obj, Path(path))
    if "weight" not in state:
        raise ValueError(f"{path}: a head needs a 'weight' tensor; found {sorted(state)[:5]}")
    bias = state.get("bias")
    if bias is not None and bias.abs().max() > 0:
        raise ValueError(f"{path}: the head has a non-zero bias, which a zero-shot head does not")
    if hasattr(obj, "normalize") and not obj.normalize:
        raise ValueError(f"{path}: the head does not normalise its inputs, unlike the release's heads")
    return state["weight"].float().contiguous()


class OpenClip(Family):
    modality = "image"
    head_source = "checkpoint"

    def __init__(self, model_dir: str | Path, device: str = "auto", merge_prefixes: tuple[str, ...] = ()):
        super().__init__(model_dir, device)
        self.config = json.loads((self.model_dir / "config.json").read_text())
        self.visual = build_tower(self.config)
        self.visual.load_state_dict(read_checkpoint_dir(self.model_dir), strict=True)
        self.visual.to(self.device).eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self._names = selected([n for n, _ in self.visual.named_parameters()], merge_prefixes)

    @classmethod
    def from_config(cls, model_dir, model, device="auto"):
        return cls(model_dir, device=device, merge_prefixes=tuple(model.merge_prefixes))

    @classmethod
    def convert(cls, source: str, out_dir: Path, model, head: str | None = None) -> None:
        """zeroshot.pt or finetuned.pt (+ head_<Task>.pt) → a converted folder."""
        import open_clip

        path = Path(source)
        obj = load_release_file(path, model.trust_pickle)
        visual = _visual_state(obj, path)
        arch = open_clip.get_model_config(model.open_clip_arch)
        if arch is None:
            raise ValueError(f"model.open_clip_arch '{model.open_clip_arch}' is no open_clip model config")
        quick_gelu = _uses_quick_gelu(obj)
        if quick_gelu is None:  # a bare state dict does not say; the config may
            quick_gelu = bool(arch.get("quick_gelu", False))
        config = {"arch": model.open_clip_arch, "embed_dim": arch["embed_dim"], "vision_cfg": arch["vision_cfg"],
                  "quick_gelu": quick_gelu,
                  **_preprocess_spec(obj, int(arch["vision_cfg"].get("image_size", 224)))}
        tower = build_tower(config)
        expected = {k: v for k, v in tower.state_dict().items()}
        try:
            pick(visual, expected, (), f"vision tower of {path} (open_clip config {model.open_clip_arch})")
        except ValueError as exc:
            raise ValueError(f"{exc}; is model.open_clip_arch right?") from None
        check_finite(visual, str(path))
        head_t = convert_head(head, model.trust_pickle) if head else None
        with atomic_dir(out_dir) as tmp:
            write_tensors({k: visual[k] for k in expected}, tmp / "model.safetensors", metadata={"format": "pt"})
            write_json(config, tmp / "config.json")
            if head_t is not None:
                write_tensors({"head": head_t}, tmp / "head.safetensors")

    # --- checkpoints -------------------------------------------------------------------
    def pretrained_state(self) -> StateDict:
        params = dict(self.visual.named_parameters())
        return {n: params[n].detach() for n in self._names}

    def save(self, params: StateDict, out_dir: Path) -> None:
        state = {n: t.detach().cpu() for n, t in self.visual.state_dict().items()}
        state.update({n: t.detach().cpu() for n, t in params.items()})
        with atomic_dir(out_dir) as tmp:
            write_tensors(state, tmp / "model.safetensors", metadata={"format": "pt"})
            write_json(self.config, tmp / "config.json")

    def checkpoint_head(self, model_dir: Path) -> torch.Tensor:
        path = Path(model_dir) / "head.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the fine-tuned checkpoint has no head (model.heads)")
        return read_safetensors(path)["head"]

    # --- data ----------------------------------------------------------------------------
    def preprocess(self, images: list[bytes]) -> dict[str, torch.Tensor]:
        return {"pixels": decode_images(images, int(self.config["image_size"]))}

    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        pixels = cache["pixels"][rows].to(self.device, non_blocking=True)
        return {"pixel_values": normalise(pixels, self.config["mean"], self.config["std"])}

    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        n = len(cache["pixels"])
        for start in range(0, n, batch_size):
            yield torch.arange(start, min(n, start + batch_size))

    # --- model ---------------------------------------------------------------------------
    def build_head(self, classes: list[str], prompt: str | list[str]) -> torch.Tensor:
        raise NotImplementedError("the open_clip family reads its heads from head_<Task>.pt (model.heads)")

    def logits(self, params: StateDict, batch: Batch, head: torch.Tensor) -> torch.Tensor:
        features = functional_call(self.visual, params, args=(batch["pixel_values"],))
        return F.normalize(features.float(), dim=-1) @ head.to(self.device).T
