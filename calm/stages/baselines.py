"""The baselines' stage: θ0 + τ of a registry method (calm.methods), written as a checkpoint,
and the adapters that feed the data-driven methods the data they learn from."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from calm import artifacts, provenance, scoring, vectors
from calm.config.baselines import BaselinesConfig
from calm.families.base import Family
from calm.io import atomic_dir, write_json
from calm.merging.emr import emr_storage_bits, emr_task_vector
from calm.merging.fisher import diagonal_fisher
from calm.merging.localize_stitch import localize
from calm.methods import METHODS
from calm.stages.family import task_vectors

log = logging.getLogger("calm")


def merge_baseline(family: Family, method: str, model_dirs: list[str | Path], out_dir: str | Path,
                   cfg: BaselinesConfig = BaselinesConfig(), tasks: list[dict] | None = None,
                   summary_out: str | Path | None = None) -> dict:
    """θ = θ0 + τ of a registry method over the fine-tuned models, written as a checkpoint.

    Data-driven methods also need `tasks`: one dict per model, in the same order, with key
    `task` and the files the method's `needs` names (inputs, head, scores). A per-task method
    (EMR) writes one checkpoint per model instead, out_dir/<the model folder's name>.
    """
    if method not in METHODS:
        raise ValueError(f"unknown merging method '{method}'; known: {sorted(METHODS)}")
    spec = METHODS[method]
    check_needs(method, tasks, len(model_dirs))
    theta0 = family.pretrained_state()
    taus = list(task_vectors(family, theta0, model_dirs))
    family.train_mode(False)
    start = time.perf_counter()
    if spec.per_task:
        return _merge_per_task(family, method, spec, theta0, taus, model_dirs, out_dir, cfg, summary_out)
    if spec.adapter:
        tau, info = ADAPTERS[spec.adapter](spec.fn, family, theta0, taus, tasks, cfg)
    else:
        tau, info = spec(taus, **spec.options(cfg)), {}
    summary = _summary(spec, method, start, model_dirs, cfg) | info | {"compute": provenance.family_record(family)}
    family.save(vectors.add(theta0, tau), Path(out_dir))
    if summary_out is not None:
        write_json(summary, summary_out)
    return summary


def check_needs(method: str, tasks: list[dict] | None, n_models: int) -> None:
    """A data-driven method's per-task files (its registry `needs`), one dict per model, all given."""
    needs = METHODS[method].needs
    if not needs:
        return
    if tasks is None or len(tasks) != n_models:
        raise ValueError(f"method '{method}' needs per-task {', '.join(needs)} for each of the "
                         f"{n_models} models, got {0 if tasks is None else len(tasks)}")
    for t in tasks:
        missing = [k for k in needs if not t.get(k)]
        if missing:
            raise ValueError(f"method '{method}', task {t.get('task')}: no {missing[0]} file given")


def _summary(spec, method: str, start: float, model_dirs: list[str | Path], cfg: BaselinesConfig) -> dict:
    return {"method": method, "label": spec.label, "seconds": time.perf_counter() - start,
            "models": [str(d) for d in model_dirs],
            "settings": {s: (v.model_dump() if hasattr(v, "model_dump") else v)
                         for s in spec.sections for v in [getattr(cfg, s)]}}


def _merge_per_task(family: Family, method: str, spec, theta0, taus, model_dirs: list[str | Path], out_dir: str | Path,
                    cfg: BaselinesConfig, summary_out: str | Path | None) -> dict:
    """EMR-Merging: one unified vector, and per task a sign mask and a rescaler. Task t is
    evaluated with θ0 + λ_t M_t ⊙ τ_uni, so it has a checkpoint of its own; what the method
    stores beyond one model is one mask bit per task and parameter, plus the rescalers."""
    names = [Path(d).name for d in model_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"{spec.label}: each model folder's name names its task's checkpoint; got {names}")
    start = time.perf_counter()
    emr = spec(taus, **spec.options(cfg))
    summary = _summary(spec, method, start, model_dirs, cfg) | {"compute": provenance.family_record(family)} | {
        "rescalers": dict(zip(names, emr.rescalers)),
        "extra_bits_per_parameter": emr_storage_bits(len(taus), vectors.numel(theta0)),
        "active_fraction": {n: sum(int(m.sum()) for m in mask.values()) / vectors.numel(theta0)
                            for n, mask in zip(names, emr.masks)}}
    with atomic_dir(out_dir) as tmp:
        for i, name in enumerate(names):
            family.save(vectors.add(theta0, emr_task_vector(emr, i)), tmp / name)
    if summary_out is not None:
        write_json(summary, summary_out)
    return summary


