"""Shared fixtures: a pico BERT checkpoint in the real HF format, with the real tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from calm.testing import make_pico_bert
from pico_workflow import MASK_ITERATIONS, pico_config, snakemake


@pytest.fixture(scope="session")
def pico_model(tmp_path_factory) -> Path:
    return make_pico_bert(tmp_path_factory.mktemp("pico") / "model")


def same_tensors(a: Path, b: Path) -> bool:
    """Two safetensors files hold the same names, tensors (bitwise) and metadata. Not a byte
    comparison: safetensors writes a metadata dict of several keys (a mask's per-tensor
    shapes) in hash order, which differs from one process to the next."""
    from safetensors import safe_open
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))


# One run of the pico workflow, shared by every test file that reads or extends it.
@pytest.fixture(scope="session")
def pico_run(tmp_path_factory, pico_model):
    work = tmp_path_factory.mktemp("e2e")
    # 30 mask iterations checkpointed every 5: the kill test stops the step in between.
    (work / "config.yaml").write_text(yaml.safe_dump(pico_config(pico_model, work, iterations=MASK_ITERATIONS,
                                                                 checkpoint_every=5)))
    snakemake(work)
    return work


# `make test` runs two pytest workers (pytest-xdist), and a worker builds each session or module
# fixture it needs itself. So the files that read the shared pico run go to one worker together,
# and every other file goes whole to one worker (its module fixtures, such as the CLIP end-to-end
# run or the Slurm runs, are then built once). (xdist's own loadgroup marks did not group here.)
PICO_RUN_FILES = {p.name for p in Path(__file__).parent.glob("test_*.py") if "pico_run" in p.read_text()}


# optionalhook: the GPU check's `pytest -m cuda` runs where pytest-xdist is not installed
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "pico_run" if Path(path).name in PICO_RUN_FILES else path

    return SharedRunScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The shared pico run's files first: theirs is the longest chain of tests, so it starts at
    once while the other worker takes the rest (a stable sort: each file keeps its order)."""
    items.sort(key=lambda item: item.path.name not in PICO_RUN_FILES)
