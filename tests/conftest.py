"""Shared fixtures: a pico BERT checkpoint in the real HF format, with the real tokenizer."""
from __future__ import annotations

import os
import shutil
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


# One run of the pico workflow, shared by every test file that reads or extends it. Under
# `make test`'s two pytest workers, each worker builds its own session fixtures: the first to
# ask builds this run, under a lock, in the folder the workers share; the other then reads it.
@pytest.fixture(scope="session")
def pico_run(tmp_path_factory, pico_model):
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    work, done = shared / "e2e", shared / "e2e.done"
    with FileLock(str(shared / "e2e.lock")):
        if not done.exists():
            shutil.rmtree(work, ignore_errors=True)  # a failed build's remains
            work.mkdir()
            # 30 mask iterations checkpointed every 5: the kill test stops the step in between.
            (work / "config.yaml").write_text(yaml.safe_dump(pico_config(
                pico_model, work, iterations=MASK_ITERATIONS, checkpoint_every=5)))
            snakemake(work)
            done.touch()
    return work


# The order in which the two workers take the test files (each file whole: its module fixtures,
# such as the CLIP end-to-end run, are built once): the longest first, so that neither waits at
# the end; test_workflow.py first, since it builds the shared pico run, and the other files that
# read it last, when it stands.
FIRST = ["test_workflow.py", "test_scale_workflow.py", "test_device_check.py", "test_reliability.py"]
LAST = ["test_seeds.py"]


def _rank(name: str) -> tuple[int, int]:
    if name in FIRST:
        return 0, FIRST.index(name)
    return (2, LAST.index(name)) if name in LAST else (1, 0)


# optionalhook: the GPU check's `pytest -m cuda` runs where pytest-xdist is not installed
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        """xdist's per-module scheduling, in the collection's order (not by test count)."""

        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False
    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Files in the order above (a stable sort: each file keeps its order)."""
    items.sort(key=lambda item: _rank(item.path.name))
