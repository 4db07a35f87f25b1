"""Benchmark 2, the ceiling: dense square matmul throughput (torch.mm) at the benchmarks'
thread count, in fp32 and in bf16 (the precision our mask step takes where the hardware
computes it natively). SUMMARY.md divides the mask step's achieved FLOP/s (mask_loop) by it."""
from __future__ import annotations

import torch

from .common import stats, timed


def matmul_throughput(n: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    seconds = [timed(lambda: torch.mm(a, b, out=out), device)[0] for _ in range(reps)]
    flops = 2 * n ** 3
    rates = [flops / s / 1e9 for s in seconds]
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_mm": flops,
            "gflops": stats(rates), "best_gflops": max(rates)}


def run(ctx) -> dict:
    plan = ctx.plan
    reps = 3 if plan.quick else 10
    out = {"device": plan.device, "threads": plan.threads, "peak": {}}
    if plan.device == "cuda":
        # What torch does by default: fp32 matmuls in full fp32, not TF32.
        out["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out["peak"][name] = matmul_throughput(plan.matmul_n, dtype, plan.device, reps)
        ctx.log(f"  {name} {plan.matmul_n}²: {out['peak'][name]['gflops']['median']:.1f} GFLOP/s (median)")
    return out
