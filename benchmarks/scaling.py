"""Benchmark 4: seconds per mask iteration (calm_step) vs the number of visible tasks and vs model
size, and the whole pipeline's mask cost vs |S̄| modelled from those per-iteration times.

The |S̄| model: with T tasks and |S̄| = s, step j (1…s) sees T − s + j tasks, so the mask stages
cost Σ_j iterations · t(T − s + j) + s · (the per-call load/save overhead), with t(v) = a + b·v
the least-squares line through the measured medians. When a run's Snakemake benchmark files
are there (benchmarks/rules), the other stages' measured seconds are added as a constant and
the measured calm_step rules are drawn for comparison.
"""
from __future__ import annotations

import numpy as np

from .common import ModelPlan, stats
from .ours import count_flops, run_step


def _timed_runs(ctx, mp: ModelPlan, visible_counts: list[int]) -> tuple[dict[int, list[float]], list[float], object]:
    """Interleaved repetitions over the visible-task counts (order rotated each repetition)."""
    plan = ctx.plan
    setup = ctx.setup(mp)
    family = setup.open_family(plan.device, plan.precision)
    cfg = setup.calm_config(ctx.cfg.calm, mp, plan.sweep_iterations)
    run_step(setup, family, max(visible_counts), cfg.model_copy(update={"iterations": 1}))
    seconds: dict[int, list[float]] = {k: [] for k in visible_counts}
    overhead: list[float] = []
    for rep in range(plan.reps):
        order = visible_counts[rep % len(visible_counts):] + visible_counts[:rep % len(visible_counts)]
        for k in order:
            r = run_step(setup, family, k, cfg)
            seconds[k].extend(r["seconds"])
            overhead.append(r["wall"] - sum(r["seconds"]))
    return seconds, overhead, (setup, family, cfg)


def vs_tasks(ctx) -> dict:
    mp = ctx.plan.sweep
    ks = list(range(1, mp.tasks + 1))
    ctx.log(f"scaling vs visible tasks: {mp.model}, 1…{mp.tasks}")
    seconds, overhead, _ = _timed_runs(ctx, mp, ks)
    rows = [{"visible": k, "per_iteration": stats(seconds[k])} for k in ks]
    for r in rows:
        ctx.log(f"  {r['visible']} visible: {r['per_iteration']['median']:.3f} s/it")
    medians = [r["per_iteration"]["median"] for r in rows]
    slope, intercept = np.polyfit(ks, medians, 1) if len(ks) > 1 else (medians[0], 0.0)
    return {"model": mp.model, "batch_size": mp.batch_size, "batches_per_task": mp.batches_per_task,
            "rows": rows, "fit": {"intercept": float(intercept), "per_task": float(slope)},
            "call_overhead": stats(overhead)}


def vs_models(ctx) -> list[dict]:
    out = []
    for mp in ctx.plan.ladder:
        ctx.log(f"scaling vs model: {mp.model}, {mp.tasks} visible, batch {mp.batch_size}×{mp.batches_per_task}")
        seconds, _, (setup, family, cfg) = _timed_runs(ctx, mp, [mp.tasks])
        flops = count_flops(setup, family, mp.tasks, cfg) / cfg.iterations
        s = stats(seconds[mp.tasks])
        out.append({"model": mp.model, "numel": setup.numel, "visible": mp.tasks, "batch_size": mp.batch_size,
                    "batches_per_task": mp.batches_per_task, "precision": "bf16" if family.bf16 else "fp32",
                    "per_iteration": s, "flops_per_iteration": flops,
                    "achieved_gflops": flops / s["median"] / 1e9})
        ctx.log(f"  {mp.model}: {s['median']:.3f} s/it, {flops / 1e9:.1f} GFLOP/it")
    return out


def rule_seconds(rules_dir) -> dict[str, float]:
    """Seconds per rule job from Snakemake benchmark: TSVs (relative path → s)."""
    import pandas as pd

    out = {}
    if rules_dir.is_dir():
        for f in sorted(rules_dir.rglob("*.tsv")):
            frame = pd.read_csv(f, sep="\t")
            if not frame.empty:
                out[str(f.relative_to(rules_dir).with_suffix(""))] = float(frame["s"].iloc[0])
    return out


