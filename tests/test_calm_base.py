"""calm.base: CALM's efficient part merges S with another single-model method, on the pico
checkpoint, against values worked out by hand."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from calm import artifacts
from calm.cli import main
from calm.config import ModelConfig
from calm.stages.family import open_family

# τ_1 and τ_2 on the first three entries of one tensor; every other entry of both is 0.
TAU1, TAU2 = [1.0, -2.0, 3.0], [2.0, 1.0, -1.0]


@pytest.fixture(scope="module")
def finetuned(pico_model, tmp_path_factory):
    """Two 'fine-tuned' checkpoints θ0 + τ_t, and the name of the tensor they change."""
    family = open_family(ModelConfig(max_length=16, logit_scale=10.0), pico_model, device="cpu")
    theta0 = family.pretrained_state()
    name = next(n for n, t in theta0.items() if t.dim() == 1 and t.numel() >= 3)
    folder = tmp_path_factory.mktemp("finetuned")
    for task, delta in (("one", TAU1), ("two", TAU2)):
        params = {n: t.detach().clone() for n, t in theta0.items()}
        params[name][:3] += torch.tensor(delta)
        family.save(params, folder / task)
    return name, [folder / "one", folder / "two"]


def _base(pico_model, models, out, *flags):
    argv = ["calm-base", "--pretrained", str(pico_model), "--model-max-length", "16", "--model-logit-scale", "10",
            "--device", "cpu", "--models", *map(str, models), "--out", str(out), *flags]
    assert main(argv) == 0
    return artifacts.read_vector(out)


def test_a_ties_base_is_the_ties_merge_of_s_worked_by_hand(pico_model, finetuned, tmp_path):
    """TIES at k = 0.2 keeps every non-zero entry (6 of far more than 30), elects the signs of
    τ1 + τ2 = (3, −1, 2): (+, −, +), sums the entries that agree, (1 + 2, −2, 3), and scales by λ = 0.5.
    Task arithmetic at λ = 0.3 would give 0.3 (3, −1, 2): a base that is ignored fails here."""
    name, models = finetuned
    tau = _base(pico_model, models, tmp_path / "base.safetensors", "--base", "ties", "--ties-k", "0.2",
                "--ties-lam", "0.5", "--lam", "0.3")
    assert torch.allclose(tau[name][:3], torch.tensor([1.5, -1.0, 1.5]), atol=1e-5)
    assert float(tau[name][3:].abs().max()) == 0.0
    assert all(float(t.abs().max()) == 0.0 for n, t in tau.items() if n != name)
    with safe_open(str(tmp_path / "base.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    assert meta["base"] == "ties" and meta["settings"] == {"k": 0.2, "lam": 0.5, "merge": "sum"}


def test_the_default_base_is_task_arithmetic_at_the_efficient_lambda(pico_model, finetuned, tmp_path):
    name, models = finetuned
    tau = _base(pico_model, models, tmp_path / "base.safetensors", "--lam", "0.3", "--ties-lam", "0.5")
    assert torch.allclose(tau[name][:3], torch.tensor([0.9, -0.3, 0.6]), atol=1e-5)
    with safe_open(str(tmp_path / "base.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["meta"]) == {"lambda": 0.3, "tasks": [str(m) for m in models]}


def test_a_data_driven_method_is_no_base(pico_model, finetuned, tmp_path, capsys):
    from calm.config import Config
    from pico_workflow import pico_config
    with pytest.raises(SystemExit):
        _base(pico_model, finetuned[1], tmp_path / "base.safetensors", "--base", "fisher")
    config = pico_config(pico_model, tmp_path, base="regmean")
    with pytest.raises(ValueError, match="calm.base 'regmean' is not a merge of task vectors alone"):
        Config.model_validate(config)
