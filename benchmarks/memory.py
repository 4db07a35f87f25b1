"""Benchmark 3: peak memory of the mask step (calm_step) with 1 … T visible tasks, each in a
fresh process, as multiples of one fp32 copy of the masked parameters (4 bytes × N).

Both peaks are taken once the model is loaded and a one-row forward pass has run, so they
count what the step adds to a process that already holds the family: the step's tensors (θ0,
τ_prev, τ_new, R, ∂mix/∂m, θ and its gradient, …) plus one batch's activations.
  rss:  the kernel's VmHWM after resetting it (/proc/self/clear_refs); exact, but it also counts
        the file pages mapped while a safetensors file is read;
  anon: RssAnon sampled every 5 ms; anonymous memory only, a lower bound of its peak.
A second probe, once per task, measures one batch's activations alone: forward + backward of
the longest batch of the task's credible set, minus the parameters and gradients it allocates;
a row's "without activations" subtracts the largest of its visible tasks' (texts of some tasks
are much longer than others'). On CUDA the
same figures come from torch.cuda's allocator statistics (gpu).
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from .common import ROOT, AnonPeak, ModelPlan, anon_rss_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes, stats


def _child(spec: dict) -> dict:
    import torch

    from calm.config import Config

    from .common import ModelPlan as MP
    from .fixture import build

    torch.set_num_threads(spec["threads"])
    mp = MP(**spec["plan"])
    cfg = Config.model_validate(spec["config"])
    setup = build(mp, cfg, *map(_path, (spec["cache"], spec["data"], spec["wheels"])),
                  _path(spec["task_vectors"]) if spec["task_vectors"] else None, lambda m: None)
    family = setup.open_family(spec["device"], spec["precision"])
    cuda = family.device.type == "cuda"
    _warm(setup, family)
    gc.collect()
    out = {"visible": spec["visible"], "numel": setup.numel, "bf16": family.bf16,
           "rss_before": rss_bytes(), "anon_before": anon_rss_bytes()}
    reset_ok = reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["gpu_before"] = torch.cuda.memory_allocated()
    with AnonPeak() as sampler:
        if spec["probe"] == "step":
            from .ours import run_step

            r = run_step(setup, family, spec["visible"], setup.calm_config(cfg.calm, mp, spec["iterations"]))
            out["seconds"] = r["seconds"]
        else:
            out.update(_one_batch(setup, family, mp.batch_size, spec["task"]))
    out["anon_peak"] = sampler.peak
    out["rss_peak"] = peak_rss_bytes() if reset_ok else None
    if cuda:
        torch.cuda.synchronize()
        out["gpu_peak"] = torch.cuda.max_memory_allocated()
    return out


def _one_batch(setup, family, batch_size: int, task: str) -> dict:
    """Forward and backward of the longest `batch_size` rows of `task`'s credible set, on a
    fresh copy of the parameters (whose bytes, and the gradients', the caller subtracts)."""
    import torch
    import torch.nn.functional as F

    from calm import artifacts

    v = next(v for v in setup.visible(len(setup.tasks)) if v["task"] == task)
    cache = artifacts.read_inputs(v["inputs"], "pool")
    credible = artifacts.read_credible(v["credible"])
    row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
    rows = torch.tensor([row_of[int(i)] for i in credible["idx"]])
    if "attention_mask" in cache:
        rows = rows[torch.argsort(cache["attention_mask"][rows].sum(dim=1), descending=True, stable=True)]
    rows = rows[:batch_size]
    head = artifacts.read_head(v["head"]).to(family.device)
    # A copy, as the docstring says: pretrained_state() is the module's own storage.
    params = {n: t.clone().requires_grad_(True) for n, t in family.pretrained_state().items()}
    with family.autocast():
        logits = family.logits(params, family.batch(cache, rows), head)
    F.cross_entropy(logits.float(), torch.zeros(len(rows), dtype=torch.long, device=family.device)).backward()
    return {"batch_rows": len(rows),
            "params_and_grads_bytes": sum(p.numel() * p.element_size() for p in params.values())
            + sum(p.grad.numel() * p.grad.element_size() for p in params.values() if p.grad is not None)}


def _warm(setup, family) -> None:
    """Fault in what any first step pays once whatever its size (library code, parquet and
    safetensors readers, the forward kernels) with a one-row forward pass that allocates
    almost nothing, so the peak that follows is the step's own."""
    import torch

    from calm import artifacts

    v = setup.visible(1)[0]
    cache = artifacts.read_inputs(v["inputs"], "pool")
    artifacts.read_credible(v["credible"])
    head = artifacts.read_head(v["head"])
    with torch.inference_mode(), family.autocast():
        family.logits(dict(family.module.named_parameters()), family.batch(cache, torch.tensor([0])), head)


def _path(p):
    from pathlib import Path

    return Path(p)


def _spawn(ctx, mp: ModelPlan, visible: int, probe: str, task: str | None = None) -> dict:
    a = ctx.args
    spec = {"plan": mp.__dict__, "config": ctx.cfg.model_dump(mode="json"), "cache": str(ctx.cache), "data": str(a.data),
            "wheels": str(a.wheels), "task_vectors": str(a.task_vectors) if a.task_vectors else None,
            "device": ctx.plan.device, "precision": ctx.plan.precision, "threads": ctx.plan.threads,
            "visible": visible, "iterations": ctx.plan.sweep_iterations, "probe": probe, "task": task}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe ({mp.model}, {visible} visible, {probe}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx) -> dict:
    mp = ctx.plan.sweep
    setup = ctx.setup(mp)  # build the fixture here, so that every child only reads it
    copy = 4 * setup.numel
    ctx.log(f"memory {mp.model}: one fp32 copy of the masked parameters = {copy / 2**20:.1f} MiB")
    by_task = {}
    for task in setup.tasks:
        batch = _spawn(ctx, mp, 1, "batch", task)
        fixed = batch["params_and_grads_bytes"]
        act = {"anon": batch["anon_peak"] - batch["anon_before"] - fixed}
        if batch["rss_peak"] is not None:
            act["rss"] = batch["rss_peak"] - batch["rss_before"] - fixed
        if "gpu_peak" in batch:
            act["gpu"] = batch["gpu_peak"] - batch["gpu_before"] - fixed
        by_task[task] = act
        ctx.log(f"  one batch of {task}: activations anon {act['anon'] / 2**20:.0f} MiB")
    largest = {kind: max(a[kind] for a in by_task.values()) for kind in by_task[setup.tasks[0]]}
    out = {"model": mp.model, "numel": setup.numel, "copy_bytes": copy, "batch_size": mp.batch_size,
           "batches_per_task": mp.batches_per_task, "iterations": ctx.plan.sweep_iterations,
           "activation_bytes": largest, "activation_bytes_by_task": by_task, "rows": []}
    for k in range(1, mp.tasks + 1):
        r = _spawn(ctx, mp, k, "step")
        row = {"visible": k, "rss_before": r["rss_before"], "seconds_per_iteration": stats(r["seconds"]),
               "added": {"anon": r["anon_peak"] - r["anon_before"]}}
        if r["rss_peak"] is not None:
            row["added"]["rss"] = r["rss_peak"] - r["rss_before"]
        if "gpu_peak" in r:
            row["added"]["gpu"] = r["gpu_peak"] - r["gpu_before"]
            row["gpu_total"] = r["gpu_peak"]
        row["copies"] = {kind: b / copy for kind, b in row["added"].items()}
        row["activation_bytes"] = {kind: max(by_task[v["task"]][kind] for v in setup.visible(k))
                                   for kind in largest}
        row["copies_without_activations"] = {kind: (b - row["activation_bytes"][kind]) / copy
                                             for kind, b in row["added"].items() if kind in largest}
        out["rows"].append(row)
        ctx.log(f"  {k} visible: adds " + ", ".join(f"{kind} {b / 2**20:.0f} MiB = {b / copy:.2f} copies"
                                                    for kind, b in row["added"].items()))
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
