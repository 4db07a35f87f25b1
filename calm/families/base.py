"""The interface every model family offers the stages: load and save checkpoints, preprocess
a split once, build a frozen head, and compute logits for given parameters."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Literal

import torch

from calm.checkpoints import check_finite, read_checkpoint_dir
from calm.families.names import pick
from calm.io import atomic_dir
from calm.vectors import StateDict

if TYPE_CHECKING:
    from calm.config import ModelConfig

Batch = dict[str, torch.Tensor]
# A task head: one tensor (class embeddings of the prompt-head families) or named tensors (a
# classifier taken from a fine-tuned checkpoint, e.g. RoBERTa's dense + out_proj).
Head = torch.Tensor | dict[str, torch.Tensor]


class Family(ABC):
    device: torch.device
    # Matmuls under bf16 autocast (weights, gradients' accumulation and mask logits stay fp32);
    # set from the config's `precision` by whoever opens the family.
    bf16: bool = False
    # model.trust_pickle, set by open_family: may .pt/.bin files be fully unpickled?
    trust_pickle: bool = False

    def __init__(self, model_dir: str | Path, device: str = "auto"):
        self.model_dir = Path(model_dir)
        self.device = pick_device(device)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


    # "prompts": heads are built from class names and templates with the pretrained model;
    # "checkpoint": each task's head is read from its fine-tuned checkpoint (`checkpoint_head`).
    head_source: ClassVar[Literal["prompts", "checkpoint"]] = "prompts"
    # Which column of a task's parquet splits the family reads: "text" (plus "text_pair") or "image".
    modality: ClassVar[Literal["text", "image"]] = "text"
    # Other spellings of the module's tensor names a checkpoint may use: the names under one
    # of these prefixes (transformers 4.x's `vision_model.`, a classifier's `roberta.`).
    key_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, model_dir: str | Path, model: "ModelConfig", device: str = "auto") -> "Family":
        return cls(model_dir, max_length=model.max_length, logit_scale=model.logit_scale, device=device)

    @classmethod
    def convert(cls, source: str, out_dir: Path, model: "ModelConfig", head: str | None = None) -> None:
        """Write a checkpoint folder from a source that is not an HF folder (families that have one)."""
        raise NotImplementedError(f"family {cls.__name__} reads HF checkpoint folders; it converts nothing")

    def checkpoint_head(self, model_dir: Path) -> Head:
        """The task head stored with a fine-tuned checkpoint (head_source = "checkpoint")."""
        raise NotImplementedError(f"family {type(self).__name__} builds its heads from prompts")

    @abstractmethod
    def pretrained_state(self) -> StateDict:
        """The merged (masked) tensors of the pretrained model, on the compute device: the
        module's own storage, not a copy (a copy is one more model in memory), so read-only:
        clone before changing one in place."""

    def read_checkpoint(self, model_dir: Path) -> StateDict:
        """Every tensor of a checkpoint folder, on the CPU; override for another layout, but read
        files only through calm.checkpoints (its .pt/.bin loading never unpickles untrusted code)."""
        return read_checkpoint_dir(model_dir, self.trust_pickle)

    def checked_state(self, tensors: StateDict, where: str) -> StateDict:
        """The pretrained model's tensors out of a checkpoint's `tensors`, after the checks every
        family shares: each present with the pretrained shape and dtype (the first that is not
        is named), no NaN or Inf. A checkpoint may carry buffers (position_ids) or tensors the
        model lacks (an unused pooler); only the pretrained model's are task-vector material."""
        picked = pick(tensors, self.pretrained_state(), self.key_prefixes, where)
        check_finite(picked, where)
        return picked

    def check_finetuned(self, tensors: StateDict, where: str) -> None:
        """Everything the stages will read from a fine-tuned checkpoint, checked when it is
        fetched: the pretrained model's tensors (and a checkpoint-head family's head)."""
        self.checked_state(tensors, where)

    def load_state(self, model_dir: Path) -> StateDict:
        """The pretrained model's tensors from a fine-tuned checkpoint folder, checked
        (`checked_state`), on the compute device."""
        picked = self.checked_state(self.read_checkpoint(Path(model_dir)), f"checkpoint {model_dir}")
        return {n: t.to(self.device) for n, t in picked.items()}

    @abstractmethod
    def save(self, params: StateDict, out_dir: Path) -> None:
        """Write `params` as a checkpoint folder in the format a fetch gives."""

    @abstractmethod
    def preprocess(self, texts_or_items: list) -> dict[str, torch.Tensor]:
        """Turn a split's raw inputs into tensors, once; the result is cached on disk."""

    @abstractmethod
    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        """The model inputs of the given rows of a preprocessed split, on the compute device."""

    @abstractmethod
    def build_head(self, classes: list[str], prompt: str | list[str]) -> torch.Tensor:
        """A frozen head for a task's classes from the pretrained model alone: per class, the
        normalised embeddings of every prompt template, averaged and renormalised."""

    @abstractmethod
    def logits(self, params: StateDict, batch: Batch, head: Head) -> torch.Tensor:
        """Class logits of a batch under `params` (through torch.func.functional_call)."""

    @abstractmethod
    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        """Row batches for inference, grouped so that little padding is computed."""

    def train_mode(self, on: bool) -> None:
        """Dropout on for fine-tuning, off for scoring, masks and evaluation."""

    def linear_grams(self, params: StateDict, batch: Batch) -> StateDict:
        """XᵀX of the inputs of every linear layer under `params`, keyed by the layer's weight
        name, over the batch's real (unpadded) positions (RegMean's statistics)."""
        raise NotImplementedError(f"model family {type(self).__name__} offers no linear-layer inputs (RegMean)")


