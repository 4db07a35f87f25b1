"""The mask loop's resume file, so that a killed CALM step continues where it stopped.

The file sits beside the step's output folder (`<out>.resume.pt`), not inside it: the
folder is replaced whole when the step succeeds, and Snakemake deletes the declared outputs
of a failed job but not this undeclared file. It is written atomically, read back with
`torch.load(weights_only=True)`, and holds a fingerprint of everything the loop depends on
(settings, the three model-sized tensors, the visible tasks' files): a file left by a run
with other settings or inputs is ignored, never resumed from. The step removes it once its
outputs are in place.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from calm.checkpoints import load_torch_file
from calm.io import atomic_path
from calm.merging.mask_optimisation import MaskState

log = logging.getLogger("calm")


def resume_path(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".resume.pt")


def fingerprint(settings: Mapping[str, Any], tensors: Iterable[Mapping[str, torch.Tensor]],
                files: Iterable[str | Path]) -> str:
    """A hash of the settings (JSON), the tensors' names and bytes, and the files' bytes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for state in tensors:
        for name in sorted(state):
            t = state[name].detach().contiguous().cpu()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def save_state(path: str | Path, state: MaskState, generator: torch.Generator, key: str) -> None:
    payload = {"fingerprint": key, "iteration": state.iteration,
               "logits": {n: r.detach().cpu() for n, r in state.logits.items()},
               "trace": state.trace, "initial_active": state.initial_active,
               "generator": generator.get_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: str | Path, generator: torch.Generator, key: str) -> MaskState | None:
    """The saved state if `path` holds one for this fingerprint (the generator is set to its
    saved state too), else None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = load_torch_file(path, trust_pickle=False)
    except ValueError as exc:
        log.warning("ignoring the resume file: %s", exc)
        return None
    if not isinstance(payload, dict) or payload.get("fingerprint") != key:
        log.warning("ignoring the resume file %s: it was saved for other settings or inputs", path)
        return None
    generator.set_state(payload["generator"])
    log.info("resuming the mask optimisation from %s after iteration %d", path, payload["iteration"])
    return MaskState(iteration=int(payload["iteration"]), logits=payload["logits"],
                     trace=list(payload["trace"]), initial_active=int(payload["initial_active"]))