def pipeline(ctx, tasks: dict) -> dict:
    cfg = ctx.cfg
    text = tasks["model"] != "vit_b32"
    total = ctx.plan.sweep.tasks
    iterations = cfg.calm.iterations if text else 100
    a, b = tasks["fit"]["intercept"], tasks["fit"]["per_task"]
    overhead = tasks["call_overhead"]["median"]
    rules = rule_seconds(ctx.args.rules_dir) if text else {}
    measured_steps = {k: v for k, v in rules.items() if "calm_step" in k}
    other = sum(v for k, v in rules.items() if "calm_step" not in k)
    rows = []
    for s in range(1, total):
        mask = sum(iterations * (a + b * (total - s + j)) + overhead for j in range(1, s + 1))
        rows.append({"sequential": s, "mask_seconds": mask, "total_seconds": mask + other if rules else None})
    return {"method": "modelled from per-iteration times (linear fit over visible tasks) plus the per-call "
                      "overhead; plus the other rules' seconds from the run's benchmark files (finetune, score, evaluate), summed as if serial" if rules else
                      "modelled from per-iteration times (linear fit over visible tasks) plus the per-call overhead",
            "tasks": total, "iterations": iterations, "model": tasks["model"], "rows": rows,
            "other_stages_seconds": other if rules else None,
            "measured_calm_steps": measured_steps, "default_sequential": len(cfg.calm.sequential) if text else None}


def plots(out_dir, tasks: dict, models: list[dict], pipe: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    files = {}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [r["visible"] for r in tasks["rows"]]
    med = np.array([r["per_iteration"]["median"] for r in tasks["rows"]])
    lo = med - np.array([r["per_iteration"]["q1"] for r in tasks["rows"]])
    hi = np.array([r["per_iteration"]["q3"] for r in tasks["rows"]]) - med
    ax.errorbar(ks, med, yerr=[lo, hi], fmt="o", capsize=3, label="median (IQR)")
    xs = np.linspace(min(ks), max(ks), 50)
    ax.plot(xs, tasks["fit"]["intercept"] + tasks["fit"]["per_task"] * xs, "--", label="linear fit")
    ax.set(xlabel="visible tasks", ylabel="seconds per iteration",
           title=f"{tasks['model']}, batch {tasks['batch_size']}×{tasks['batches_per_task']} per task")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    files["tasks"] = "scaling_tasks.png"
    fig.savefig(out_dir / files["tasks"], dpi=120)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.5))
    names = [f"{m['model']}\n{m['numel'] / 1e6:.1f} M" for m in models]
    med = np.array([m["per_iteration"]["median"] for m in models])
    err = [med - np.array([m["per_iteration"]["q1"] for m in models]),
           np.array([m["per_iteration"]["q3"] for m in models]) - med]
    ax1.bar(names, med, yerr=err, capsize=3)
    ax1.set_yscale("log")
    ax1.set(ylabel="seconds per iteration", title="mask step vs model size")
    ax2.bar(names, [m["achieved_gflops"] for m in models])
    ax2.set(ylabel="achieved GFLOP/s", title="model FLOPs / time")
    m0 = models[0]
    fig.suptitle(f"{m0['visible']} visible tasks, batch {m0['batch_size']}×{m0['batches_per_task']}", fontsize=9)
    fig.tight_layout()
    files["models"] = "scaling_models.png"
    fig.savefig(out_dir / files["models"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = [r["sequential"] for r in pipe["rows"]]
    ax.plot(s, [r["mask_seconds"] / 60 for r in pipe["rows"]], "o-", label="mask stages (model)")
    if pipe["other_stages_seconds"] is not None:
        ax.plot(s, [r["total_seconds"] / 60 for r in pipe["rows"]], "s-", label="+ other benchmarked rules (serial sum)")
    if pipe["measured_calm_steps"] and pipe["default_sequential"]:
        ax.plot([pipe["default_sequential"]], [sum(pipe["measured_calm_steps"].values()) / 60], "k*", ms=10,
                label="calm_step rules of the run")
    ax.set(xlabel="|S̄| (sequential tasks)", ylabel="minutes",
           title=f"{pipe['tasks']} tasks, {pipe['iterations']} iterations per step")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    files["pipeline"] = "pipeline_sbar.png"
    fig.savefig(out_dir / files["pipeline"], dpi=120)
    plt.close(fig)
    return files


def run(ctx) -> dict:
    tasks = vs_tasks(ctx)
    models = vs_models(ctx)
    pipe = pipeline(ctx, tasks)
    return {"tasks": tasks, "models": models, "pipeline": pipe, "plots": plots(ctx.out, tasks, models, pipe)}
