"""SUMMARY.md from whatever benchmark JSON files are in a results folder."""
from __future__ import annotations

from pathlib import Path

from calm.io import write_text

from .common import fmt_stat, read_result

MiB = 2 ** 20


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _env(results: list[dict]) -> list[str]:
    env = next((r["environment"] for r in results if r and "environment" in r), None)
    if env is None:
        return []
    plan = env.get("plan", {})
    lines = [f"- Machine: {env['cpu']}" + (f", GPU {env['gpu']}" if env.get("gpu") else "")
             + f"; {env['cpus_visible']} CPUs visible; torch {env['torch']} with {env['torch_threads']} threads; "
             f"device {plan.get('device')}; load average at the end {', '.join(f'{x:.1f}' for x in env['load_average'] or [])}",
             f"- Code: commit {env.get('git_commit')}; {env['date']}"
             + ("; **--quick smoke test: pico model, 2 iterations — not a measurement**" if plan.get("quick") else "")]
    notes = {r.get("note") for r in results if r and r.get("note")}
    lines += [f"- Note: {n}" for n in sorted(notes)]
    return lines


def _limit(limit: dict | None) -> tuple[list[str], dict]:
    if not limit:
        return [], {}
    peaks = {k: v["gflops"]["median"] for k, v in limit["peak"].items()}
    lines = ["## Machine ceiling (limit)", "",
             f"Dense square matmul (torch.mm, n = {next(iter(limit['peak'].values()))['n']}, "
             f"{limit['threads']} threads, device {limit['device']}):", "",
             "| dtype | GFLOP/s median (IQR) | best |", "|---|---|---|"]
    for k, v in limit["peak"].items():
        lines.append(f"| {k} | {fmt_stat(v['gflops'])} | {v['best_gflops']:.1f} |")
    return lines + [""], peaks


def _mask_loop(ml: dict | None, peaks: dict) -> list[str]:
    if not ml:
        return []
    lines = ["## Mask step vs official-style loop (mask_loop)", "",
             "Same model, data, hyper-parameters and seed; interleaved repetitions after a warm-up. "
             "Seconds per iteration: median (IQR) over every timed iteration; speed-up: reference ÷ ours, "
             "paired per repetition, median (IQR). `ours_fp32` is our step with bf16 autocast off.", "",
             "| model | visible × batch | arm | precision | s / iteration | speed-up vs reference |",
             "|---|---|---|---|---|---|"]
    for m in ml["models"]:
        for arm, a in m["arms"].items():
            prec = m["precision_reference"] if arm == "reference" else ("fp32" if arm == "ours_fp32" else m["precision_ours"])
            speed = fmt_stat(m["speedup"][arm], "×") if arm in m["speedup"] else "1"
            lines.append(f"| {m['model']} | {m['visible_tasks']} × {m['batch_size']}×{m['batches_per_task']} | {arm} | "
                         f"{prec} | {fmt_stat(a['per_iteration'], ' s')} | {speed} |")
    lines += ["", "**Same mask?** Binary masks (R > 0) after the timed iterations of the first repetition, "
              "fp32 against fp32:", "",
              "| model | iterations | entries | differ | agreement | active (ours / reference) | Jaccard of active sets |",
              "|---|---|---|---|---|---|---|"]
    for m in ml["models"]:
        for key in ("agreement", "agreement_bf16"):
            if key in m:
                g = m[key]
                lines.append(f"| {m['model']} ({g['compared']}) | {m['iterations']} | {g['entries']:,} | {g['differ']:,} | "
                             f"{100 * g['agreement']:.5f} % | {g['active_ours']:,} / {g['active_reference']:,} | "
                             f"{g['active_jaccard']:.4f} |")
    lines += ["", "## Distance to the limit", "",
              "Model FLOPs of the mask step counted with torch.utils.flop_counter.FlopCounterMode on the very "
              "batches of the timed runs (forward + backward at their dynamically padded shapes; attention is "
              "counted as its matmuls where the model runs it eagerly, as on a CPU, and with torch's SDPA "
              "formulas where a fused kernel runs it); achieved = FLOPs ÷ seconds per repetition.", "",
              "| model | GFLOP / iteration | precision | achieved GFLOP/s | fraction of matmul peak (same dtype) | "
              "fraction of fp32 peak |", "|---|---|---|---|---|---|"]
    for m in ml["models"]:
        a = m["arms"]["ours"]["achieved_gflops"]
        prec = m["precision_ours"]
        same = _pct(a["median"] / peaks[prec]) if prec in peaks else "–"
        fp32 = _pct(a["median"] / peaks["fp32"]) if "fp32" in peaks else "–"
        lines.append(f"| {m['model']} | {m['flops_per_iteration'] / 1e9:.2f} | {prec} | {fmt_stat(a)} | {same} | {fp32} |")
        if "ours_fp32" in m["arms"] and "fp32" in peaks:
            b = m["arms"]["ours_fp32"]["achieved_gflops"]
            lines.append(f"| {m['model']} (ours_fp32) | {m['flops_per_iteration'] / 1e9:.2f} | fp32 | {fmt_stat(b)} | "
                         f"{_pct(b['median'] / peaks['fp32'])} | {_pct(b['median'] / peaks['fp32'])} |")
    over = [f"{m['model']}: {fmt_stat(m['arms']['ours']['call_overhead'], ' s')}" for m in ml["models"]]
    lines += ["", "Per calm_step call, outside the iterations (loading θ0, τ, inputs; writing τ, mask, trace): "
              + "; ".join(over) + ".", ""]
    return lines


