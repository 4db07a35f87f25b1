"""The open_clip family on a pico model pickled the way the task-vectors release pickled its
checkpoints (whole modules of a `src.modeling` that is not importable at load time)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("open_clip", reason="open-clip-torch (and torchvision) are not installed; "
                    "pip install -r requirements.txt installs them")

from calm import vectors  # noqa: E402
from calm.config import ModelConfig  # noqa: E402
from calm.families.openclip import load_release_file  # noqa: E402
from calm.stages.fetch import fetch_finetuned, fetch_model  # noqa: E402
from calm.stages.family import open_family  # noqa: E402

from picos import make_release, open_clip_arch, png  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    out = make_release(root, ["Alpha", "Beta"])
    out["arch"] = open_clip_arch(root / "arch")
    return out


def _model(release, trust=True) -> ModelConfig:
    return ModelConfig(family="open_clip", open_clip_arch=release["arch"], trust_pickle=trust)


def test_a_pickled_module_is_refused_without_trust_pickle(release, tmp_path):
    with pytest.raises(ValueError, match="set model.trust_pickle: true"):
        fetch_model(str(release["dir"] / "zeroshot.pt"), tmp_path / "pretrained", _model(release, trust=False))
    assert not (tmp_path / "pretrained").exists()


def test_a_plain_state_dict_loads_without_trust(release, tmp_path):
    state = {k: v.clone() for k, v in release["modules"]["zeroshot"].state_dict().items()}
    torch.save(state, tmp_path / "state.pt")
    loaded = load_release_file(tmp_path / "state.pt", trust_pickle=False)
    assert torch.equal(loaded["model.visual.conv1.weight"], state["model.visual.conv1.weight"])


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    model = _model(release)
    fetch_model(str(release["dir"] / "zeroshot.pt"), out / "pretrained", model)
    fetch_finetuned(str(release["dir"] / "Alpha" / "finetuned.pt"), out / "Alpha", model, out / "pretrained",
                           head=str(release["dir"] / "head_Alpha.pt"))
    return out


def test_conversion_writes_safetensors_only_and_keeps_every_tower_tensor(release, converted):
    from safetensors.torch import load_file

    # (.calm-output: the mark of a folder a stage wrote, which only a stage may replace)
    assert sorted(p.name for p in (converted / "Alpha").iterdir()) == [".calm-output", "config.json",
                                                                        "head.safetensors", "model.safetensors"]
    original = release["modules"]["Alpha"][0].model.visual.state_dict()
    stored = load_file(str(converted / "Alpha" / "model.safetensors"))
    assert set(stored) == set(original)
    assert all(torch.equal(stored[k], original[k]) for k in original)


def test_logits_equal_the_release_classifier_on_the_same_images(release, converted):
    family = open_family(_model(release), converted / "pretrained", device="cpu")
    assert family.config["quick_gelu"] is True
    head = family.checkpoint_head(converted / "Alpha")
    cache = family.preprocess([png((200, 10, 10)), png((10, 10, 200), size=(60, 40))])
    batch = family.batch(cache, torch.arange(2))
    ours = family.logits(family.load_state(converted / "Alpha"), batch, head)
    encoder, release_head = release["modules"]["Alpha"]
    with torch.no_grad():
        reference = release_head(encoder(batch["pixel_values"]))
    assert torch.allclose(ours, reference, atol=1e-4)


def test_task_vector_is_the_difference_of_the_release_towers(release, converted):
    family = open_family(_model(release), converted / "pretrained", device="cpu")
    tau = vectors.task_vector(family.load_state(converted / "Alpha"), family.pretrained_state())
    before = release["modules"]["zeroshot"].model.visual.state_dict()
    after = release["modules"]["Alpha"][0].model.visual.state_dict()
    name = "transformer.resblocks.1.attn.in_proj_weight"
    assert torch.allclose(tau[name], after[name] - before[name])


def test_a_class_the_installed_packages_lack_unpickles_as_a_placeholder_keeping_its_tensors(tmp_path):
    import sys
    import textwrap

    (tmp_path / "gone_pkg").mkdir()
    (tmp_path / "gone_pkg" / "__init__.py").write_text(textwrap.dedent('''
        import torch

        class QuickGELU(torch.nn.Module):
            def forward(self, x):
                return x * torch.sigmoid(1.702 * x)

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(2, 2)
                self.act = QuickGELU()
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_pkg
        block = gone_pkg.Block()
        torch.save(block, tmp_path / "block.pt")
    finally:
        sys.path.remove(str(tmp_path))
        del sys.modules["gone_pkg"]
    loaded = load_release_file(tmp_path / "block.pt", trust_pickle=True)
    assert type(loaded).__name__ == "Block" and type(loaded.act).__name__ == "QuickGELU"
    assert torch.equal(loaded.state_dict()["fc.weight"], block.fc.weight)



class _Note:
    """A harmless object of a class torch.load(weights_only=True) does not know."""


def test_trust_pickle_reaches_the_open_clip_load_state(release, converted, tmp_path):
    """A converted tower re-saved as a .bin beside a pickled object: refused, unless trusted."""
    from safetensors.torch import load_file

    tensors = load_file(str(converted / "Alpha" / "model.safetensors"))
    (tmp_path / "bin").mkdir()
    torch.save({**tensors, "note": _Note()}, tmp_path / "bin" / "finetuned.bin")
    refusing = open_family(_model(release, trust=False), converted / "pretrained", device="cpu")
    with pytest.raises(ValueError, match=r"finetuned.bin: holds the Python object [\w.]*_Note, which"):
        refusing.load_state(tmp_path / "bin")
    expected = refusing.load_state(converted / "Alpha")
    loaded = open_family(_model(release), converted / "pretrained", device="cpu").load_state(tmp_path / "bin")
    assert set(loaded) == set(expected) and all(torch.equal(loaded[n], expected[n]) for n in expected)
