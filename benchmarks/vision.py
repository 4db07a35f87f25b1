"""A ViT-B/32-shaped image family for the benchmarks: transformers' CLIPVisionModel with the
B/32 config and random weights, behind calm's Family interface, so `calm.stages.merge.calm_step`
runs on it unchanged.

No wheel ships image weights and the benchmarks must run offline, so the weights are random:
the cost of a mask step does not depend on their values. Images are synthetic PNGs, decoded
once by `preprocess` (what the product does) and cached as uint8; the official-style
reference decodes them again for every batch (what the official loader does).
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from calm.families.base import Batch, Family, StateDict, load_frozen, save_module_with

# CLIP's preprocessing constants (open_clip / transformers CLIPImageProcessor).
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])
IMAGE_SIZE = 224


def make_tower(out: Path, seed: int = 0) -> Path:
    """A randomly initialised CLIP ViT-B/32 vision tower saved as an HF folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=IMAGE_SIZE, patch_size=32)
    CLIPVisionModel(config).save_pretrained(out, safe_serialization=True)
    return out


def synthetic_png(rng: np.random.Generator, size: int = 256) -> bytes:
    """A smooth random colour field plus pixel noise, PNG-encoded (about 150 KB: decoding
    it costs what decoding a photo of that size does)."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode(png: bytes) -> torch.Tensor:
    """PNG bytes → uint8 (3, 224, 224): resize the short side (bicubic), centre crop."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    scale = IMAGE_SIZE / min(w, h)
    img = img.resize((max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - IMAGE_SIZE) // 2, (img.height - IMAGE_SIZE) // 2
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) → CLIP-normalised float32, on the tensor's device."""
    mean, std = MEAN.to(pixels.device)[:, None, None], STD.to(pixels.device)[:, None, None]
    return (pixels.float() / 255.0 - mean) / std


class VisionTower(Family):
    def __init__(self, model_dir: str | Path, device: str = "auto", logit_scale: float = 100.0):
        from transformers import CLIPVisionModel

        super().__init__(model_dir, device)
        self.logit_scale = logit_scale
        self.module = load_frozen(CLIPVisionModel, self.model_dir, self.device)

    def pretrained_state(self) -> StateDict:
        return {n: p.detach() for n, p in self.module.named_parameters()}

    def save(self, params: StateDict, out_dir: Path) -> None:
        save_module_with(self.module, params, out_dir)

    def preprocess(self, items: list) -> dict[str, torch.Tensor]:
        return {"pixels": torch.stack([decode(b) for b in items])}

    def batch(self, cache: dict[str, torch.Tensor], rows: torch.Tensor) -> Batch:
        return {"pixel_values": normalise(cache["pixels"][rows].to(self.device))}

    def eval_order(self, cache: dict[str, torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
        n = len(cache["pixels"])
        for start in range(0, n, batch_size):
            yield torch.arange(start, min(n, start + batch_size))

    def embed(self, params: StateDict, batch: Batch) -> torch.Tensor:
        out = functional_call(self.module, params, args=(), kwargs={"pixel_values": batch["pixel_values"]})
        return F.normalize(out.pooler_output.float(), dim=-1)

    def build_head(self, classes: list[str], prompt: str) -> torch.Tensor:
        # No text tower here: a fixed random unit vector per class prompt stands in for its embedding.
        rows = []
        for c in classes:
            g = torch.Generator().manual_seed(zlib.crc32(prompt.format(c).encode()))
            rows.append(torch.randn(self.module.config.hidden_size, generator=g))
        return F.normalize(torch.stack(rows), dim=-1)

    def logits(self, params: StateDict, batch: Batch, head: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(params, batch) @ head.to(self.device).T

    def train_mode(self, on: bool) -> None:
        self.module.train(on)