def _memory(mem: dict | None) -> list[str]:
    if not mem:
        return []
    copy = mem["copy_bytes"]
    kinds = [k for k in ("rss", "anon", "gpu") if k in mem["rows"][0]["added"]]
    label = {"rss": "peak RSS (VmHWM)", "anon": "anonymous RSS (sampled)", "gpu": "GPU (allocator)"}
    act = mem["activation_bytes"]
    lines = ["## Memory (memory)", "",
             f"{mem['model']}, {mem['numel']:,} masked parameters: one fp32 copy = {copy / MiB:.1f} MiB; "
             f"batch {mem['batch_size']}×{mem['batches_per_task']} per task, {mem['iterations']} iterations. "
             "Each row is a fresh process; 'adds' is the step's peak minus the memory held before it "
             "(model loaded), in fp32 copies of the masked parameters; it includes one batch's activations. "
             "'Without activations' subtracts those of the largest batch among the row's visible tasks, each "
             "task's measured alone (the largest of all: " + ", ".join(
                 f"{act[k] / MiB:.0f} MiB = {act[k] / copy:.2f} copies, {label[k]}" for k in kinds if k in act) + "). "
             "VmHWM also counts the file pages mapped while safetensors files are read.", "",
             "| visible tasks | s / iteration | " + " | ".join(f"adds, {label[k]}" for k in kinds)
             + " | " + " | ".join(f"without activations, {k}" for k in kinds) + " |",
             "|---|---|" + "---|" * (2 * len(kinds))]
    for r in mem["rows"]:
        cells = [f"{r['added'][k] / MiB:.0f} MiB = **{r['copies'][k]:.2f}**" for k in kinds]
        cells += [f"{r['copies_without_activations'][k]:.2f}" if k in r["copies_without_activations"] else "–"
                  for k in kinds]
        lines.append(f"| {r['visible']} | {fmt_stat(r['seconds_per_iteration'], ' s')} | " + " | ".join(cells) + " |")
    return lines + [""]


def _scaling(sc: dict | None) -> list[str]:
    if not sc:
        return []
    t, p = sc["tasks"], sc["pipeline"]
    lines = ["## Scaling (scaling)", "",
             f"Seconds per iteration vs visible tasks ({t['model']}, batch {t['batch_size']}×{t['batches_per_task']}): "
             f"fit t(v) = {t['fit']['intercept']:.3f} + {t['fit']['per_task']:.3f}·v s.", "",
             "| visible tasks | s / iteration |", "|---|---|"]
    lines += [f"| {r['visible']} | {fmt_stat(r['per_iteration'], ' s')} |" for r in t["rows"]]
    lines += ["", "vs model size:", "",
              "| model | parameters | visible × batch | precision | s / iteration | GFLOP / iteration | achieved GFLOP/s |",
              "|---|---|---|---|---|---|---|"]
    for m in sc["models"]:
        lines.append(f"| {m['model']} | {m['numel'] / 1e6:.1f} M | {m['visible']} × {m['batch_size']}×{m['batches_per_task']} | "
                     f"{m['precision']} | {fmt_stat(m['per_iteration'], ' s')} | {m['flops_per_iteration'] / 1e9:.2f} | "
                     f"{m['achieved_gflops']:.1f} |")
    lines += ["", f"Pipeline mask cost vs |S̄| ({p['tasks']} tasks, {p['iterations']} iterations per step; "
              f"{p['method']}):", "", "| \\|S̄\\| | mask stages | + other benchmarked rules (serial) |", "|---|---|---|"]
    for r in p["rows"]:
        total = f"{r['total_seconds'] / 60:.1f} min" if r["total_seconds"] is not None else "–"
        lines.append(f"| {r['sequential']} | {r['mask_seconds'] / 60:.1f} min | {total} |")
    if p["measured_calm_steps"]:
        lines.append("\nMeasured calm_step rules of the run: "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in p["measured_calm_steps"].items()) + ".")
    lines += ["", "Plots: " + ", ".join(f"[{k}]({v})" for k, v in sc["plots"].items()), ""]
    lines += [f"![seconds per iteration vs visible tasks]({sc['plots']['tasks']})",
              f"![seconds per iteration vs model size]({sc['plots']['models']})",
              f"![pipeline cost vs |S̄|]({sc['plots']['pipeline']})", ""]
    return lines


