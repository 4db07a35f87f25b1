"""Evaluation: every method's per-example test predictions, the main results table, and the
table over fine-tuning seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from calm import provenance, vectors
from calm.families.base import Family
from calm.io import write_json, write_parquet
from calm.config.baselines import BaselinesConfig
from calm.merging.task_arithmetic import task_arithmetic
from calm.methods import METHODS
from calm.metrics import accuracy, chosen_scale, tie_safe
from calm.results_table import seeds_results, write_results, write_seeds
from calm.stages.baselines import ADAPTERS, check_needs
from calm.stages.family import predictions, scale_on_validation, task_vectors


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
    write_parquet(frame, out, provenance.parquet_metadata(provenance.family_record(family)))
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
    frames, record = {}, provenance.parquet_metadata(provenance.family_record(family))
    for lam, out in outs.items():
        params = vectors.add(theta0, task_arithmetic(taus, lam=float(lam)))
        frames[lam] = pd.concat([predictions(family, params, task, inputs[task], heads[task], batch_size,
                                             desc=f"λ={lam} {task}") for task in inputs], ignore_index=True)
        write_parquet(frames[lam], out, record)
    return frames


def evaluate_validated(family: Family, model_dir: str | Path | None, scale: float, grid: list[float],
                       val_inputs: Mapping[str, str | Path], inputs: Mapping[str, str | Path],
                       heads: Mapping[str, str | Path], batch_size: int, out: str | Path,
                       curve_out: str | Path, method: str = "", model_dirs: list[str | Path] | None = None,
                       cfg: BaselinesConfig | None = None, option_grid: list[float] | None = None,
                       origin_dir: str | Path | None = None, option_draws: int = 0,
                       scores: Mapping[str, str | Path] | None = None) -> dict:
    """A merge's scale chosen on the validation split, and its test predictions at that scale.

    `model_dir` is the merge at `scale` (θ0 + s·v for a method linear in its scale s, λ or α):
    its direction v = (θ − θ0) / s is read once, never rebuilt, and θ0 + g·v evaluated on every
    task's val split (`val_inputs`) for each g of `grid`. The g with the highest average val
    accuracy (the first on a tie) is evaluated on the test splits of `inputs`; `curve_out` gets
    every g's val accuracy and the choice. `origin_dir`, for a method affine in its scale (calm.methods
    `origin`): its merge at scale 0, θ_o, from which v = (θ − θ_o) / s and θ_o + g·v start instead of θ0.

    `option_grid` (with `method`, its fine-tuned `model_dirs` and `cfg`): the method's option
    that is not linear (TIES' k, the TALL masks' λ_t; calm.methods `option`) is chosen too. Each
    value's merge is built once, at scale 1, from the task vectors, and rescaled over `grid`;
    the (value, g) with the best val accuracy wins (the first in grid order on a tie). A method
    whose option is chosen per task (calm.methods `option_by_task`: the TALL masks' λ_t) takes
    each task's value from that task's own val split instead (`options_by_task`), and its one
    merge at those values is rescaled over `grid`. `model_dirs` are in the order of the tasks.

    `option_draws` instead of `option_grid`: that many values drawn as the method's paper draws
    them (calm.methods `option_draws`: Fisher's per-model coefficients). A data-driven method
    (Fisher) computes what it learns from its data (the Fishers, on the pool of `inputs` with the
    pseudo-labels of `scores`) once, through its adapter, for every value.
    """
    if set(val_inputs) != set(inputs):
        raise ValueError(f"evaluate-validated: the val splits' tasks {sorted(val_inputs)} are not the test "
                         f"splits' {sorted(inputs)}")
    theta0 = origin = family.pretrained_state()
    if option_grid or option_draws:
        spec = METHODS[method]
        if not spec.option or not model_dirs or cfg is None:
            raise ValueError(f"evaluate-validated: an option grid needs a method with an option ('{method}' has "
                             f"{spec.option or 'none'}), its fine-tuned models and its settings")
        if spec.origin:  # its merges would rescale from θ0, not from its origin's
            raise ValueError(f"evaluate-validated: '{method}' is affine in its scale (from {spec.origin}); "
                             "an option grid rescales from θ0")
        if option_draws and not spec.option_draws:
            raise ValueError(f"evaluate-validated: '{method}' lists its {spec.option} values (--option-grid); "
                             "it draws none")
        taus = list(task_vectors(family, theta0, model_dirs))
        family.train_mode(False)
        options = spec.options(cfg) | ({spec.scale: 1.0} if spec.scale else {})
        if spec.option_by_task:
            chosen, per_task = options_by_task(family, theta0, taus, method, options, option_grid, val_inputs,
                                               heads, batch_size)
            direction = spec(taus, **(options | {spec.option: list(chosen.values())}))
            best, rec = scale_on_validation(family, theta0, direction, grid, val_inputs, heads, batch_size)
            record = {"option": spec.option, "chosen_option": chosen, "option_val_accuracy": per_task, **rec}
        else:
            values = option_grid or spec.option_draws(cfg, len(taus), option_draws)
            others = {k: v for k, v in options.items() if k != spec.option}

            def search(*data):
                """fn's merge at each value from fn's other arguments, each judged over `grid`."""
                # only the leading value's merge is kept: a paper-scale model's merges are gigabytes each
                top, curve = None, []
                for value in values:
                    merged = spec(*data, **(others | {spec.option: value}))
                    g, rec = scale_on_validation(family, theta0, merged, grid, val_inputs, heads, batch_size)
                    curve += [{spec.option: value, **r} for r in rec["val_accuracy"]]
                    score = tie_safe(max(r["accuracy"] for r in rec["val_accuracy"]))
                    if top is None or score > top:  # strictly: the first value keeps a tie
                        top, value_best, g_best, direction = score, value, g, merged
                    del merged
                return direction, g_best, {"option": spec.option, "chosen_option": value_best, "val_accuracy": curve,
                                           "val_examples": rec["val_examples"]}

            if spec.adapter:  # a data-driven method: its adapter computes from the data once, then calls search
                tasks = [{"task": t, "inputs": inputs[t], "head": heads[t], "scores": (scores or {}).get(t)}
                         for t in val_inputs]
                check_needs(method, tasks, len(taus))
                (direction, best, record), learned = ADAPTERS[spec.adapter](search, family, theta0, taus, tasks, cfg)
                record |= learned
            else:
                direction, best, record = search(taus)
            if option_draws:  # one value per model, the models in the order of the tasks
                record["chosen_option"] = dict(zip(val_inputs, record["chosen_option"]))
        source = {"models": [str(d) for d in model_dirs], "method": method}
    else:
        if model_dir is None:
            raise ValueError("evaluate-validated: give the merged model (--model), or an option grid with its method "
                             "and fine-tuned models")
        if origin_dir is not None:
            origin = family.load_state(Path(origin_dir))
        direction = {n: (t - origin[n]) / scale for n, t in family.load_state(Path(model_dir)).items()}
        best, record = scale_on_validation(family, origin, direction, grid, val_inputs, heads, batch_size)
        source = {"model": str(model_dir)} | ({"origin": str(origin_dir)} if origin_dir is not None else {})
    params = {n: origin[n] + best * v for n, v in direction.items()}
    frame = pd.concat([predictions(family, params, task, inputs[task], heads[task], batch_size,
                                   desc=f"test ×{best:g} {task}") for task in inputs], ignore_index=True)
    write_parquet(frame, out, provenance.parquet_metadata(provenance.family_record(family)))
    summary = {**source, "scale": scale, "chosen": best, **record}
    write_json(summary, curve_out)
    return summary


def options_by_task(family: Family, theta0: Mapping[str, torch.Tensor], taus: list[dict[str, torch.Tensor]],
                    method: str, options: dict, values: list[float], val_inputs: Mapping[str, str | Path],
                    heads: Mapping[str, str | Path], batch_size: int) -> tuple[dict[str, float], list[dict]]:
    """Each task's value of the method's option (calm.methods `option_by_task`), chosen on that
    task's val split alone: for each value, θ0 plus the task's own vector at it (the TALL-masked
    multi-task vector m_t ∘ τ_MTL for Consensus), the best (the first in `values` on a tie).
    `taus` are in the order of `val_inputs`' tasks. Returns task -> value, and every (task,
    value)'s val accuracy (%)."""
    spec = METHODS[method]
    tasks = list(val_inputs)
    if len(tasks) != len(taus):
        raise ValueError(f"evaluate-validated: {len(taus)} fine-tuned models for the val splits of {len(tasks)} "
                         f"tasks {tasks}")
    scores: dict[str, dict[float, float]] = {t: {} for t in tasks}
    # the multi-task vector the masks are cut from is built once for the whole grid
    others = {k: v for k, v in options.items() if k != spec.option}
    for value, t, vector in spec.by_task_fn(taus, values, **others):
        task = tasks[t]
        params = {n: theta0[n] + v for n, v in vector.items()}
        val = predictions(family, params, task, val_inputs[task], heads[task], batch_size,
                          desc=f"val {spec.option}={value:g} {task}", split="val")
        scores[task][value] = accuracy(val)[task]
    chosen = {t: chosen_scale(scores[t]) for t in tasks}
    return chosen, [{"task": t, spec.option: v, "accuracy": 100 * a} for t in tasks for v, a in scores[t].items()]


def table(evals: Mapping[str, str | Path], out_prefix: str | Path, sweep_prefix: str, insert_best_after: str,
          individual: str, target: str, bootstrap: int, seed: int) -> str:
    """The main results table from each row's predictions file (row name -> file): PREFIX.csv,
    .md and .json (paired-bootstrap intervals of `target` against every other row)."""
    rows = {name: pd.read_parquet(path) for name, path in evals.items()}
    made_by = provenance.table_provenance({name: provenance.read_record(path) for name, path in evals.items()})
    return write_results(rows, out_prefix, sweep_prefix=sweep_prefix, insert_best_after=insert_best_after,
                         individual=individual, target=target, bootstrap=bootstrap, seed=seed,
                         provenance=made_by)


def seeds(runs: list[dict], out_prefix: str | Path, sweep_prefix: str, insert_best_after: str, individual: str,
          target: str, bootstrap: int, seed: int, ablations: Mapping[str, list[dict]] | None = None) -> str:
    """The results table over fine-tuning seeds from each seed's rows (runs: [{seed, rows: {row
    name: predictions file}}], rows in table order): PREFIX.csv, .md, .json (mean ± s.d., and
    `target` − every method with a hierarchical-bootstrap interval) and PREFIX.png / .pdf (each
    method's average per seed). `ablations` (sweep -> per-seed runs, see
    stages.ablations.seeds_ablations) adds PREFIX_ablations.csv / .md and, for n_seq,
    PREFIX_n_seq.png / .pdf. Returns the Markdown."""
    from calm.paper.figures import seed_averages
    from calm.paper.style import save_figure
    from calm.stages.ablations import seeds_ablations

    by_seed = {int(r["seed"]): r["rows"] for r in runs}
    if len(by_seed) != len(runs):
        raise ValueError(f"seeds: a fine-tuning seed appears twice in {[r['seed'] for r in runs]}")
    frames = {s: {name: pd.read_parquet(path) for name, path in rows.items()} for s, rows in by_seed.items()}
    made_by = provenance.table_provenance({f"seed {s}: {name}": provenance.read_record(path)
                                           for s, rows in by_seed.items() for name, path in rows.items()})
    results = seeds_results(frames, sweep_prefix=sweep_prefix, insert_best_after=insert_best_after,
                            individual=individual, target=target, bootstrap=bootstrap, seed=seed)
    text = write_seeds(results, out_prefix, target, provenance=made_by)
    save_figure(seed_averages(results["per_seed"], target), out_prefix)
    if ablations:
        text += "\n" + seeds_ablations(ablations, out_prefix, bootstrap, seed)
    return text
