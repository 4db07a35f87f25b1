"""CALM's stages: the efficient part (task arithmetic over S), one masked step per sequential
task, and the final model."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
import torch.nn.functional as F

from calm import artifacts, provenance, resume, vectors
from calm.config import CALM_BASE_FIELDS, CalmConfig
from calm.config.baselines import BaselinesConfig
from calm.families.base import Family
from calm.inference import predict_logits
from calm.io import atomic_dir, write_tensors
from calm.merging.mask_optimisation import MaskSettings, layer_fractions, optimise_mask
from calm.merging.mask import pack
from calm.merging.task_arithmetic import task_arithmetic
from calm.methods import METHODS, single_model_bases
from calm.stages.family import scale_on_validation, task_vectors

log = logging.getLogger("calm")
NOT_STEP = set(CALM_BASE_FIELDS)


def calm_base(family: Family, model_dirs: list[str | Path], lam: float, out: str | Path,
              base: str = "task_arithmetic", cfg: BaselinesConfig = BaselinesConfig(),
              validation: Mapping[str, tuple[str | Path, str | Path]] | None = None,
              grid: list[float] | None = None, batch_size: int = 64) -> dict | None:
    """τ_seq^(0), the efficient part of CALM: λ Σ_{t∈S} τ_t (base task_arithmetic, the paper's),
    or the merge of the τ_t of S by another single-model registry method at the settings of its
    baselines section in `cfg` (docs/design.md §1.1).

    `validation` (task -> (inputs, head), the tasks of S; calm.base_scale: validation): the base's
    scale s (λ, or the α of TSV / Iso / a WUDI solution) is chosen instead on those tasks' val
    splits from `grid` (baselines.lambda_grid, alpha_grid or cart_lambda_grid). The base is merged
    once, at its configured s; its direction v/s is rescaled (from its origin's merge, CART's weight
    average, for a base affine in s). Returns the choice and the val curve."""
    theta0 = family.pretrained_state()
    taus = list(task_vectors(family, theta0, model_dirs))
    tasks = [str(d) for d in model_dirs]
    if base not in single_model_bases():
        raise ValueError(f"calm base '{base}' is not a merge of task vectors alone into one model; "
                         f"allowed: {', '.join(single_model_bases())}")
    if base == "task_arithmetic" and validation is None:
        artifacts.write_vector(task_arithmetic(taus, lam=lam), out, {"lambda": lam, "tasks": tasks})
        return None
    spec = METHODS[base]
    options = {"lam": lam} if base == "task_arithmetic" else spec.options(cfg)
    family.train_mode(False)
    merged = spec(taus, **options)
    if validation is None:
        artifacts.write_vector(merged, out, {"base": base, "settings": options, "tasks": tasks})
        return None
    if not spec.scale_grid or not grid:
        raise ValueError(f"calm base '{base}': choosing its scale on validation needs a scaled base and a grid")
    scale = float(options[spec.scale]) if spec.scale else 1.0
    inputs = {task: paths[0] for task, paths in validation.items()}
    heads = {task: paths[1] for task, paths in validation.items()}
    if spec.origin:  # affine in its scale: o + s·v, o its origin's merge of the same vectors
        start = METHODS[spec.origin](taus, **METHODS[spec.origin].options(cfg))
        direction = {n: (v - start[n]) / scale for n, v in merged.items()}
        origin = {n: theta0[n] + start[n] for n in direction}
    else:
        direction = {n: v / scale for n, v in merged.items()}
        origin = theta0
    chosen, curve = scale_on_validation(family, origin, direction, grid, inputs, heads, batch_size)
    record = {"scale": scale, "grid": grid, "chosen": chosen, **curve}
    log.info("calm base %s: ×%g chosen on the val splits of %s (configured ×%g)", base, chosen, list(inputs), scale)
    vector = ({n: start[n] + chosen * v for n, v in direction.items()} if spec.origin
              else {n: chosen * v for n, v in direction.items()})
    artifacts.write_vector(vector, out,
                           {"base": base, "settings": options, "tasks": tasks, "chosen_on_validation": record})
    return record


def _resume_key(family: Family, cfg: CalmConfig, step: int, visible: list[dict], tensors: list) -> str:
    """Everything the mask loop's course depends on; a resume file is used only if it matches."""
    settings = {"calm": cfg.model_dump(exclude={"checkpoint_every"} | NOT_STEP), "step": step,
                "visible": [v["task"] for v in visible], "device": family.device.type,
                "family": type(family).__name__,
                "family_settings": {key: val for key, val in vars(family).items()
                                    if isinstance(val, (bool, int, float, str))}}
    files = [v[k] for v in visible for k in ("inputs", "head", "credible")]
    return resume.fingerprint(settings, tensors, files)


def calm_step(family: Family, tau_prev: str | Path, model_dir: str | Path,
              visible: list[dict], cfg: CalmConfig, step: int, out_dir: str | Path,
              trace_tasks: list[dict] | None = None) -> dict:
    """Merge one sequential task into τ_prev with a mask learned on every visible task.

    `visible`: one dict per visible task (the new one last) with keys task, inputs, head, credible.
    `trace_tasks`: the tasks (keys task, inputs, head) whose test accuracy the trace records
    every cfg.trace_eval_every iterations.
    """
    theta0 = family.pretrained_state()
    prev = artifacts.read_vector(tau_prev, family.device)
    vectors.check_compatible(theta0, prev, what=f"merged task vector {tau_prev}")
    tau_new = vectors.task_vector(family.load_state(Path(model_dir)), theta0)

    tasks = []
    for v in visible:
        cache = artifacts.read_inputs(v["inputs"], "pool")
        credible = artifacts.read_credible(v["credible"])
        row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
        unknown = [int(i) for i in credible["idx"] if int(i) not in row_of]
        if unknown:
            raise ValueError(f"{v['credible']}: idx {unknown[0]} is not in the pool of {v['inputs']}")
        rows = torch.tensor([row_of[int(i)] for i in credible["idx"]], dtype=torch.long)
        if len(rows) == 0:
            raise ValueError(f"{v['credible']}: the credible set of task {v['task']} is empty")
        if len(rows) < cfg.batch_size:
            log.warning("task %s: credible set has %d samples, fewer than a batch of %d; using them all",
                        v["task"], len(rows), cfg.batch_size)
        classes = artifacts.read_head_classes(v["head"])
        bad = credible["target"][(credible["target"] < 0) | (credible["target"] >= len(classes))]
        if len(bad):
            raise ValueError(f"{v['credible']}: target {int(bad.iloc[0])} is outside the {len(classes)} "
                             f"classes of the head {v['head']}")
        for c in sorted(set(range(len(classes))) - set(credible["target"].astype(int))):
            log.warning("task %s: class '%s' has no sample in the credible set %s (no pool sample is "
                        "pseudo-labelled so, or the sampler kept none); the mask is learned without it",
                        v["task"], classes[c], v["credible"])
        tasks.append({"task": v["task"], "cache": cache, "rows": rows,
                      "target": torch.tensor(credible["target"].to_numpy(), dtype=torch.long),
                      "head": artifacts.head_to(artifacts.read_head(v["head"]), family.device)})

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    resume_file, resume_key, state = resume.resume_path(out_dir), None, None
    if cfg.checkpoint_every:
        resume_key = _resume_key(family, cfg, step, visible, [theta0, prev, tau_new])
        state = resume.load_state(resume_file, generator, resume_key)

    def loss_terms(iteration: int):
        for t in tasks:
            # A fresh shuffle per task per iteration, its first batches used: the official loader.
            perm = torch.randperm(len(t["rows"]), generator=generator)
            for b in range(cfg.batches_per_task):
                pick = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                if len(pick) == 0:
                    break
                batch = family.batch(t["cache"], t["rows"][pick])
                target = t["target"][pick].to(family.device)

                def term(params, batch=batch, target=target, head=t["head"]):
                    with family.autocast():
                        logits = family.logits(params, batch, head)
                    return F.cross_entropy(logits.float(), target)

                yield t["task"], term

    family.train_mode(False)
    start = time.perf_counter()
    result = optimise_mask(theta0, prev, tau_new, loss_terms, MaskSettings.of(cfg), resume=state,
                           on_checkpoint=(lambda st: resume.save_state(resume_file, st, generator, resume_key))
                           if cfg.checkpoint_every else None,
                           trace_eval=_trace_evaluator(family, theta0, cfg, trace_tasks))
    seconds = time.perf_counter() - start
    packed, shapes = pack(result.mask)
    summary = {
        "step": step, "task": visible[-1]["task"], "visible": [v["task"] for v in visible],
        "iterations": cfg.iterations, "seconds": seconds,
        "initial_active": result.initial_active,
        "final_active_fraction": result.trace[-1]["active_fraction"] if result.trace else 0.0,
        "numel": vectors.numel(theta0),
        "settings": cfg.model_dump(exclude=NOT_STEP),
        "compute": provenance.family_record(family),
    }
    with atomic_dir(out_dir) as tmp:
        # Timings, machine and checkpointing stay out of the vector's metadata: same seed, same bytes.
        artifacts.write_vector(result.tau, tmp / "tau.safetensors",
                               {**{k: x for k, x in summary.items() if k not in ("seconds", "compute")},
                                "settings": cfg.model_dump(exclude={"checkpoint_every"} | NOT_STEP)})
        write_tensors(packed, tmp / "mask.safetensors", metadata=shapes)
        pd.DataFrame(result.trace).to_csv(tmp / "trace.csv", index=False)
        pd.DataFrame(layer_fractions(result.mask)).to_csv(tmp / "layers.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    resume_file.unlink(missing_ok=True)
    return summary


def _trace_evaluator(family: Family, theta0: Mapping[str, torch.Tensor], cfg: CalmConfig,
                     trace_tasks: list[dict] | None):
    """Test accuracy (a fraction) of every trace task under θ0 + τ, or None when tracing is off."""
    if not cfg.trace_eval_every:
        return None
    if not trace_tasks:
        raise ValueError("calm.trace_eval_every is set but no task to evaluate was given (--trace-eval)")
    tests = [(t["task"], artifacts.read_inputs(t["inputs"], "test"), artifacts.read_head(t["head"]))
             for t in trace_tasks]

    def evaluate_all(tau: Mapping[str, torch.Tensor]) -> dict[str, float]:
        params = vectors.add(theta0, tau)
        out = {}
        for task, cache, head in tests:
            logits = predict_logits(family, params, cache, head, cfg.batch_size, desc=f"trace {task}")
            out[f"acc/{task}"] = int((logits.argmax(dim=-1) == cache["label"]).sum()) / len(cache["label"])
        return out

    return evaluate_all


def calm_model(family: Family, tau: str | Path, out_dir: str | Path) -> None:
    """Write θ0 + τ as a checkpoint folder (CALM's final model)."""
    theta0 = family.pretrained_state()
    family.save(vectors.add(theta0, artifacts.read_vector(tau, family.device)), Path(out_dir))
