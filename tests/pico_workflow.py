"""The pico workflow the end-to-end tests run: three tiny local tasks on the pico BERT, a config
sized to finish in minutes on 2 cores, and Snakemake run on it as a user would."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

WORDS = {
    "colour": (["red", "blue"], ["crimson cherry fire brick tomato", "sky ocean navy sapphire azure"]),
    "animal": (["cat", "dog", "bird"], ["meow purr whiskers kitten", "bark woof puppy leash", "wing feather beak nest"]),
    "mood": (["sad", "happy"], ["tears gloom grief sorrow", "joy smile laugh delight"]),
}


def write_tasks(folder: Path) -> dict:
    """Three small labelled CSV tasks whose words give the label away."""
    custom = {}
    for name, (classes, vocab) in WORDS.items():
        rows = []
        for i in range(60):
            label = i % len(classes)
            words = vocab[label].split()
            text = " ".join(words[(i + j) % len(words)] for j in range(3)) + f" item {i}"
            rows.append({"sentence": text, "y": classes[label]})
        path = folder / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        custom[name] = {"path": str(path), "text_column": "sentence", "label_column": "y",
                        "classes": classes, "prompt": "a text about {}"}
    return custom


# The methods the pico workflow merges: one of each way through the stages (data-free; scaled by λ
# or α and chosen on validation; each data adapter, one of them with a setting two methods read;
# a model per task; trained on unlabelled inputs). The other data-free methods take the first way with another
# function: test_baselines.py runs them through the merge stage in-process (every job of a
# workflow run costs seconds of imports on 2 cores).
PICO_METHODS = ["task_arithmetic", "ties", "localize_stitch", "adamerging_task", "adamerging_layer", "fisher",
                "regmean", "wudi", "emr", "adarank"]


def pico_config(model: Path, folder: Path, **calm) -> dict:
    return {
        "device": "cpu", "threads": 1,
        "model": {"family": "text_encoder", "source": str(model), "max_length": 16, "logit_scale": 10.0},
        "data": {"tasks": list(WORDS), "custom": write_tasks(folder), "n_train": 24, "n_pool": 18,
                 "n_test": 12, "seed": 0},
        "finetune": {"lr": 1e-3, "epochs": 1, "batch_size": 8},
        "score": {"batch_size": 16},
        "select": {"sampler": "cb_ems", "ratio": 0.9},
        "calm": {"sequential": ["mood"], "iterations": 3, "batch_size": 8, "batches_per_task": 1,
                 "lr": 1e6, **calm},
        "baselines": {"methods": list(PICO_METHODS), "task_arithmetic_lambda": 0.3, "lambda_grid": [0.3, 0.6],
                      "localize_stitch": {"n_shot": 8, "epochs": 2, "batch_size": 4, "lr": 1e6},
                      "adamerging": {"steps": 2, "batch_size": 4, "batches_per_task": 1},
                      "fisher": {"n_examples": 4}, "regmean": {"n_examples": 8, "batch_size": 4},
                      "wudi": {"steps": 3}, "adarank": {"steps": 2, "batch_size": 4}},
        "evaluate": {"batch_size": 16, "bootstrap": 200},
    }


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                       "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run."""
    stats = {}
    block = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            stats[m.group(1)] = int(m.group(2))
    return stats


MASK_ITERATIONS = 30