def _profile(pr: dict | None) -> list[str]:
    if not pr:
        return []
    c, t = pr["cprofile"], pr["torch"]
    lines = ["## Profile of our mask step (profile)", "",
             f"{pr['model']}, {pr['visible']} visible tasks, batch {pr['batch_size']}×{pr['batches_per_task']}, "
             f"{pr['iterations']} iterations, {pr['precision']}, one calm_step call each. "
             f"Matmul and attention kernels: **{_pct(t['matmul_share'])}** of operator self time ({t['time']}).", "",
             f"torch.profiler, top operators by self {t['time']} time (total {t['total_ms']:.0f} ms):", "",
             "| operator | calls | self ms | share |", "|---|---|---|---|"]
    lines += [f"| `{r['op']}` | {r['calls']} | {r['self_ms']:.1f} | {_pct(r['share'])} |" for r in t["top"]]
    lines += ["", f"cProfile, top Python functions by own time (total {c['total_seconds']:.1f} s):", "",
              "| function | calls | own s | cumulative s | share |", "|---|---|---|---|---|"]
    lines += [f"| `{r['function']}` | {r['calls']} | {r['tottime']:.2f} | {r['cumtime']:.2f} | {_pct(r['share'])} |"
              for r in c["top"]]
    return lines + [""]


def _e2e(e: dict | None) -> list[str]:
    if not e:
        return []
    lines = ["## End to end (e2e)", ""]
    w = e["wall"]
    if w.get("default") is not None:
        lines.append(f"Default run (`snakemake --cores {e.get('cores') or 2}` from empty results/): "
                     f"{w['default'] / 60:.1f} min wall; no-op rerun: "
                     + (f"{w['noop']:.1f} s." if w.get("noop") is not None else "not given."))
    if e["rules"]:
        lines += [f"Per rule, from {e['rules_dir']} ({len(e['jobs'])} jobs, {e['serial_seconds'] / 60:.1f} min "
                  "if run one after another):", "",
                  "| rule | jobs | seconds (sum) | max RSS |", "|---|---|---|---|"]
        lines += [f"| {g['rule']} | {g['jobs']} | {g['s']:.0f} | {g['max_rss_mb']:.0f} MB |" for g in e["rules"]]
    return lines + [""]


def write_summary(out: Path) -> Path:
    names = ("limit", "mask_loop", "memory", "scaling", "profile", "e2e")
    res = {n: read_result(n, out) for n in names}
    limit_lines, peaks = _limit(res["limit"])
    lines = ["# calm-merge benchmarks", "",
             "Regenerate with `python -m benchmarks all` (or `snakemake --cores N benchmarks`); "
             "what each benchmark measures: benchmarks/README.md.", ""]
    lines += _env([r for r in res.values() if r]) + [""]
    took = {n: r for n, r in res.items() if r and "seconds" in r}
    if took:
        def one(n: str, r: dict) -> str:
            extra = [f"{r['cpu_seconds']:.0f} s CPU"] if "cpu_seconds" in r else []
            if r.get("environment", {}).get("load_average"):
                extra.append(f"load {r['environment']['load_average'][0]:.1f}")
            return f"{n} {r['seconds']:.0f} s" + (f" ({', '.join(extra)})" if extra else "")

        lines += ["Benchmark run times, wall (CPU time of the process and its children; 1-minute load "
                  "average when it ended): " + ", ".join(one(n, r) for n, r in took.items())
                  + f"; total {sum(r['seconds'] for r in took.values()) / 60:.1f} min wall, "
                  f"{sum(r.get('cpu_seconds', 0) for r in took.values()) / 60:.1f} min CPU.", ""]
    lines += _mask_loop(res["mask_loop"], peaks) + limit_lines + _memory(res["memory"]) + _scaling(res["scaling"])
    lines += _profile(res["profile"]) + _e2e(res["e2e"])
    path = out / "SUMMARY.md"
    write_text("\n".join(lines).rstrip() + "\n", path)
    return path
