"""Sentence-embedding text encoders (all-MiniLM-L6-v2 and any BERT-like HF encoder).

The embedding is the attention-masked mean of the last hidden states, L2-normalised, as
sentence-transformers computes it. Heads are frozen, CLIP-style: each class is the
normalised embedding of a prompt ("a news article about {}"), logits = scale · cosine.
Only the encoder is fine-tuned and merged, so every task vector has one shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import AutoModel, AutoTokenizer

from .base import (Batch, Family, StateDict, grams_of_linear_inputs, load_frozen,
                   save_module_with)


class TextEncoder(Family):
    def __init__(self, model_dir: str | Path, max_length: int = 64, logit_scale: float = 20.0,
                 device: str = "auto"):
        super().__init__(model_dir, device)
        self.max_length = max_length
        self.logit_scale = logit_scale
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.module = load_frozen(AutoModel, self.model_dir, self.device)

    # --- checkpoints -------------------------------------------------------------------
    def pretrained_state(self) -> StateDict:
        return {n: p.detach() for n, p in self.module.named_parameters()}

    def save(self, params: StateDict, out_dir: Path) -> None:
        save_module_with(self.module, params, out_dir, self.tokenizer)

    # --- data ----------------------------------------------------------------------------
    def preprocess(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             padding="max_length", return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(torch.int32),
                "attention_mask": enc["attention_mask"].to(torch.int8)}

    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        return padded_batch(cache, rows, self.device)

    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        return by_length(cache, batch_size)

    # --- model ---------------------------------------------------------------------------
    def embed(self, params: StateDict, batch: Batch) -> torch.Tensor:
        out = functional_call(self.module, params, args=(),
                              kwargs={"input_ids": batch["input_ids"],
                                      "attention_mask": batch["attention_mask"]})
        hidden = out.last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), dim=-1)

    def build_head(self, classes: list[str], prompt: str | list[str]) -> torch.Tensor:
        templates = [prompt] if isinstance(prompt, str) else list(prompt)
        per_template = []
        for template in templates:
            prompts = [template.format(c) for c in classes]
            cache = self.preprocess(prompts)
            with torch.inference_mode():
                per_template.append(self.embed(self.pretrained_state(),
                                               self.batch(cache, torch.arange(len(prompts)))))
        if len(per_template) == 1:
            return per_template[0].cpu()
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1).cpu()

    def logits(self, params: StateDict, batch: Batch, head: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(params, batch) @ head.to(self.device).T

    def train_mode(self, on: bool) -> None:
        self.module.train(on)

    def linear_grams(self, params: StateDict, batch: Batch) -> StateDict:
        return grams_of_linear_inputs(self.module, params, lambda: self.embed(params, batch),
                                      keep=batch["attention_mask"].bool())


def padded_batch(cache: dict[str, torch.Tensor], rows: torch.Tensor, device: torch.device) -> Batch:
    """Tokenised rows cut to their longest text (dynamic padding), on `device`."""
    mask = cache["attention_mask"][rows]
    length = int(mask.sum(dim=1).max()) if len(rows) else 1
    return {"input_ids": cache["input_ids"][rows, :length].long().to(device),
            "attention_mask": mask[:, :length].long().to(device)}


def by_length(cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Inference batches of texts of similar length, so that little padding is computed."""
    order = torch.argsort(cache["attention_mask"].sum(dim=1), stable=True)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
