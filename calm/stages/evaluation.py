"""Evaluation: every method's per-example test predictions, and the main results table."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from calm import vectors
from calm.families.base import Family
from calm.io import write_parquet
from calm.merging.task_arithmetic import task_arithmetic
from calm.results_table import write_results
from calm.stages.family import predictions, task_vectors


def evaluate(family: Family, models: Mapping[str, str | Path], inputs: Mapping[str, str | Path],
             heads: Mapping[str, str | Path], batch_size: int, out: str | Path) -> pd.DataFrame:
    """Per-example test predictions of each task under its model (one merged model for all
    tasks, or each task's own fine-tuned model for the 'individual' reference)."""
    frames, loaded = [], {}
    for task, model_dir in models.items():
        key = str(model_dir)
        if key not in loaded:
            loaded.clear()  # one checkpoint in memory at a time
            loaded[key] = family.load_state(Path(model_dir))
        frames.append(predictions(family, loaded[key], task, inputs[task], heads[task], batch_size))
    frame = pd.concat(frames, ignore_index=True)
    write_parquet(frame, out)
    return frame


def evaluate_task_arithmetic(family: Family, model_dirs: list[str | Path], outs: Mapping[str, str | Path],
                             inputs: Mapping[str, str | Path], heads: Mapping[str, str | Path],
                             batch_size: int) -> dict[str, pd.DataFrame]:
    """The λ sweep of task arithmetic in one process: for each λ of `outs` (λ -> predictions
    file), the predictions `evaluate` gives for the checkpoint θ0 + λ Σ τ_t, built in memory.

    A job per λ would spend most of its time starting up, loading the fine-tuned models and
    writing a checkpoint that only its evaluation reads.
    """
    theta0 = family.pretrained_state()
    taus = list(task_vectors(family, theta0, model_dirs))
    frames = {}
    for lam, out in outs.items():
        params = vectors.add(theta0, task_arithmetic(taus, lam=float(lam)))
        frames[lam] = pd.concat([predictions(family, params, task, inputs[task], heads[task], batch_size,
                                             desc=f"λ={lam} {task}") for task in inputs], ignore_index=True)
        write_parquet(frames[lam], out)
    return frames


def table(evals: Mapping[str, str | Path], out_prefix: str | Path, sweep_prefix: str, insert_best_after: str,
          individual: str, target: str, bootstrap: int, seed: int) -> str:
    """The main results table from each row's predictions file (row name -> file): PREFIX.csv,
    .md and .json (paired-bootstrap intervals of `target` against every other row)."""
    rows = {name: pd.read_parquet(path) for name, path in evals.items()}
    return write_results(rows, out_prefix, sweep_prefix=sweep_prefix, insert_best_after=insert_best_after,
                         individual=individual, target=target, bootstrap=bootstrap, seed=seed)