def save_module_with(module: torch.nn.Module, params: StateDict, out_dir: Path, tokenizer=None) -> None:
    """Write an HF `module` (save_pretrained, safetensors) with `params` in place of its own
    tensors, atomically, then put its own back: the module stays the pretrained model."""
    original = {n: p.detach().clone() for n, p in module.named_parameters()}
    with atomic_dir(out_dir) as tmp:
        _assign(module, params)
        try:
            module.save_pretrained(tmp, safe_serialization=True)
        finally:
            _assign(module, original)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def _assign(module: torch.nn.Module, params: StateDict) -> None:
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n in params:
                p.copy_(params[n])


def grams_of_linear_inputs(module: torch.nn.Module, params: StateDict, run, keep: torch.Tensor | None = None
                           ) -> StateDict:
    """XᵀX of the inputs of every nn.Linear of `module` whose weight is in `params`, while
    `run()` does a forward under `params` (forward pre-hooks fire under functional_call).
    `keep` (batch × positions, bool) drops padded positions."""
    grams: StateDict = {}
    handles = []

    def record(weight_name):
        def hook(_module, inputs):
            x = inputs[0]
            if keep is not None and x.dim() == 3 and x.shape[:2] == keep.shape:
                x = x[keep]
            x = x.reshape(-1, x.shape[-1]).float()
            gram = x.T @ x
            grams[weight_name] = grams[weight_name] + gram if weight_name in grams else gram
        return hook

    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and f"{name}.weight" in params:
            handles.append(sub.register_forward_pre_hook(record(f"{name}.weight")))
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return grams


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def attention_for(device: torch.device) -> str:
    """The HF attention implementation to load models with. On a CPU, torch's fused
    (flash) attention has a slow backward: with MiniLM's short sequences, forward + backward
    is about 1.3x faster with the plain matmul form ("eager"), and forward alone is the same.
    On a GPU the fused kernels win."""
    return "eager" if device.type == "cpu" else "sdpa"


def load_frozen(model_class, model_dir: Path, device: torch.device, **kwargs) -> torch.nn.Module:
    """An HF model on `device`, in eval mode, its parameters frozen: the stages compute with
    their own copies of the tensors (functional_call), never with the module's."""
    module = model_class.from_pretrained(model_dir, attn_implementation=attention_for(device), **kwargs)
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def use_bf16(choice: str, device: torch.device) -> bool:
    """precision: auto takes bf16 where the hardware computes it natively (CUDA with bf16, or a
    CPU with AVX512-BF16 / AMX, where it is about 1.5-2x faster than fp32); elsewhere bf16 is
    emulated and slower, so auto stays fp32 there."""
    if choice in ("fp32", "bf16"):
        return choice == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
