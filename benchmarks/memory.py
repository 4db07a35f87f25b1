"""Benchmark 3: peak memory of the mask step (calm_step) with 1 … T visible tasks, each in a
fresh process, as multiples of one fp32 copy of the masked parameters (4 bytes × N).

The peak is the kernel's VmHWM after resetting it (/proc/self/clear_refs) once the model is
loaded, so it counts what the step adds to a process that already holds the family: the
step's tensors (θ0, τ_prev, τ_new, R, ∂mix/∂m, θ and its gradient, …) plus one batch's
activations. A second probe measures one batch's activations alone (forward + backward of the
longest batch of the new task's credible set, minus its parameter gradients). On CUDA the same
figures come from torch.cuda's allocator statistics.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from .common import ROOT, ModelPlan, peak_rss_bytes, reset_peak_rss, rss_bytes, stats


def _child(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from calm import artifacts
    from calm.config import Config

    from .common import ModelPlan as MP
    from .fixture import build
    from .ours import run_step

    torch.set_num_threads(spec["threads"])
    mp = MP(**spec["plan"])
    cfg = Config.model_validate(spec["config"])
    setup = build(mp, cfg, *map(_path, (spec["cache"], spec["data"], spec["wheels"])),
                  _path(spec["task_vectors"]) if spec["task_vectors"] else None, lambda m: None)
    family = setup.open_family(spec["device"], spec["precision"])
    cuda = family.device.type == "cuda"
    _warm(setup, family)
    gc.collect()
    base_rss = rss_bytes()
    reset_ok = reset_peak_rss()
    base_rss_peak = peak_rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    out = {"visible": spec["visible"], "numel": setup.numel, "rss_before": base_rss, "peak_reset": reset_ok,
           "bf16": family.bf16}
    if spec["probe"] == "step":
        r = run_step(setup, family, spec["visible"], setup.calm_config(cfg.calm, mp, spec["iterations"]))
        out["seconds"] = r["seconds"]
    else:
        # One batch forward and backward: the longest rows of the new task's credible set.
        v = setup.visible(1)[0]
        cache = artifacts.read_inputs(v["inputs"], "pool")
        credible = artifacts.read_credible(v["credible"])
        row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
        rows = torch.tensor([row_of[int(i)] for i in credible["idx"]])
        if "attention_mask" in cache:
            rows = rows[torch.argsort(cache["attention_mask"][rows].sum(dim=1), descending=True, stable=True)]
        rows = rows[:mp.batch_size]
        head = artifacts.read_head(v["head"]).to(family.device)
        params = {n: t.requires_grad_(True) for n, t in family.pretrained_state().items()}
        batch = family.batch(cache, rows)
        with family.autocast():
            logits = family.logits(params, batch, head)
        F.cross_entropy(logits.float(), torch.zeros(len(rows), dtype=torch.long, device=family.device)).backward()
        out["batch_rows"] = len(rows)
        out["gradient_bytes"] = sum(p.grad.numel() * p.grad.element_size() for p in params.values()
                                    if p.grad is not None)
        out["param_bytes"] = sum(p.numel() * p.element_size() for p in params.values())
    out["rss_peak"] = peak_rss_bytes() if reset_ok else None
    out["rss_peak_before"] = base_rss_peak
    if cuda:
        torch.cuda.synchronize()
        out["gpu_before"] = base_gpu
        out["gpu_peak"] = torch.cuda.max_memory_allocated()
    return out


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


def _spawn(ctx, mp: ModelPlan, visible: int, probe: str) -> dict:
    a = ctx.args
    spec = {"plan": mp.__dict__, "config": ctx.cfg.model_dump(mode="json"), "cache": str(ctx.cache), "data": str(a.data),
            "wheels": str(a.wheels), "task_vectors": str(a.task_vectors) if a.task_vectors else None,
            "device": ctx.plan.device, "precision": ctx.plan.precision, "threads": ctx.plan.threads,
            "visible": visible, "iterations": ctx.plan.iterations, "probe": probe}
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
    batch = _spawn(ctx, mp, 1, "batch")
    act = batch["rss_peak"] - batch["rss_before"] - batch["gradient_bytes"] if batch["rss_peak"] else None
    out = {"model": mp.model, "numel": setup.numel, "copy_bytes": copy, "batch_size": mp.batch_size,
           "batches_per_task": mp.batches_per_task, "iterations": ctx.plan.iterations, "batch_probe": batch,
           "activation_bytes_rss": act, "rows": []}
    if "gpu_peak" in batch:
        out["activation_bytes_gpu"] = batch["gpu_peak"] - batch["gpu_before"] - batch["gradient_bytes"]
    for k in range(1, mp.tasks + 1):
        r = _spawn(ctx, mp, k, "step")
        row = {"visible": k, "rss_before": r["rss_before"], "rss_peak": r["rss_peak"],
               "seconds_per_iteration": stats(r["seconds"])}
        if r["rss_peak"] is not None:
            row["rss_added"] = r["rss_peak"] - r["rss_before"]
            row["copies_added"] = row["rss_added"] / copy
            row["copies_total"] = r["rss_peak"] / copy
        if "gpu_peak" in r:
            row.update(gpu_before=r["gpu_before"], gpu_peak=r["gpu_peak"],
                       gpu_copies_added=(r["gpu_peak"] - r["gpu_before"]) / copy, gpu_copies_total=r["gpu_peak"] / copy)
        out["rows"].append(row)
        ctx.log(f"  {k} visible: +{(row.get('rss_added') or 0) / 2**20:.0f} MiB RSS "
                f"({row.get('copies_added', float('nan')):.2f} copies)"
                + (f", GPU +{row['gpu_copies_added']:.2f} copies" if "gpu_copies_added" in row else ""))
    added = [r["copies_added"] for r in out["rows"] if "copies_added" in r]
    if added:
        out["copies_added_range"] = [min(added), max(added)]
        if act is not None:
            out["copies_excluding_activations"] = [(a * copy - act) / copy for a in added]
    return out


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
