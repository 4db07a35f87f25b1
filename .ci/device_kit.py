"""What travels to a bare GPU machine for .ci/device-check, and what its results become.

`pack` (here, by .ci/device-pack): the fetched pretrained model with its floating tensors stored
as fp16 (the 87 MB fp32 MiniLM does not fit the 64 MiB that travels; fp16 keeps every weight to
a relative 2^-11, finer than the bf16 matmuls the default runs in), each task's fetched splits,
the config, and a manifest of sizes. `unpack` (there): the model back in its own dtypes, the
splits where the workflow's fetch_data (and fetch_val) leave them, and the config pointed at both.
`rules`: per-job and per-rule wall seconds of a run, from its Snakemake log.

Runs with the standard library, torch, safetensors and PyYAML only: on the GPU machine it runs
before the project's own requirements are installed.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

FP16_MAX = 65504.0
WEIGHTS = "model.safetensors"
# What the GPU machine's image already holds (the device tool's package list, read 2026-11-17):
# these never travel. pulp neither: 16 MB, and Snakemake schedules greedily without it.
ON_DEVICE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp pulp
""".split())
# What the device check runs that the image lacks: the config's types, the workflow, its schema check.
ROOTS = ("pydantic", "snakemake", "jsonschema")


def pack_model(src: Path, dst: Path) -> dict:
    """A HF folder with its floating tensors as fp16; the original dtype of each is kept in the
    file's metadata. Refuses a tensor fp16 cannot hold."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / WEIGHTS))
    dtypes, small = {}, {}
    for name, t in tensors.items():
        if t.is_floating_point() and t.dtype != torch.float16:
            peak = float(t.abs().max()) if t.numel() else 0.0
            if peak > FP16_MAX:
                raise SystemExit(f"{src / WEIGHTS}: tensor {name} reaches {peak:g}, beyond fp16's range")
            dtypes[name] = str(t.dtype).removeprefix("torch.")
            small[name] = t.to(torch.float16)
        else:
            small[name] = t
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != WEIGHTS and not f.name.startswith("."):
            shutil.copyfile(f, dst / f.name)
    save_file(small, str(dst / WEIGHTS), metadata={"format": "pt", "device_kit_dtypes": json.dumps(dtypes)})
    return {"tensors": len(tensors), "stored_fp16": len(dtypes)}


def unpack_model(src: Path, dst: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src / WEIGHTS), "pt") as f:
        dtypes = json.loads(f.metadata().get("device_kit_dtypes", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    restored = {k: t.to(getattr(torch, dtypes[k])) if k in dtypes else t for k, t in tensors.items()}
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != WEIGHTS and not f.name.startswith("."):
            shutil.copyfile(f, dst / f.name)
    save_file(restored, str(dst / WEIGHTS), metadata={"format": "pt"})


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pack(args: argparse.Namespace) -> None:
    import yaml

    kit, work = Path(args.kit), Path(args.work)
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    tasks = args.tasks
    if kit.exists():
        shutil.rmtree(kit / "model", ignore_errors=True)
        shutil.rmtree(kit / "data", ignore_errors=True)
        shutil.rmtree(kit / "val", ignore_errors=True)
    kit.mkdir(parents=True, exist_ok=True)
    info = pack_model(work / "resources/models/pretrained", kit / "model")
    for task in tasks:
        shutil.copytree(work / "resources/data" / task, kit / "data" / task)
        if (work / "resources/val" / task).is_dir():  # data.n_val > 0 (fetch_val's folders)
            shutil.copytree(work / "resources/val" / task, kit / "val" / task)
    (kit / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    sizes = {part: folder_bytes(kit / part) for part in ("model", "data", "val", "whl") if (kit / part).exists()}
    manifest = {"config": args.config, "tasks": tasks, "model": info, "bytes": sizes,
                "total_mib": round(sum(sizes.values()) / 2**20, 1)}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))


def unpack(args: argparse.Namespace) -> None:
    import yaml

    kit, work = Path(args.kit), Path(args.work)
    unpack_model(kit / "model", work / "model")
    for part in ("data", "val"):
        for task_dir in sorted((kit / part).iterdir()) if (kit / part).is_dir() else []:
            dst = work / "resources" / part / task_dir.name
            if not dst.exists():
                shutil.copytree(task_dir, dst)
    cfg = yaml.safe_load((kit / "config.yaml").read_text()) or {}
    cfg["device"] = args.device
    cfg.setdefault("model", {})["source"] = str((work / "model").resolve())
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"unpacked the model into {work / 'model'} and {len(list((kit / 'data').iterdir()))} tasks "
          f"into {work / 'resources/data'}")


def job_times(log: str) -> list[dict]:
    """Each job of a Snakemake log: rule, jobid, first output, start and wall seconds (to the
    second: the log's timestamps), from its `[date]` / `rule X:` / `jobid: N` block and its
    `Finished jobid: N` line. Covers every rule, also those without a `benchmark:` file."""
    from datetime import datetime

    stamp, jobs, current = None, {}, None
    for line in log.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]") and len(s) > 20:
            try:
                stamp = datetime.strptime(s[1:-1], "%a %b %d %H:%M:%S %Y")
            except ValueError:
                pass
            continue
        if (s.startswith("rule ") or s.startswith("localrule ")) and s.endswith(":"):
            current = {"rule": s.split()[1].rstrip(":"), "start": stamp, "output": ""}
        elif current is not None and s.startswith("output:") and not current["output"]:
            current["output"] = s.split(":", 1)[1].strip().split(",")[0]
        elif current is not None and s.startswith("jobid:"):
            jobs[int(s.split()[1])] = current
            current = None
        elif s.startswith("Finished jobid:"):
            job = jobs.get(int(s.split()[2]))
            if job is not None and stamp is not None and job["start"] is not None:
                job["seconds"] = (stamp - job["start"]).total_seconds()
    return [{"rule": j["rule"], "jobid": k, "output": j["output"], "start": j["start"].strftime("%H:%M:%S"),
             "seconds": j["seconds"]} for k, j in sorted(jobs.items()) if "seconds" in j]


def rules(args: argparse.Namespace) -> None:
    """Per-job wall seconds of the latest Snakemake run in --work as one CSV, then each rule's
    total, largest first, on standard output."""
    logs = sorted((Path(args.work) / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"{args.work}: no Snakemake log")
    rows = [r for r in job_times(logs[-1].read_text()) if r["rule"] != "all"]
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["rule", "jobid", "output", "start", "seconds"])
        w.writeheader()
        w.writerows(rows)
    totals: dict[str, list[float]] = {}
    for r in rows:
        totals.setdefault(r["rule"], []).append(r["seconds"])
    for rule, secs in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:28s} {len(secs):3d} jobs {sum(secs):7.0f} s of job time (longest {max(secs):.0f} s)")
    print(f"{'all':28s} {len(rows):3d} jobs {sum(r['seconds'] for r in rows):7.0f} s of job time")


def pins(args: argparse.Namespace) -> None:
    """name==version, as installed here, of ROOTS and everything they require, less ON_DEVICE."""
    import importlib.metadata as md
    import re

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: dict[str, str | None] = {}

    def walk(name: str) -> None:
        if norm(name) in seen:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[norm(name)] = None
            return
        seen[norm(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                walk(req.name)

    for root in ROOTS:
        walk(root)
    for name, version in sorted(seen.items()):
        if version and name not in ON_DEVICE:
            print(f"{name}=={version}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=".ci/device_kit.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="model (fp16), fetched splits and config into the kit")
    a.add_argument("--config", required=True)
    a.add_argument("--work", required=True, help="the folder whose resources/ the fetch rules filled")
    a.add_argument("--kit", required=True)
    a.add_argument("--tasks", nargs="+", required=True)
    a.set_defaults(fn=pack)
    b = sub.add_parser("unpack", help="the kit into a work folder, with its config for this device")
    b.add_argument("--kit", required=True)
    b.add_argument("--work", required=True)
    b.add_argument("--device", choices=["cpu", "cuda"], required=True)
    b.set_defaults(fn=unpack)
    c = sub.add_parser("rules", help="per-rule seconds of a run")
    c.add_argument("--work", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(fn=rules)
    d = sub.add_parser("pins", help="the packages to carry, as name==version")
    d.set_defaults(fn=pins)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
