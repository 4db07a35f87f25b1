"""An official-style CALM mask loop: the structure of the authors' `MaskMerging.train`,
written here as the baseline of the mask_loop benchmark (it is not a copy of their code).

Per iteration it
  1. computes the soft merge θ0 + (1 − σ(R)) τ_prev + σ(R) τ_new on the CPU into fresh tensors,
  2. loads them into the nn.Module (load_state_dict, assign=True: the official code swaps in
     new nn.Parameters) and moves the module to the device,
  3. for every visible task builds a fresh shuffled DataLoader (no workers) whose collate
     re-tokenises the raw texts (or re-decodes the PNG images) of its batch, runs the first
     `batches_per_task` batches forward and backward, copies each batch's gradient, moves
     both task vectors to the device to form g ⊙ (τ_new − τ_prev), and accumulates lr times
     that on the CPU,
  4. updates R on the CPU with the polarising regulariser.
It computes in fp32, as the official code does.

Its batches are calm_step's: the same generator (seed·1000 + step) draws one torch.randperm
per task per iteration, in the same task order (a sampler without RandomSampler's trailing
extra draw, so small credible sets stay in step too).
"""
from __future__ import annotations

import time
from typing import Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler

from calm.config import CalmConfig
from calm.checkpoints import read_checkpoint_dir
from calm.families.base import attention_for

from .common import sync
from .fixture import Setup


class ShuffleOnce(Sampler[int]):
    """One torch.randperm(n, generator) per pass over the data."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


class OfficialStyleLoop:
    def __init__(self, setup: Setup, visible: int, cfg: CalmConfig, device: str):
        if cfg.strategy != "both" or cfg.regulariser != "polarise":
            raise ValueError("the official-style loop implements strategy 'both' with the polarising regulariser")
        self.setup, self.cfg, self.device = setup, cfg, torch.device(device)
        self.module = self._load_module().eval()
        self.names = [n for n, _ in self.module.named_parameters()]
        # The official paramslist: θ0, τ_prev and τ_new, all kept on the CPU.
        self.theta0 = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        self.tau_prev = load_file(str(setup.tau_prev))
        finetuned = read_checkpoint_dir(setup.finetuned)
        self.tau_new = {n: finetuned[n] - self.theta0[n] for n in self.names}
        self.tasks = [self._task(v) for v in setup.visible(visible)]
        if setup.kind == "text":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)

    def _load_module(self) -> torch.nn.Module:
        if self.setup.kind == "vision":
            from transformers import CLIPVisionModel

            return CLIPVisionModel.from_pretrained(self.setup.model_dir, attn_implementation=attention_for(self.device))
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.setup.model_dir, attn_implementation=attention_for(self.device))

    def _task(self, v: dict) -> dict:
        raw = pd.read_parquet(self.setup.raw[v["task"]]).set_index("idx")
        credible = pd.read_parquet(v["credible"])
        items = raw.loc[credible["idx"].to_numpy(), "item"].tolist()
        targets = credible["target"].to_numpy()
        return {"task": v["task"], "data": list(zip(items, targets.tolist())),
                "head": load_file(v["head"])["head"]}

    # --- the official structure ----------------------------------------------------------------
    def _collate(self, rows: list[tuple]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        items, targets = zip(*rows)
        if self.setup.kind == "vision":
            from .vision import decode, normalise

            inputs = {"pixel_values": normalise(torch.stack([decode(b) for b in items]))}
        else:
            enc = self.tokenizer(list(items), padding=True, truncation=True, max_length=self.setup.max_length,
                                 return_tensors="pt")
            inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        return inputs, torch.tensor(targets, dtype=torch.long)

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.module(**inputs)
        if self.setup.kind == "vision":
            return F.normalize(out.pooler_output.float(), dim=-1)
        hidden = out.last_hidden_state
        m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize(((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)).float(), dim=-1)

    def init_mask(self) -> dict[str, torch.Tensor]:
        """The official create_basepatch: +value above the k-th largest |τ_new|, −value elsewhere."""
        flat = torch.cat([self.tau_new[n].abs().view(-1) for n in self.names])
        k = int(self.cfg.init_fraction * flat.numel())
        if k == 0:
            return {n: torch.full_like(self.tau_new[n], -self.cfg.init_value) for n in self.names}
        threshold = torch.topk(flat, k).values.min()
        return {n: torch.where(self.tau_new[n].abs() > threshold, self.cfg.init_value, -self.cfg.init_value)
                for n in self.names}

    def iteration(self, R: dict[str, torch.Tensor], generator: torch.Generator) -> None:
        cfg = self.cfg
        with torch.no_grad():
            merged = {}
            for n in self.names:
                frac = torch.sigmoid(R[n])
                merged[n] = self.theta0[n] + (1 - frac) * self.tau_prev[n] + frac * self.tau_new[n]
        self.module.load_state_dict(merged, strict=False, assign=True)
        self.module.to(self.device)
        for p in self.module.parameters():
            p.requires_grad_(True)
        params = dict(self.module.named_parameters())
        total: list[torch.Tensor] | None = None
        count = 0
        for task in self.tasks:
            head = task["head"].to(self.device)
            loader = DataLoader(task["data"], batch_size=cfg.batch_size, sampler=ShuffleOnce(len(task["data"]), generator),
                                collate_fn=self._collate, num_workers=0)
            for idx, (inputs, y) in enumerate(loader):
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                logits = self.setup.logit_scale * self._embed(inputs) @ head.T
                loss = F.cross_entropy(logits, y.to(self.device))
                loss.backward()
                grad = [params[n].grad.detach().clone() if params[n].grad is not None
                        else torch.zeros_like(params[n]) for n in self.names]
                self.module.zero_grad(set_to_none=True)
                grad = [-g * self.tau_prev[n].to(self.device) + g * self.tau_new[n].to(self.device)
                        for g, n in zip(grad, self.names)]
                if total is None:
                    total = [cfg.lr * g.detach().cpu() for g in grad]
                else:
                    total = [t + cfg.lr * g.detach().cpu() for t, g in zip(total, grad)]
                count += 1
                if idx + 1 >= cfg.batches_per_task:
                    break
        if total is None:
            raise RuntimeError("the official-style loop drew no batch")
        if cfg.grad_reduction == "mean":
            total = [t / count for t in total]
        with torch.no_grad():
            for n, g in zip(self.names, total):
                p = R[n]
                derivative = torch.sigmoid(p) * (1 - torch.sigmoid(p))
                reg_term = cfg.alpha * torch.where(p > 0, derivative, -derivative)
                p -= g * derivative - reg_term

    def run(self, iterations: int) -> tuple[dict[str, torch.Tensor], list[float]]:
        """R after `iterations` steps from the initial mask, and the seconds of each step."""
        R = self.init_mask()
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.setup.step)
        seconds = []
        for _ in range(iterations):
            sync(self.device.type)
            start = time.perf_counter()
            self.iteration(R, generator)
            sync(self.device.type)
            seconds.append(time.perf_counter() - start)
        return R, seconds
