"""Fine-tuning: the embedded default's task models, from the pretrained one."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from calm import artifacts
from calm.config import FinetuneConfig
from calm.families.base import Family


def finetune(family: Family, inputs: str | Path, head: str | Path, cfg: FinetuneConfig,
             out_dir: str | Path) -> dict:
    """Fine-tune the encoder on a task's train split against its frozen head."""
    cache = artifacts.read_inputs(inputs, "train")
    head_t = artifacts.read_head(head)
    params = {n: p.clone().requires_grad_(True) for n, p in family.pretrained_state().items()}
    optimiser = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(cache["idx"])
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    warmup = int(cfg.warmup * steps)
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 1.0 if cfg.schedule == "constant" else max(0.0, (steps - s) / max(1, steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    generator = torch.Generator().manual_seed(cfg.seed)
    family.train_mode(True)
    torch.manual_seed(cfg.seed)  # dropout masks
    losses = []
    bar = tqdm(total=steps, desc="finetune", unit="step", mininterval=2.0)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = family.batch(cache, rows)
            with family.autocast():
                logits = family.logits(params, batch, head_t)
            loss = F.cross_entropy(logits.float(), cache["label"][rows].to(family.device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    family.train_mode(False)
    family.save({k: v.detach() for k, v in params.items()}, Path(out_dir))
    return {"steps": steps, "final_loss": float(np.mean(losses[-20:]))}
