"""Our mask step, through the library's own code path: calm.stages.merge.calm_step (which builds the
loss terms from the cached tokenised pools and calls calm.merging.mask_optimisation.optimise_mask)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open

from calm.config import CalmConfig
from calm.families.base import Family
from calm.merging.mask import unpack
from calm.stages.merge import calm_step

from .common import sync
from .fixture import Setup


def run_step(setup: Setup, family: Family, visible: int, cfg: CalmConfig, keep_mask: bool = False) -> dict:
    """One calm_step call; the per-iteration seconds come from optimise_mask's own trace."""
    out = Path(tempfile.mkdtemp(prefix="calm-bench-"))
    try:
        sync(family.device.type)
        start = time.perf_counter()
        summary = calm_step(family=family, tau_prev=setup.tau_prev, model_dir=setup.finetuned,
                            visible=setup.visible(visible), cfg=cfg, step=setup.step, out_dir=out / "step")
        sync(family.device.type)
        wall = time.perf_counter() - start
        trace = pd.read_csv(out / "step" / "trace.csv")
        result = {"seconds": trace["seconds"].tolist(), "wall": wall, "numel": summary["numel"],
                  "final_active_fraction": summary["final_active_fraction"]}
        if keep_mask:
            result["mask"] = read_mask(out / "step" / "mask.safetensors")
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def read_mask(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        packed = {k: f.get_tensor(k) for k in f.keys()}
    return unpack(packed, meta)


def _flop_mapping() -> dict:
    """FlopCounterMode knows CUDA's attention kernels but not the CPU flash-attention ops that
    SDPA takes on a CPU (where the product now loads models with eager attention, see
    calm.families.base.attention_for); count those with torch's own SDPA formulas."""
    try:
        from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
    except ImportError:
        return {}
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *args, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v))
    return mapping


def count_flops(setup: Setup, family: Family, visible: int, cfg: CalmConfig) -> int:
    """Model FLOPs (multiply-add = 2) of a whole calm_step run: forward and backward of every
    batch at its actual (dynamically padded) shape. Same seed, same batches as a timed run."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        run_step(setup, family, visible, cfg)
    return int(counter.get_total_flops())
