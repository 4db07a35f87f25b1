"""RoBERTa sequence classifiers (RobertaForSequenceClassification), one per task.

Each task keeps its own classification head (dense → tanh → out_proj on the <s> token), read
from its fine-tuned checkpoint and never merged; the encoder is the merged part. Which encoder
tensors are merged and masked is `model.merge_prefixes` (Localize-and-Stitch masked only
`encoder.layer.`); the others keep their pretrained values in every merged model. Tensor names
are RobertaModel's (`embeddings.*`, `encoder.layer.*`); the `roberta.` prefix of a classifier
checkpoint is read the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call


from calm.checkpoints import check_finite

from .base import Batch, Family, StateDict, grams_of_linear_inputs, load_frozen, save_module_with
from calm.families.names import selected
from .text import by_length, padded_batch

ENCODER_PREFIXES = ("roberta.",)
HEAD_TENSORS = {"dense.weight": "classifier.dense.weight", "dense.bias": "classifier.dense.bias",
                "out_proj.weight": "classifier.out_proj.weight", "out_proj.bias": "classifier.out_proj.bias"}


class Roberta(Family):
    head_source = "checkpoint"
    key_prefixes = ENCODER_PREFIXES

    def __init__(self, model_dir: str | Path, max_length: int = 128, device: str = "auto",
                 merge_prefixes: tuple[str, ...] = ()):
        from transformers import AutoTokenizer, RobertaModel

        super().__init__(model_dir, device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.module = load_frozen(RobertaModel, self.model_dir, self.device, add_pooling_layer=False)
        self._names = selected([n for n, _ in self.module.named_parameters()], merge_prefixes)

    @classmethod
    def from_config(cls, model_dir, model, device="auto"):
        return cls(model_dir, max_length=model.max_length, device=device, merge_prefixes=tuple(model.merge_prefixes))

    # --- checkpoints -------------------------------------------------------------------
    def pretrained_state(self) -> StateDict:
        params = dict(self.module.named_parameters())
        return {n: params[n].detach() for n in self._names}

    def check_finetuned(self, tensors: StateDict, where: str) -> None:
        super().check_finetuned(tensors, where)
        self._head(tensors, where)

    def checkpoint_head(self, model_dir: Path) -> dict[str, torch.Tensor]:
        return self._head(self.read_checkpoint(Path(model_dir)), f"checkpoint {model_dir}")

    @staticmethod
    def _head(tensors: StateDict, where: str) -> dict[str, torch.Tensor]:
        missing = [k for k in HEAD_TENSORS.values() if k not in tensors]
        if missing:
            raise ValueError(f"{where} has no '{missing[0]}': not a RobertaForSequenceClassification")
        head = {name: tensors[key].float() for name, key in HEAD_TENSORS.items()}
        check_finite(head, f"head of the {where}")
        return head

    def save(self, params: StateDict, out_dir: Path) -> None:
        save_module_with(self.module, params, out_dir, self.tokenizer)

    # --- data ----------------------------------------------------------------------------
    def preprocess(self, texts: list) -> dict[str, torch.Tensor]:
        pairs = bool(texts) and isinstance(texts[0], tuple)
        first = [t[0] for t in texts] if pairs else list(texts)
        second = [t[1] for t in texts] if pairs else None
        enc = self.tokenizer(first, second, truncation=True, max_length=self.max_length,
                             padding="max_length", return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(torch.int32), "attention_mask": enc["attention_mask"].to(torch.int8)}

    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        return padded_batch(cache, rows, self.device)

    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        return by_length(cache, batch_size)

    # --- model ---------------------------------------------------------------------------
    def build_head(self, classes: list[str], prompt: str | list[str]) -> torch.Tensor:
        raise NotImplementedError("the roberta family reads each task's head from its fine-tuned checkpoint")

    def logits(self, params: StateDict, batch: Batch, head: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(self.module, params, args=(),
                              kwargs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        h = {k: v.to(self.device) for k, v in head.items()}
        x = torch.tanh(F.linear(out.last_hidden_state[:, 0], h["dense.weight"], h["dense.bias"]))
        return F.linear(x, h["out_proj.weight"], h["out_proj.bias"])

    def linear_grams(self, params: StateDict, batch: Batch) -> StateDict:
        def run():
            functional_call(self.module, params, args=(),
                            kwargs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        return grams_of_linear_inputs(self.module, params, run, keep=batch["attention_mask"].bool())

    def train_mode(self, on: bool) -> None:
        self.module.train(on)
