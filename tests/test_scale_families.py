"""The paper-scale families on pico checkpoints written in the real formats: HF CLIP (both key
conventions), the open_clip release's pickles, RoBERTa classifiers; and image preprocessing."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from calm import artifacts, vectors
from calm.config import Config, ModelConfig
from calm.data.images import decode_images, resize_center_crop
from calm.stages.fetch import fetch_finetuned
from calm.stages.prepare import build_head, preprocess
from calm.stages.family import open_family

from picos import make_clip, make_clip_finetuned, make_roberta, png


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "pretrained")


@pytest.fixture(scope="module")
def clip_family(clip_dir):
    return open_family(ModelConfig(family="clip_hf", logit_scale=100.0), clip_dir, device="cpu")


# --- images ----------------------------------------------------------------------------------

def test_resize_then_center_crop_keeps_the_middle_of_the_long_side():
    from PIL import Image

    # 64 wide × 32 high: left quarter red, middle half green, right quarter blue. Shorter side
    # 32 → 16 makes it 32 × 16; the central 16 columns are the green middle half.
    array = torch.zeros(32, 64, 3, dtype=torch.uint8)
    array[:, :16] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    array[:, 16:48] = torch.tensor([0, 255, 0], dtype=torch.uint8)
    array[:, 48:] = torch.tensor([0, 0, 255], dtype=torch.uint8)
    out = resize_center_crop(Image.fromarray(array.numpy()), 16)
    assert out.shape == (16, 16, 3)
    assert (out[:, 1:15] == [0, 255, 0]).all()


def test_decoded_images_are_uint8_channels_first():
    pixels = decode_images([png((10, 20, 30), size=(40, 48)), png((200, 100, 0), size=(20, 20))], 8, threads=1)
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 8, 8)
    assert pixels[0, :, 4, 4].tolist() == [10, 20, 30]
    assert pixels[1, :, 0, 0].tolist() == [200, 100, 0]


# --- HF CLIP ---------------------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["v4", "v5"])
def test_clip_task_vector_pairs_tensors_under_either_key_convention(clip_family, clip_dir, tmp_path, convention):
    deltas = {"encoder.layers.1.mlp.fc1.weight": 0.5, "post_layernorm.bias": -0.25}
    folder = make_clip_finetuned(clip_dir, tmp_path / convention, deltas, convention)
    keys = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(folder / "model.safetensors")))
    assert all(k.startswith("vision_model.") for k in keys) == (convention == "v4")
    theta0 = clip_family.pretrained_state()
    tau = vectors.task_vector(clip_family.load_state(folder), theta0)
    assert set(tau) == set(theta0)
    for name, t in tau.items():
        expected = deltas.get(name, 0.0)
        assert torch.allclose(t, torch.full_like(t, expected), atol=1e-6), name


def test_clip_reads_a_whole_clipmodel_checkpoint_as_its_vision_tower(clip_family, clip_dir):
    tau = vectors.task_vector(clip_family.load_state(clip_dir), clip_family.pretrained_state())
    assert all(float(t.abs().max()) == 0.0 for t in tau.values())


def test_clip_logits_match_clipmodel_with_a_single_template(clip_family, clip_dir):
    from transformers import CLIPModel

    classes, template = ["red", "blue", "green"], "a photo of {}."
    head = clip_family.build_head(classes, template)
    cache = clip_family.preprocess([png((220, 30, 30)), png((30, 30, 220), size=(50, 30))])
    batch = clip_family.batch(cache, torch.arange(2))
    ours = clip_family.logits(clip_family.pretrained_state(), batch, head)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
        text = clip_family.tokenizer([template.format(c) for c in classes], padding=True, return_tensors="pt")
        reference = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                          pixel_values=batch["pixel_values"]).logits_per_image
    assert torch.allclose(ours, reference, atol=1e-4)


def test_clip_head_averages_normalised_template_embeddings_then_renormalises(clip_family):
    classes = ["cat", "dog"]
    one = clip_family.build_head(classes, ["a {}."])
    two = clip_family.build_head(classes, ["the {} here."])
    both = clip_family.build_head(classes, ["a {}.", "the {} here."])
    expected = torch.nn.functional.normalize(one + two, dim=-1)  # one and two are unit rows
    assert torch.allclose(both, expected, atol=1e-5)
    assert torch.allclose(both.norm(dim=1), torch.ones(2), atol=1e-5)


def test_clip_saved_model_is_a_vision_tower_transformers_loads(clip_family, clip_dir, tmp_path):
    from transformers import CLIPVisionModel

    params = clip_family.pretrained_state()
    params["encoder.layers.0.self_attn.q_proj.bias"] = params["encoder.layers.0.self_attn.q_proj.bias"] + 1.0
    clip_family.save(params, tmp_path / "merged")
    loaded = dict(CLIPVisionModel.from_pretrained(tmp_path / "merged").named_parameters())
    assert torch.equal(loaded["encoder.layers.0.self_attn.q_proj.bias"], params["encoder.layers.0.self_attn.q_proj.bias"])
    assert torch.equal(clip_family.load_state(tmp_path / "merged")["embeddings.class_embedding"],
                       params["embeddings.class_embedding"])


def test_merge_prefixes_restrict_the_merged_tensors(clip_dir):
    family = open_family(ModelConfig(family="clip_hf", merge_prefixes=["encoder.layers.1."]), clip_dir,
                                device="cpu")
    names = set(family.pretrained_state())
    assert names and all(n.startswith("encoder.layers.1.") for n in names)


# --- RoBERTa ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def roberta_dirs(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    import shutil

    root = tmp_path_factory.mktemp("roberta")
    pretrained = make_roberta(root / "pretrained", n_labels=2, seed=0)
    finetuned = root / "finetuned"
    shutil.copytree(pretrained, finetuned)
    tensors = load_file(str(finetuned / "model.safetensors"))
    tensors["roberta.encoder.layer.0.output.dense.bias"] = tensors["roberta.encoder.layer.0.output.dense.bias"] + 2.0
    tensors["roberta.embeddings.word_embeddings.weight"] = tensors["roberta.embeddings.word_embeddings.weight"] + 1.0
    tensors["classifier.out_proj.bias"] = torch.tensor([0.5, -0.5])
    save_file(tensors, str(finetuned / "model.safetensors"), metadata={"format": "pt"})
    return pretrained, finetuned


def test_roberta_masks_only_encoder_layers_and_keeps_its_own_head(roberta_dirs):
    pretrained, finetuned = roberta_dirs
    family = open_family(ModelConfig(family="roberta", merge_prefixes=["encoder.layer."], max_length=16),
                                pretrained, device="cpu")
    theta0 = family.pretrained_state()
    assert theta0 and all(n.startswith("encoder.layer.") for n in theta0)
    tau = vectors.task_vector(family.load_state(finetuned), theta0)
    # the embedding change is outside the filter: not part of the task vector
    assert torch.allclose(tau["encoder.layer.0.output.dense.bias"], torch.full((16,), 2.0))
    assert sum(float(t.abs().sum()) for n, t in tau.items() if n != "encoder.layer.0.output.dense.bias") == 0.0
    head = family.checkpoint_head(finetuned)
    assert head["out_proj.bias"].tolist() == [0.5, -0.5]


def test_roberta_logits_match_the_sequence_classifier(roberta_dirs, tmp_path):
    from transformers import RobertaForSequenceClassification

    pretrained, finetuned = roberta_dirs
    family = open_family(ModelConfig(family="roberta", max_length=16), pretrained, device="cpu")
    artifacts.write_head(family.checkpoint_head(finetuned), ["neg", "pos"], tmp_path / "head.safetensors")
    head = artifacts.read_head(tmp_path / "head.safetensors")
    cache = family.preprocess([("good film", "yes"), ("bad", "no at all")])
    batch = family.batch(cache, torch.arange(2))
    ours = family.logits(family.load_state(finetuned), batch, head)
    model = RobertaForSequenceClassification.from_pretrained(finetuned).eval()
    with torch.no_grad():
        reference = model(**batch).logits
    assert torch.allclose(ours, reference, atol=1e-5)


# --- .bin checkpoints and model.trust_pickle ----------------------------------------------------

class _Note:
    """A harmless object of a class torch.load(weights_only=True) does not know."""


def as_bin(folder: Path, out: Path, wrap: bool = False) -> Path:
    """`folder`'s tensors as a pytorch_model.bin that also pickles a _Note (or, `wrap`, only the
    tensors, under `state_dict` as training checkpoints keep them)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    out.mkdir()
    torch.save({"state_dict": tensors} if wrap else {**tensors, "note": _Note()}, out / "pytorch_model.bin")
    return out


