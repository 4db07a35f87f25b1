"""CLIP in HF format (openai/clip-vit-*-patch*, FusionBench's tanganke/clip-vit-*_<task>).

Only the vision tower is fine-tuned, merged and masked; the pretrained visual projection and
text tower stay frozen. A task's head is built once from the pretrained text tower: per class,
every prompt template is encoded, L2-normalised, the embeddings averaged and renormalised;
logits = logit_scale · cos(projected image feature, class embedding), the scale being 100 as in
CLIP. Tensor names are those of the vision tower (`embeddings.*`, `encoder.*`, …); a checkpoint
saved with the `vision_model.` prefix (transformers 4.x, or a whole CLIPModel) is read the same.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call

from calm.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, decode_images, normalise
from calm.io import atomic_dir

from .base import Batch, Family, StateDict, grams_of_linear_inputs, load_frozen
from calm.families.names import selected

VISION_PREFIXES = ("vision_model.",)


class ClipHF(Family):
    modality = "image"
    key_prefixes = VISION_PREFIXES

    def __init__(self, model_dir: str | Path, logit_scale: float = 100.0, device: str = "auto",
                 merge_prefixes: tuple[str, ...] = ()):
        from transformers import AutoTokenizer, CLIPModel

        super().__init__(model_dir, device)
        self.logit_scale = logit_scale
        self.clip = load_frozen(CLIPModel, self.model_dir, self.device)
        self.vision = self.clip.vision_model
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.image_size = int(self.clip.config.vision_config.image_size)
        self.mean, self.std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        processor = self.model_dir / "preprocessor_config.json"
        if processor.exists():
            spec = json.loads(processor.read_text())
            self.mean = tuple(spec.get("image_mean", self.mean))
            self.std = tuple(spec.get("image_std", self.std))
        self._names = selected([n for n, _ in self.vision.named_parameters()], merge_prefixes)

    @classmethod
    def from_config(cls, model_dir, model, device="auto"):
        return cls(model_dir, logit_scale=model.logit_scale, device=device,
                   merge_prefixes=tuple(model.merge_prefixes))

    # --- checkpoints -------------------------------------------------------------------
    def pretrained_state(self) -> StateDict:
        params = dict(self.vision.named_parameters())
        return {n: params[n].detach() for n in self._names}

    def save(self, params: StateDict, out_dir: Path) -> None:
        """A CLIPVisionModel folder (transformers' own format), the pretrained tensors where
        `params` has none."""
        from transformers import CLIPVisionModel

        tower = CLIPVisionModel(self.clip.config.vision_config)
        state = {n: p.detach().cpu() for n, p in self.vision.named_parameters()}
        state.update({n: t.detach().cpu() for n, t in params.items()})
        tower.load_state_dict(state, strict=False)
        missing = [n for n, _ in tower.named_parameters() if n not in state]
        if missing:
            raise ValueError(f"vision tower parameter '{missing[0]}' has no value to save")
        with atomic_dir(out_dir) as tmp:
            tower.save_pretrained(tmp, safe_serialization=True)

    # --- data ----------------------------------------------------------------------------
    def preprocess(self, images: list[bytes]) -> dict[str, torch.Tensor]:
        return {"pixels": decode_images(images, self.image_size)}

    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        pixels = cache["pixels"][rows].to(self.device, non_blocking=True)
        return {"pixel_values": normalise(pixels, self.mean, self.std)}

    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        n = len(cache["pixels"])
        for start in range(0, n, batch_size):
            yield torch.arange(start, min(n, start + batch_size))

    # --- model ---------------------------------------------------------------------------
    def image_features(self, params: StateDict, batch: Batch) -> torch.Tensor:
        out = functional_call(self.vision, params, args=(), kwargs={"pixel_values": batch["pixel_values"]})
        return F.normalize(self.clip.visual_projection(out.pooler_output).float(), dim=-1)

    def text_features(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=self.clip.config.text_config.max_position_embeddings,
                                 return_tensors="pt").to(self.device)
            out = self.clip.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            chunks.append(F.normalize(self.clip.text_projection(out.pooler_output).float(), dim=-1))
        return torch.cat(chunks)

    def build_head(self, classes: list[str], prompt: str | list[str]) -> torch.Tensor:
        templates = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [t.format(c) for c in classes for t in templates]
        with torch.inference_mode():
            emb = self.text_features(texts).view(len(classes), len(templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1).cpu()

    def logits(self, params: StateDict, batch: Batch, head: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(params, batch) @ head.to(self.device).T

    def linear_grams(self, params: StateDict, batch: Batch) -> StateDict:
        return grams_of_linear_inputs(self.vision, params, lambda: self.image_features(params, batch))
