"""Where a mask step's time goes: calm_step on the profile model (MiniLM with every default task
visible on a CPU; the ViT-B/32 tower on CUDA), profiled twice, once by cProfile (Python
functions, by own time) and once by torch.profiler (operators, by self time)."""
from __future__ import annotations

import cProfile
import pstats

from .common import ROOT
from .ours import run_step

TOP = 15
# Operators that are the model's own arithmetic (the part a faster loop cannot remove).
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
              "aten::_efficient_attention_backward", "aten::_flash_attention_backward",
              "aten::_scaled_dot_product_efficient_attention_backward",
              "aten::_scaled_dot_product_flash_attention_backward", "aten::_convolution", "aten::convolution_backward")


def _short(file: str) -> str:
    """Paths relative to the repository or to site-packages."""
    if file.startswith(str(ROOT)):
        return file[len(str(ROOT)) + 1:]
    return file.split("site-packages/")[-1]


def _cprofile(step) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    step()
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:TOP]:
        where = func if file == "~" else f"{_short(file)}:{line}({func})"
        rows.append({"function": where, "calls": nc, "tottime": tt, "cumtime": ct, "share": tt / total if total else 0})
    return {"total_seconds": total, "top": rows}


def _torch_profile(step, cuda: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events)
    rows = [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3,
             "share": getattr(e, key) / total if total else 0}
            for e in sorted(events, key=lambda e: -getattr(e, key))[:TOP]]
    matmul = sum(getattr(e, key) for e in events if e.key in MATMUL_OPS)
    return {"time": "device" if cuda else "cpu", "total_ms": total / 1e3, "top": rows,
            "matmul_share": matmul / total if total else 0}


def run(ctx) -> dict:
    plan, mp = ctx.plan, ctx.plan.profile
    setup = ctx.setup(mp)
    family = setup.open_family(plan.device, plan.precision)
    iterations = 2
    cfg = setup.calm_config(ctx.cfg.calm, mp, iterations)
    run_step(setup, family, mp.tasks, cfg.model_copy(update={"iterations": 1}))  # warm-up

    def step():
        return run_step(setup, family, mp.tasks, cfg)

    ctx.log(f"profile {mp.model}: {mp.tasks} visible, {iterations} iterations under cProfile, then torch.profiler")
    out = {"model": mp.model, "visible": mp.tasks, "batch_size": mp.batch_size,
           "batches_per_task": mp.batches_per_task, "iterations": iterations,
           "precision": "bf16" if family.bf16 else "fp32",
           "cprofile": _cprofile(step), "torch": _torch_profile(step, family.device.type == "cuda")}
    ctx.log(f"  matmul and attention kernels: {out['torch']['matmul_share']:.0%} of operator self time")
    return out
