"""The Makefile's `run` and `resume` as a user types them, in a folder laid out as a checkout
(links to this one's files, its own config/ and outputs), so nothing is written here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pico_workflow import ROOT, SNAKEMAKE, pico_config

VENV = Path(sys.executable).parent.parent


@pytest.fixture
def checkout(tmp_path) -> Path:
    """Its config/config.yaml is a valid config whose run fails in its first job (no model
    there): a run that falls back on it ends at once instead of running the default."""
    for name in ("Makefile", "Snakefile", "workflow", "profiles", "requirements.txt", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"source": str(tmp_path / "no-model")}, "data": {"tasks": ["a", "b"]}, "calm": {"sequential": ["b"]}}))
    return tmp_path


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # VENV: the interpreter running the tests; -o: never (re)build it
    return subprocess.run(["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed", *args],
                          capture_output=True, text=True, cwd=folder, timeout=600)


BROKEN_YAML = "data:\n  tasks: [a, b\ncalm: {}\n"
YAML_ERROR = "line 3 not valid YAML: expected ',' or ']', but got ':'"


def test_yaml_error_in_a_config_file_is_one_line_naming_file_and_line(checkout):
    (checkout / "my.yaml").write_text(BROKEN_YAML)
    proc = make(checkout, "run", "CONFIG=my.yaml")
    assert proc.returncode != 0
    assert f"error: my.yaml: {YAML_ERROR}" in proc.stderr.splitlines()
    assert not (checkout / ".snakemake").exists(), "Snakemake never started"


def test_yaml_error_in_the_default_config_is_one_line_naming_file_and_line(checkout):
    (checkout / "config" / "config.yaml").write_text(BROKEN_YAML)
    proc = make(checkout, "run")
    assert proc.returncode != 0
    assert f"error: config/config.yaml: {YAML_ERROR}" in proc.stderr.splitlines()


def test_resume_continues_the_killed_run_with_its_config(checkout, pico_model):
    """A run on a config of one's own, killed in its first job: `make resume` unlocks and
    finishes that run (its config and its targets), not the default config's."""
    (checkout / "my.yaml").write_text(yaml.safe_dump(pico_config(pico_model, checkout)))
    target = "resources/data/mood"  # a task of my.yaml only
    killed = subprocess.Popen(SNAKEMAKE + [target, "--cores", "1", "--configfile", "my.yaml"], cwd=checkout,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(checkout.glob("logs/**/*.log")):
        assert killed.poll() is None, "the run ended before its first job"
        assert time.monotonic() < deadline, "no job started within 2 minutes"
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert list(checkout.glob(".snakemake/locks/*")), "the kill left Snakemake's lock behind"

    proc = make(checkout, "resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"snakemake {target} --cores 1 --configfile my.yaml --rerun-incomplete" in proc.stdout  # make echoes it
    assert (checkout / target / "task.json").exists()
    assert not (checkout / "resources/models").exists() and not (checkout / "results").exists()
