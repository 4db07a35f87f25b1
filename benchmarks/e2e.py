"""Benchmark 5, end to end: per-rule seconds and peak RSS from the Snakemake `benchmark:` files
of a default run (benchmarks/rules/**.tsv), the wall time of the run and of its no-op rerun
when given (--wall-default, --wall-noop), or measured here with --time-run."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from .common import ROOT


def read_rules(rules_dir: Path) -> list[dict]:
    rows = []
    for f in sorted(rules_dir.rglob("*.tsv")):
        frame = pd.read_csv(f, sep="\t")
        if frame.empty:
            continue
        r = frame.iloc[0]
        job = str(f.relative_to(rules_dir).with_suffix(""))
        rows.append({"job": job, "rule": _rule_of(job), "s": float(r["s"]),
                     "max_rss_mb": float(r["max_rss"]) if "max_rss" in r and r["max_rss"] != "-" else None,
                     "cpu_time": float(r["cpu_time"]) if "cpu_time" in r and r["cpu_time"] != "-" else None})
    return rows


def _rule_of(job: str) -> str:
    """merge/calm_step2-tweet_sentiment → merge/calm_step; finetune/ng20 → finetune."""
    parts = job.split("/")
    if len(parts) == 1:
        return parts[0]
    head, leaf = parts[0], parts[-1]
    stem = leaf.split("-")[0].rstrip("0123456789") if "-" in leaf else None
    return f"{head}/{stem}" if stem else head


def _snakemake(cores: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], cwd=ROOT, check=True)
    return time.perf_counter() - start


def run(ctx) -> dict | None:
    a = ctx.args
    walls = {"default": a.wall_default, "noop": a.wall_noop}
    if a.time_run:
        ctx.log(f"timing `snakemake --cores {a.cores}` in {ROOT} (results/ as it is now), then its rerun")
        walls["default"] = _snakemake(a.cores)
        walls["noop"] = _snakemake(a.cores)
    rows = read_rules(a.rules_dir) if a.rules_dir.is_dir() else []
    if not rows and walls["default"] is None:
        ctx.log(f"no benchmark files under {a.rules_dir} and no wall times given: nothing to summarise")
        return None
    by_rule: dict[str, dict] = {}
    for r in rows:
        g = by_rule.setdefault(r["rule"], {"rule": r["rule"], "jobs": 0, "s": 0.0, "max_rss_mb": 0.0})
        g["jobs"] += 1
        g["s"] += r["s"]
        g["max_rss_mb"] = max(g["max_rss_mb"], r["max_rss_mb"] or 0.0)
    return {"rules_dir": str(a.rules_dir), "jobs": rows,
            "rules": sorted(by_rule.values(), key=lambda g: -g["s"]),
            "serial_seconds": sum(r["s"] for r in rows), "wall": walls, "cores": a.cores if a.time_run else None}
