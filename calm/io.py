"""Atomic writers: every output lands under a temporary name and is renamed into place,
so an interrupted job never leaves a file that Snakemake (or a rerun) would trust."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_stale(path: Path) -> None:
    """Remove the temporaries a killed writer of `path` left (SIGKILL skips `finally`):
    the names tempfile gives, '.<name>.<8 characters>.tmp', beside `path`."""
    stale = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    for p in path.parent.iterdir():
        if stale.match(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


class OutputError(ValueError):
    """An output that cannot be written, in one line naming the user's path; `cause`, when
    the disk refused the write (a folder's writer re-words its files' errors with it)."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(message)
        self.cause = cause


# Why a write failed, for the errors a full or read-only disk gives. Libraries rarely keep the
# errno: pyarrow's OSError says "[Errno 28] …", safetensors' error "… (os error 28)".
_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EROFS: "read-only file system"}


def _write_cause(exc: BaseException) -> str | None:
    if isinstance(exc, OutputError):
        return exc.cause
    code = getattr(exc, "errno", None)
    if code in _CAUSES:
        return _CAUSES[code]
    text = str(exc)
    found = re.search(r"\[Errno (\d+)\]|code: (\d+)|os error (\d+)", text)
    code = int(next(g for g in found.groups() if g)) if found else None
    return _CAUSES.get(code)


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn a failed write into one line naming `path` (not its temporary) and the cause."""
    try:
        yield
    except Exception as exc:
        cause = _write_cause(exc)
        if cause is None:
            raise
        raise OutputError(f"{path}: cannot write this {what}: {cause}", cause) from None


def _temporary(path: Path, make, what: str) -> Path:
    with _writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(path)
        return Path(make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; this output is a file")
    tmp = _temporary(path, lambda **kw: _closed(tempfile.mkstemp(**kw)), "file")
    try:
        with _writing(path, "file"):
            yield tmp
            # mkstemp makes the file private (0600); outputs get the usual permissions
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _closed(made: tuple[int, str]) -> str:
    os.close(made[0])
    return made[1]


# Written into every folder atomic_dir makes: the mark that a folder is an output a stage
# wrote, which a later write of the same output may replace. A folder without it (a user's)
# is never removed.
OWN_OUTPUT = ".calm-output"


def mark_own_output(folder: str | os.PathLike) -> None:
    """Mark `folder` as an output a stage wrote (atomic_dir marks its own)."""
    (Path(folder) / OWN_OUTPUT).write_text("written by calm-merge; replaced when this output is written again\n")


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse, in one line, a `path` that atomic_dir may not replace (see OWN_OUTPUT)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{path}: exists and is not a folder this command wrote; give --out a new folder")
    if any(path.iterdir()) and not (path / OWN_OUTPUT).is_file():
        raise OutputError(f"{path}: exists and holds files this command did not write; give --out a new "
                          "folder (or empty this one)")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds.
    `path` may be missing, empty, or a folder this module wrote (its OWN_OUTPUT mark); any
    other folder is refused before any work, so nothing a user keeps there is deleted."""
    path = Path(path)
    check_replaceable(path)
    tmp = _temporary(path, tempfile.mkdtemp, "folder")
    try:
        with _writing(path, "folder"):
            yield tmp
            mark_own_output(tmp)
            os.chmod(tmp, 0o777 & ~_umask())
            check_replaceable(path)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(frame, path: str | os.PathLike, metadata: dict[bytes, bytes] | None = None) -> None:
    """`metadata`: extra key-value pairs of the file's schema (pandas keeps its own beside them)."""
    if not metadata:
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                  metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # imported here: the table and figure jobs use this module and need no torch (4 s to import)
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)


def missing_text(exc: FileNotFoundError) -> str:
    """pyarrow raises FileNotFoundError('path') with nothing else: say what it means."""
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or 'no such file or folder'}"
    text = str(exc)
    return text if "no such" in text.lower() or "not found" in text.lower() else f"{text}: no such file or folder"
