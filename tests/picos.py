"""Pico checkpoints and datasets in the formats the hub and the task-vectors release serve,
written by the tests themselves (nothing is downloaded).

- CLIP: a 2-layer CLIPModel (both towers) with a byte-level CLIP tokenizer, saved with
  save_pretrained; fine-tuned vision towers as transformers 5 saves a CLIPVisionModel (no key
  prefix) and as transformers 4.x did (every key under `vision_model.`).
- open_clip: a tiny open_clip CLIP inside an ImageEncoder of a module named `src.modeling`,
  saved whole with torch.save, as the release did; heads likewise.
- RoBERTa: a 2-layer RobertaForSequenceClassification with a byte-level tokenizer.
- Images: small PNGs whose colour gives the class away, saved with `datasets` (save_to_disk,
  parquet) or as an image folder.
"""
from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

IMAGE_SIZE = 32
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30)]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the base alphabet of CLIP and RoBERTa BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def roberta_tokenizer():
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in bytes_to_unicode().values():
        vocab[c] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[])


# --- CLIP (HF) -------------------------------------------------------------------------------

def make_clip(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=len(tokenizer) - 2,
                eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_clip_finetuned(pretrained: Path, out: Path, deltas: dict[str, float], convention: str) -> Path:
    """The pretrained vision tower plus `deltas` (tensor name → value added to every entry), saved
    as a CLIPVisionModel the way transformers 5 ("v5") or transformers 4.x ("v4") writes it."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(pretrained)
    tower = clip.vision_model
    with torch.no_grad():
        params = dict(tower.named_parameters())
        for name, delta in deltas.items():
            params[name].add_(delta)
    tower.save_pretrained(out)
    if convention == "v4":
        tensors = load_file(str(out / "model.safetensors"))
        save_file({f"vision_model.{k}": v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    elif convention != "v5":
        raise ValueError(convention)
    return out


# --- images ----------------------------------------------------------------------------------

def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 48), noise: int = 0, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = np.empty((size[1], size[0], 3), dtype=np.int16)
    array[:] = colour
    array += rng.integers(-noise, noise + 1, size=array.shape) if noise else 0
    buffer = io.BytesIO()
    Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_rows(n: int, classes: int, seed: int) -> dict[str, list]:
    return {"image": [{"bytes": png(COLOURS[i % classes], noise=20, seed=seed * 1000 + i), "path": None}
                      for i in range(n)],
            "label": [i % classes for i in range(n)]}


def image_dataset_dict(classes: list[str], n_train: int = 6, n_test: int = 12, seed: int = 0):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(image_rows(n_train, len(classes), seed), features=features),
        "test": datasets.Dataset.from_dict(image_rows(n_test, len(classes), seed + 1), features=features),
    })


def save_images_to_disk(out: Path, classes: list[str], **kw) -> Path:
    image_dataset_dict(classes, **kw).save_to_disk(str(out))
    return out


def save_images_parquet(out: Path, classes: list[str], **kw) -> Path:
    """The hub's layout: data/<split>-00000-of-00001.parquet."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in image_dataset_dict(classes, **kw).items():
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


# --- open_clip, pickled as the task-vectors release did ---------------------------------------

RELEASE_MODELING = textwrap.dedent('''
    import torch

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model, keep_lang=False):
            super().__init__()
            self.model = model
            self.train_preprocess = None
            self.val_preprocess = None
            self.cache_dir = None
            if not keep_lang and hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

        def forward(self, images):
            return self.model.encode_image(images)

    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights, biases=None):
            output_size, input_size = weights.shape
            super().__init__(input_size, output_size)
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(torch.zeros_like(self.bias) if biases is None else biases.clone())

        def forward(self, inputs):
            if self.normalize:
                inputs = inputs / inputs.norm(dim=-1, keepdim=True)
            return super().forward(inputs)
''')

OPEN_CLIP_CONFIG = {"embed_dim": 8,
                    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 16, "head_width": 8,
                                   "patch_size": 8},
                    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


def open_clip_arch(folder: Path) -> str:
    """An open_clip model config for the pico model ('local-dir:' form of model.open_clip_arch)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CONFIG}))
    return f"local-dir:{folder}"


class release_modules:
    """Makes a module `src.modeling` importable (as the release's repository did) while open."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        (self.root / "src").mkdir(parents=True, exist_ok=True)
        (self.root / "src" / "__init__.py").write_text("")
        (self.root / "src" / "modeling.py").write_text(RELEASE_MODELING)
        sys.path.insert(0, str(self.root))
        import src.modeling
        return src.modeling

    def __exit__(self, *exc):
        sys.path.remove(str(self.root))
        for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
            del sys.modules[name]


def make_release(root: Path, tasks: list[str], n_classes: int = 3, seed: int = 0) -> dict:
    """zeroshot.pt, <Task>/finetuned.pt, head_<Task>.pt for a pico open_clip ViT (QuickGELU, as
    the OpenAI weights are), pickled whole. Returns the paths and the original modules."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    out = {"dir": root / "ViT-pico", "modules": {}}
    with release_modules(root / "code") as modeling:
        clip = CLIP(OPEN_CLIP_CONFIG["embed_dim"], OPEN_CLIP_CONFIG["vision_cfg"], OPEN_CLIP_CONFIG["text_cfg"],
                    quick_gelu=True)
        zeroshot = modeling.ImageEncoder(clip)
        out["dir"].mkdir(parents=True, exist_ok=True)
        torch.save(zeroshot, out["dir"] / "zeroshot.pt")
        out["modules"]["zeroshot"] = zeroshot
        for i, task in enumerate(tasks):
            import copy
            encoder = copy.deepcopy(zeroshot)
            with torch.no_grad():
                for p in encoder.model.visual.parameters():
                    p.add_(0.01 * (i + 1) * torch.randn_like(p))
            (out["dir"] / task).mkdir(exist_ok=True)
            torch.save(encoder, out["dir"] / task / "finetuned.pt")
            weights = torch.nn.functional.normalize(torch.randn(n_classes, OPEN_CLIP_CONFIG["embed_dim"]), dim=-1)
            head = modeling.ClassificationHead(normalize=True, weights=100 * weights)
            torch.save(head, out["dir"] / f"head_{task}.pt")
            out["modules"][task] = (encoder, head)
    return out


# --- RoBERTa ----------------------------------------------------------------------------------

def make_roberta(out: Path, n_labels: int = 2, seed: int = 0, classifier: bool = True) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaModel

    torch.manual_seed(seed)
    tokenizer = roberta_tokenizer()
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, num_labels=n_labels,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = RobertaForSequenceClassification(config) if classifier else RobertaModel(config, add_pooling_layer=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