# --- adapters (Method.adapter): each reads a data-driven method's files and calls its function fn ---


def _logits(family: Family, params, batch, head) -> torch.Tensor:
    with family.autocast():
        return family.logits(params, batch, head).float()


def _sample(n: int, k: int, seed: int) -> torch.Tensor:
    """k of n row positions (all of them if k ≥ n), a seeded draw."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def feed_localize_stitch(fn: Callable, family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    """Each task's mask learnt on a few labelled train examples, then the masked vectors stitched."""
    c = cfg.localize_stitch
    masks, per_task = [], []
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "train")
        head = artifacts.head_to(artifacts.read_head(t["head"]), family.device)
        rows = _sample(len(cache["idx"]), c.n_shot, c.seed)
        generator = torch.Generator().manual_seed(c.seed)

        def loss_terms(_epoch, cache=cache, head=head, rows=rows, generator=generator, task=t["task"]):
            order = rows[torch.randperm(len(rows), generator=generator)]
            for b in range(0, len(order), c.batch_size):
                pick = order[b:b + c.batch_size]
                batch, target = family.batch(cache, pick), cache["label"][pick].to(family.device)
                yield task, lambda params, batch=batch, target=target: F.cross_entropy(
                    _logits(family, params, batch, head), target)

        log.info("localize %s on %d labelled examples", t["task"], len(rows))
        result = localize(theta0, tau, loss_terms, epochs=c.epochs, lr=c.lr, alpha=c.alpha,
                          init_value=c.init_value, init_fraction=c.init_fraction, regulariser=c.regulariser)
        masks.append(result.mask)
        per_task.append({"task": t["task"], "examples": len(rows), "initial_active": result.initial_active,
                         "final_active_fraction": result.trace[-1]["active_fraction"],
                         "final_loss": result.trace[-1]["loss"]})
    return fn(taus, masks), {"localize": per_task}


def _entropy_terms(family: Family, tasks, c):
    """loss_terms(step) of the entropy-minimising methods: per task, `batches_per_task` batches of
    `batch_size` unlabelled pool inputs, each term its batch's mean prediction entropy (section c)."""
    pools = [(t["task"], artifacts.read_inputs(t["inputs"], "pool"),
              artifacts.head_to(artifacts.read_head(t["head"]), family.device)) for t in tasks]
    generator = torch.Generator().manual_seed(c.seed)

    def loss_terms(_step):
        for task, cache, head in pools:
            perm = torch.randperm(len(cache["idx"]), generator=generator)
            for b in range(c.batches_per_task):
                pick = perm[b * c.batch_size:(b + 1) * c.batch_size]
                if len(pick) == 0:
                    break
                batch = family.batch(cache, pick)
                yield task, lambda params, batch=batch, head=head: scoring.entropy(
                    _logits(family, params, batch, head)).mean()

    return loss_terms