def test_trust_pickle_reaches_every_read_of_a_fine_tuned_checkpoint(clip_dir, roberta_dirs, tmp_path):
    """A family opened with model.trust_pickle: true loads a .bin that holds a Python object;
    without it the file is refused, naming the object."""
    clip_ft = make_clip_finetuned(clip_dir, tmp_path / "clip-ft", {"post_layernorm.bias": 0.1}, "v5")
    cases = [(ModelConfig(family="clip_hf"), clip_dir, clip_ft),
             (ModelConfig(family="roberta", max_length=16), *roberta_dirs)]
    for model, pretrained, finetuned in cases:
        pickled = as_bin(finetuned, tmp_path / f"{model.family}-bin")
        refusing = open_family(model, pretrained, device="cpu")
        with pytest.raises(ValueError, match=r"pytorch_model.bin: holds the Python object [\w.]*_Note, which"):
            refusing.load_state(pickled)
        trusting = open_family(model.model_copy(update={"trust_pickle": True}), pretrained, device="cpu")
        expected = refusing.load_state(finetuned)
        loaded = trusting.load_state(pickled)
        assert set(loaded) == set(expected) and all(torch.equal(loaded[n], expected[n]) for n in expected)
        if model.family == "roberta":
            with pytest.raises(ValueError, match="holds the Python object"):
                refusing.checkpoint_head(pickled)
            assert trusting.checkpoint_head(pickled)["out_proj.bias"].tolist() == [0.5, -0.5]


