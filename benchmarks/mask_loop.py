"""Benchmark 1: our mask step against an official-style loop (benchmarks/reference.py) on the
same model, data, hyper-parameters and seed.

Arms: `ours` (calm_step at the product's precision), `ours_fp32` (only when `ours` runs bf16,
so the speed-up of the structure and of the precision can be told apart) and `reference`.
One untimed one-iteration warm-up per arm, then `reps` repetitions, interleaved (the arm order
rotates every repetition), each running `iterations` iterations from the initial mask.
Ratios are paired per repetition (reference mean / ours mean). The binary masks after the
first repetition are compared entry by entry (fp32 against fp32).
"""
from __future__ import annotations

import torch

from .common import ModelPlan, stats
from .ours import count_flops, run_step
from .reference import OfficialStyleLoop


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    total = sum(t.numel() for t in a.values())
    differ = sum(int((a[n].cpu() != b[n].cpu()).sum()) for n in a)
    on_a = sum(int(a[n].sum()) for n in a)
    on_b = sum(int(b[n].sum()) for n in b)
    both = sum(int((a[n].cpu() & b[n].cpu()).sum()) for n in a)
    union = on_a + on_b - both
    return {"entries": total, "differ": differ, "agreement": 1 - differ / total if total else 1.0,
            "active_ours": on_a, "active_reference": on_b,
            "active_jaccard": both / union if union else 1.0}


def bench_model(ctx, mp: ModelPlan) -> dict:
    plan, log = ctx.plan, ctx.log
    setup = ctx.setup(mp)
    family = setup.open_family(plan.device, plan.precision)
    product_bf16 = family.bf16
    cfg = setup.calm_config(ctx.cfg.calm, mp, plan.iterations)
    reference = OfficialStyleLoop(setup, mp.tasks, cfg, plan.device)
    arms = ["ours", "reference"] + (["ours_fp32"] if product_bf16 else [])

    def call(arm: str, iterations: int, keep_mask: bool) -> dict:
        if arm == "reference":
            R, seconds = reference.run(iterations)
            return {"seconds": seconds, "mask": {n: r > 0 for n, r in R.items()} if keep_mask else None}
        family.bf16 = product_bf16 and arm == "ours"
        return run_step(setup, family, mp.tasks, cfg.model_copy(update={"iterations": iterations}), keep_mask)

    log(f"mask_loop {mp.model}: {mp.tasks} visible tasks, batch {mp.batch_size}×{mp.batches_per_task}, "
        f"{plan.iterations} iterations × {plan.reps} reps, arms {arms}")
    for arm in arms:
        call(arm, 1, False)
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    masks: dict[str, dict] = {}
    for rep in range(plan.reps):
        for arm in arms[rep % len(arms):] + arms[:rep % len(arms)]:
            r = call(arm, plan.iterations, keep_mask=rep == 0)
            if rep == 0:
                masks[arm] = r.pop("mask")
            else:
                r.pop("mask", None)
            runs[arm].append(r)
            log(f"  rep {rep + 1} {arm:10s} " + " ".join(f"{s:.2f}" for s in r["seconds"]) + " s/it")
    family.bf16 = product_bf16
    log(f"  counting FLOPs of {plan.iterations} iterations")
    flops = count_flops(setup, family, mp.tasks, cfg)

    def mean(r):
        return sum(r["seconds"]) / len(r["seconds"])

    out = {"model": mp.model, "visible_tasks": mp.tasks, "batch_size": mp.batch_size,
           "batches_per_task": mp.batches_per_task, "iterations": plan.iterations, "reps": plan.reps,
           "precision_ours": "bf16" if product_bf16 else "fp32", "precision_reference": "fp32",
           "numel": setup.numel, "flops_per_iteration": flops / plan.iterations, "arms": {}}
    for arm in arms:
        per_iter = [s for r in runs[arm] for s in r["seconds"]]
        out["arms"][arm] = {"per_iteration": stats(per_iter), "per_rep_mean": [mean(r) for r in runs[arm]],
                            "seconds": [r["seconds"] for r in runs[arm]]}
        if arm != "reference":
            out["arms"][arm]["call_overhead"] = stats([r["wall"] - sum(r["seconds"]) for r in runs[arm]])
            out["arms"][arm]["achieved_gflops"] = stats([flops / sum(r["seconds"]) / 1e9 for r in runs[arm]])
    out["speedup"] = {arm: stats([mean(ref) / mean(o) for ref, o in zip(runs["reference"], runs[arm])])
                      for arm in arms if arm != "reference"}
    fp32_arm = "ours_fp32" if product_bf16 else "ours"
    out["agreement"] = {"compared": f"{fp32_arm} vs reference", **agreement(masks[fp32_arm], masks["reference"])}
    if product_bf16:
        out["agreement_bf16"] = {"compared": "ours (bf16) vs reference (fp32)",
                                 **agreement(masks["ours"], masks["reference"])}
    log(f"  speed-up {out['speedup']['ours']['median']:.2f}× (median); masks agree on "
        f"{out['agreement']['agreement']:.6%} of entries, {out['agreement']['differ']} differ")
    return out


def run(ctx) -> dict:
    return {"models": [bench_model(ctx, mp) for mp in ctx.plan.mask_loop]}