def feed_adamerging(fn: Callable, family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    """Merging coefficients learnt by entropy minimisation on every task's unlabelled pool."""
    c = cfg.adamerging
    result = fn(theta0, taus, _entropy_terms(family, tasks, c), steps=c.steps, lr=c.lr, init=c.init)
    coefficients = result.coefficients.tolist()
    if result.coefficients.dim() == 2:  # layer-wise: one coefficient per task and tensor
        coefficients = {t["task"]: dict(zip(result.names, row)) for t, row in zip(tasks, coefficients)}
    else:
        coefficients = {t["task"]: v for t, v in zip(tasks, coefficients)}
    return result.tau, {"coefficients": coefficients, "trace": result.trace}


def feed_adarank(fn: Callable, family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    """Masks over the base's singular components (and layer-wise coefficients) learnt by entropy
    minimisation on the same unlabelled pools as AdaMerging's."""
    c = cfg.adarank
    result = fn(theta0, taus, _entropy_terms(family, tasks, c), base=c.base, steps=c.steps, lr=c.lr,
                mask_temperature=c.mask_temperature, prior=c.prior, initial_rank_ratio=c.initial_rank_ratio,
                learn_coefficients=c.learn_coefficients, exclude=c.exclude)
    names = [t["task"] for t in tasks]
    kept = {task: {"kept_fraction": sum(r.values()) / max(1, sum(len(result.masks[n][i]) for n in r)),
                   "ranks": r}
            for i, (task, r) in enumerate(zip(names, result.ranks()))}
    coefficients = {task: dict(zip(result.names, row)) for task, row in zip(names, result.coefficients.tolist())}
    return result.tau, {"base": c.base, "kept": kept, "coefficients": coefficients, "trace": result.trace}


def feed_fisher(fn: Callable, family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    """Each model's diagonal Fisher on pseudo-labelled pool examples, then the Fisher-weighted mean."""
    c = cfg.fisher
    fishers, used = [], {}
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "pool")
        head = artifacts.head_to(artifacts.read_head(t["head"]), family.device)
        scores = pd.read_parquet(t["scores"], columns=["idx", "pseudo_label"])
        row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
        unknown = [int(i) for i in scores["idx"] if int(i) not in row_of]
        if unknown:
            raise ValueError(f"{t['scores']}: idx {unknown[0]} is not in the pool of {t['inputs']}")
        pick = _sample(len(scores), c.n_examples, c.seed).tolist()
        chosen = [(row_of[int(scores["idx"].iloc[i])], int(scores["pseudo_label"].iloc[i])) for i in pick]

        def example_losses(chosen=chosen, cache=cache, head=head):
            for row, label in chosen:
                batch = family.batch(cache, torch.tensor([row]))
                target = torch.tensor([label], device=family.device)
                yield lambda params, batch=batch, target=target: F.cross_entropy(
                    _logits(family, params, batch, head), target)

        log.info("Fisher of %s on %d pseudo-labelled pool examples", t["task"], len(chosen))
        fishers.append(diagonal_fisher(vectors.add(theta0, tau), example_losses()))
        used[t["task"]] = len(chosen)
    return fn(taus, fishers, c.epsilon), {"examples": used}


def feed_regmean(fn: Callable, family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    """Each model's input Gram matrices of its linear layers on pool examples, then RegMean's closed form."""
    c = cfg.regmean
    grams, used = [], {}
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "pool")
        rows = _sample(len(cache["idx"]), c.n_examples, c.seed)
        params = vectors.add(theta0, tau)
        total: dict[str, torch.Tensor] = {}
        for b in tqdm(range(0, len(rows), c.batch_size), desc=f"regmean {t['task']}", unit="batch",
                      mininterval=2.0):
            for name, g in family.linear_grams(params, family.batch(cache, rows[b:b + c.batch_size])).items():
                total[name] = total[name] + g if name in total else g
        grams.append(total)
        used[t["task"]] = len(rows)
    return fn(taus, grams, c.alpha), {"examples": used, "closed_form_tensors": sorted(grams[0])}


# Method.adapter -> its adapter; a new data-driven method names one of these, or adds its own.
ADAPTERS: dict[str, Callable] = {
    "localize_stitch": feed_localize_stitch,
    "adamerging": feed_adamerging,
    "adarank": feed_adarank,
    "fisher": feed_fisher,
    "regmean": feed_regmean,
}