def test_a_fetched_bin_checkpoint_is_unwrapped_from_its_state_dict_and_converted(clip_dir, tmp_path):
    from safetensors.torch import load_file

    served = make_clip_finetuned(clip_dir, tmp_path / "served", {"post_layernorm.bias": 0.1}, "v5")
    wrapped = as_bin(served, tmp_path / "wrapped", wrap=True)
    fetch_finetuned(str(wrapped), tmp_path / "fetched", ModelConfig(family="clip_hf"), clip_dir)
    # (.calm-output: the mark of a folder a stage wrote, which only a stage may replace)
    assert sorted(p.name for p in (tmp_path / "fetched").iterdir()) == [".calm-output", "model.safetensors"]
    ours, original = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "fetched", served))
    assert set(ours) == set(original) and all(torch.equal(ours[k], original[k]) for k in original)


# --- config rules ------------------------------------------------------------------------------

def _config(model: dict) -> dict:
    return {"model": model, "data": {"tasks": ["a", "b"]}, "calm": {"sequential": ["b"]}}


def test_checkpoint_head_families_need_every_fine_tuned_checkpoint():
    with pytest.raises(ValueError, match="takes its task heads from fine-tuned checkpoints"):
        Config.model_validate(_config({"family": "roberta"}))
    with pytest.raises(ValueError, match=r"gives no checkpoint for \['b'\]"):
        Config.model_validate(_config({"family": "clip_hf", "finetuned": {"a": "x"}}))
    with pytest.raises(ValueError, match=r"model.heads gives no head_<Task>.pt for \['b'\]"):
        Config.model_validate(_config({"family": "open_clip", "finetuned": {"a": "x", "b": "y"},
                                       "heads": {"a": "h"}}))


def test_every_family_agrees_with_the_config_on_where_heads_come_from():
    from calm.config import CHECKPOINT_HEADS
    from calm.families import FAMILIES

    assert {n for n, f in FAMILIES.items() if f.head_source == "checkpoint"} == set(CHECKPOINT_HEADS)


def test_prepare_takes_a_checkpoint_family_head_from_the_fine_tuned_model(roberta_dirs, tmp_path):
    import pandas as pd
    from calm.io import write_json, write_parquet

    pretrained, finetuned = roberta_dirs
    family = open_family(ModelConfig(family="roberta", max_length=16), pretrained, device="cpu")
    frame = pd.DataFrame({"idx": [0, 1, 2], "text": ["a", "b", "c"], "text_pair": ["x", "y", "z"], "label": [0, 1, 0]})
    for split in ("pool", "test"):
        write_parquet(frame, tmp_path / f"{split}.parquet")
    write_json({"name": "pairs", "classes": ["no", "yes"], "prompt": "{}", "splits": ["pool", "test"]},
               tmp_path / "task.json")
    with pytest.raises(ValueError, match="--finetuned"):
        build_head(family, tmp_path, tmp_path / "head.safetensors")
    build_head(family, tmp_path, tmp_path / "head.safetensors", model_dir=finetuned)
    assert artifacts.read_head(tmp_path / "head.safetensors")["out_proj.bias"].tolist() == [0.5, -0.5]
    preprocess(family, tmp_path, tmp_path / "inputs.safetensors")
    pool = artifacts.read_inputs(tmp_path / "inputs.safetensors", "pool")
    # pairs are encoded as <s> a </s></s> x </s>: 6 tokens with the byte-level vocabulary
    assert pool["attention_mask"].sum(dim=1).tolist() == [6, 6, 6]


def test_clip_linear_grams_are_the_gram_of_each_linear_input(clip_family, clip_dir):
    from transformers import CLIPVisionModel

    cache = clip_family.preprocess([png((220, 30, 30)), png((30, 30, 220), size=(50, 30))])
    batch = clip_family.batch(cache, torch.arange(2))
    params = clip_family.pretrained_state()
    grams = clip_family.linear_grams(params, batch)
    linear = {f"{n}.weight" for n, m in clip_family.vision.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(grams) == linear & set(params)
    # Reference: the input of layer 0's q_proj is layer_norm1's output, over every position.
    model = CLIPVisionModel.from_pretrained(clip_dir).eval()
    seen = {}
    norm = next(m for n, m in model.named_modules() if n.endswith("layers.0.layer_norm1"))
    norm.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model(pixel_values=batch["pixel_values"])
    x = seen["x"].reshape(-1, seen["x"].shape[-1])
    name = next(n for n in grams if n.endswith("layers.0.self_attn.q_proj.weight"))
    assert torch.allclose(grams[name], x.T @ x, rtol=1e-4, atol=1e-4)
