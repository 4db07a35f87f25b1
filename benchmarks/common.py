"""What every benchmark shares: the plan (full, --quick or CUDA), timing statistics, the
environment record, peak-memory probes and the JSON results folder."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# --- plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelPlan:
    """One model at the settings a benchmark runs it with."""
    model: str             # pico | minilm | vit_b32
    tasks: int             # visible tasks of the timed mask step (the new task is the last)
    batch_size: int
    batches_per_task: int
    pool: int = 0          # vision only: synthetic images per task (text uses the real pools)


@dataclass(frozen=True)
class Plan:
    quick: bool
    device: str                   # cpu | cuda
    threads: int
    iterations: int               # mask iterations per timed run
    reps: int                     # timed repetitions (after one untimed warm-up)
    mask_loop: tuple[ModelPlan, ...]
    sweep: ModelPlan              # seconds / memory vs visible tasks: 1 … sweep.tasks
    ladder: tuple[ModelPlan, ...]  # seconds per iteration vs model size
    profile: ModelPlan
    matmul_n: int
    sweep_iterations: int = 2     # per run in the scaling and memory sweeps
    precision: str = "auto"

    def dump(self) -> dict:
        return asdict(self)


def make_plan(quick: bool, device: str, threads: int, text_tasks: int, model: str | None = None) -> Plan:
    """The settings of a run. Full CPU: the embedded default's mask step (MiniLM, batch 32, one
    batch per task, every task visible) and a ViT-B/32-shaped tower at batch 8; CUDA: the
    paper's shape (ViT-B/32, batch 128, two batches per task, 8 visible tasks). `model` keeps
    only that model (at these settings, or at a small default where the plan lacks it)."""
    if quick:
        pico = ModelPlan("pico", min(3, text_tasks), 8, 1)
        plan = Plan(quick=True, device=device, threads=threads, iterations=2, reps=2,
                    mask_loop=(pico,), sweep=pico, ladder=(pico,), profile=pico, matmul_n=256)
        small = {"pico": pico, "minilm": ModelPlan("minilm", min(3, text_tasks), 8, 1),
                 "vit_b32": ModelPlan("vit_b32", 2, 2, 1, pool=8)}
    elif device == "cuda":
        vit = ModelPlan("vit_b32", 8, 128, 2, pool=320)
        k = min(8, text_tasks)
        plan = Plan(quick=False, device=device, threads=threads, iterations=3, reps=3,
                    mask_loop=(vit, ModelPlan("minilm", text_tasks, 32, 1)), sweep=vit,
                    ladder=(ModelPlan("pico", k, 128, 2), ModelPlan("minilm", k, 128, 2),
                            ModelPlan("vit_b32", k, 128, 2, pool=320)),
                    profile=vit, matmul_n=8192, sweep_iterations=3)
        small = {"pico": ModelPlan("pico", text_tasks, 128, 2)}
    else:
        default = ModelPlan("minilm", text_tasks, 32, 1)
        vit = ModelPlan("vit_b32", 2, 8, 1, pool=24)
        plan = Plan(quick=False, device=device, threads=threads, iterations=3, reps=3,
                    mask_loop=(default, vit, ModelPlan("pico", text_tasks, 32, 1)), sweep=default,
                    ladder=(ModelPlan("pico", 2, 8, 1), ModelPlan("minilm", 2, 8, 1), vit),
                    profile=default, matmul_n=2048)
        small = {}
    if model is None:
        return plan

    def only(plans: tuple[ModelPlan, ...]) -> tuple[ModelPlan, ...]:
        kept = tuple(p for p in plans if p.model == model)
        return kept or (small.get(model) or next(p for p in plan.mask_loop + plan.ladder if p.model == model),)

    ml = only(plan.mask_loop)
    return Plan(**{**plan.__dict__, "mask_loop": ml, "ladder": only(plan.ladder),
                   "sweep": plan.sweep if plan.sweep.model == model else ml[0],
                   "profile": plan.profile if plan.profile.model == model else ml[0]})


# --- statistics -------------------------------------------------------------------------------

def stats(values: Sequence[float]) -> dict[str, float]:
    """Median and inter-quartile range (numpy's linear interpolation), plus min/max and n."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return {"n": 0, "median": float("nan"), "q1": float("nan"), "q3": float("nan"),
                "iqr": float("nan"), "min": float("nan"), "max": float("nan")}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "median": float(med), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1), "min": float(a.min()), "max": float(a.max())}


def fmt_stat(s: dict, unit: str = "", digits: int = 3) -> str:
    """'1.23 s (IQR 1.20–1.31, n=6)'."""
    if not s or not s.get("n"):
        return "–"
    return f"{s['median']:.{digits}g}{unit} (IQR {s['q1']:.{digits}g}–{s['q3']:.{digits}g}, n={s['n']})"


# --- devices, threads and clocks -------------------------------------------------------------------

def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return choice


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


# --- memory -----------------------------------------------------------------------------------

def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def anon_rss_bytes() -> int:
    return _status_kb("RssAnon") * 1024


class AnonPeak:
    """Samples RssAnon every `interval` seconds in a thread. VmHWM also counts file pages a
    process maps while it reads a safetensors file; anonymous memory is what the step itself
    holds. Sampling can miss a peak shorter than the interval, so this is a lower bound."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak = interval, anon_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, anon_rss_bytes())

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_rss_bytes())


# --- environment and results -------------------------------------------------------------------

def environment(plan: Plan | None = None) -> dict:
    import torch

    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpus_visible": default_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    if plan is not None:
        env["plan"] = plan.dump()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def results_dir(quick: bool, out: Path | None = None) -> Path:
    """Quick (smoke-test) results never overwrite the real ones."""
    base = out or RESULTS
    return base / "quick" if quick else base


def write_result(name: str, payload: dict, out_dir: Path) -> Path:
    from calm.io import write_json

    path = out_dir / f"{name}.json"
    write_json(payload, path)
    return path


def read_result(name: str, out_dir: Path) -> dict | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class Log:
    """Progress lines on stderr (benchmarks run for minutes; say what is happening)."""
    name: str
    start: float = field(default_factory=time.perf_counter)

    def __call__(self, msg: str) -> None:
        import sys

        print(f"[{self.name} {time.perf_counter() - self.start:7.1f}s] {msg}", file=sys.stderr, flush=True)
