"""What produced a result: the code's commit, the library versions, the machine and the
precision its matmuls actually ran in.

Two CPUs give different tables when one computes bf16 natively (AVX512-BF16 / AMX: precision
auto takes bf16 there) and the other does not (auto falls back to fp32). Every job that
computes predictions records its own device, CPU flags and precision (`compute_record`,
stored in the predictions file's metadata); a results table gathers those records with the
commit and versions of the job that wrote it (`table_provenance`). No torch import here
beyond `compute_record`'s caller's: the table jobs run without it.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping

# The /proc/cpuinfo flags that decide torch's native CPU bf16 path (calm.families.base.use_bf16).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
# The key of a predictions file's Parquet metadata that holds its compute record.
PARQUET_KEY = b"calm.provenance"
UNKNOWN = "unknown"


@functools.lru_cache(maxsize=None)
def commit(root: str | os.PathLike = Path(__file__).resolve().parent.parent) -> str:
    """The git commit of the checkout at `root` (this code's), '+dirty' when tracked files
    differ from it, or 'unknown' outside a git checkout (an installed package, a tarball)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{head}+dirty" if dirty else head or UNKNOWN


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def cpu(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """The CPU's model name and which of BF16_FLAGS it has ('unknown' where cpuinfo is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"cpu": UNKNOWN, "cpu_bf16_flags": UNKNOWN}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", UNKNOWN), "cpu_bf16_flags": [f for f in BF16_FLAGS if f in flags]}


def software() -> dict:
    return {"commit": commit(), "torch": version("torch"), "transformers": version("transformers")}


def compute_record(device: str, bf16: bool, gpu: str | None = None) -> dict:
    """What one computing job ran on: its device, the GPU's name (CUDA) or the CPU and its bf16
    flags, and the precision its matmuls used (bf16 autocast or fp32)."""
    torch = sys.modules.get("torch")  # its own version names the build (+cu130, +cpu)
    return {"device": device, "precision": "bf16" if bf16 else "fp32", **({"gpu": gpu} if gpu else cpu()),
            "torch": torch.__version__ if torch is not None else version("torch")}


def family_record(family) -> dict:
    """compute_record of an opened model family (calm.families.base.Family)."""
    import torch
    gpu = torch.cuda.get_device_name(family.device) if family.device.type == "cuda" else None
    return compute_record(family.device.type, family.bf16, gpu)


def parquet_metadata(record: Mapping) -> dict[bytes, bytes]:
    return {PARQUET_KEY: json.dumps(dict(record), sort_keys=True).encode()}


def read_record(path: str | os.PathLike) -> dict | None:
    """The compute record a predictions file carries (None: written before records existed)."""
    import pyarrow.parquet as pq
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[PARQUET_KEY]) if PARQUET_KEY in meta else None


def table_provenance(records: Mapping[str, dict | None]) -> dict:
    """A results table's provenance from each row's compute record (row name -> record): the
    commit and versions of the job writing the table, the precision(s) and machine(s) the rows'
    predictions were computed with, and each row's record."""
    known = [r for r in records.values() if r is not None]
    return {**software(),
            "precision": _distinct(r["precision"] for r in known) or [UNKNOWN],
            "machines": _unique_dicts({k: v for k, v in r.items() if k != "precision"} for r in known),
            "rows": dict(records)}


def _distinct(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def _unique_dicts(items: Iterable[dict]) -> list[dict]:
    seen = {json.dumps(d, sort_keys=True): d for d in items}
    return [seen[k] for k in sorted(seen)]
