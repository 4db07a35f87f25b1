"""CALM variants, the tidy sweep table of the ablations, and a user's sweep grid.

A variant is one complete set of CALM settings (the `calm` section with its own S̄ order,
plus the sampler, ratio and selection seed of its credible sets) under a name; the workflow writes it to
results/merge/calm/<name>/. `default` is the config's own `calm` and `select` sections.
Each ablation is a list of points (its axis values) that name a variant; points with the
same settings share one variant, so a grid value equal to the default costs nothing. A user's
sweep grid (the config's `grid`: one row per variant, one column per key of calm or select it
changes) adds one variant per row, named after its values as Snakemake's Paramspace names an
instance, and shares variants the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from calm.config import CalmConfig, Config
from calm.methods import validated_methods
from calm.sampling import SAMPLERS, SEEDED

# The columns each accuracy ablation reports before task, accuracy, normalised.
AXES: dict[str, list[str]] = {
    "samplers": ["sampler", "ratio", "repeat"],
    "n_seq": ["n_seq", "order_seed", "order"],
    "lr": ["lr"],
    "alpha": ["alpha"],
    "switches": ["grad_reduction", "regulariser"],
    "strategy": ["strategy"],
    "iterations": ["iterations"],
    "bases": ["base", "strategy"],
}
# Paper Table 2, the six models of the mask analysis: the checkpoint `python -m calm mask-parts`
# writes -> (row label in results/ablations/mask_analysis.csv, display name, LaTeX), in the
# paper's order.
MASK_ROWS: dict[str, tuple[str, str, str]] = {
    "theta0": ("θ0", "θ₀", r"$\theta_0$"),
    "tau1": ("θ0+τ1", "θ₀ + τ₁", r"$\theta_0 + \tau_1$"),
    "not_m_tau1": ("θ0+(1−M)τ1", "θ₀ + (1 − M) ⊙ τ₁", r"$\theta_0 + (1 - M) \odot \tau_1$"),
    "tau2": ("θ0+τ2", "θ₀ + τ₂", r"$\theta_0 + \tau_2$"),
    "m_tau2": ("θ0+Mτ2", "θ₀ + M ⊙ τ₂", r"$\theta_0 + M \odot \tau_2$"),
    "merged": ("θ0+(1−M)τ1+Mτ2", "θ₀ + (1 − M) ⊙ τ₁ + M ⊙ τ₂",
               r"$\theta_0 + (1 - M) \odot \tau_1 + M \odot \tau_2$"),
}
# At ratio 1 every pseudo-label sampler keeps the whole pool with its pseudo-labels: the same set
# as the first of them draws.
_WHOLE_POOL = [name for name, s in SAMPLERS.items() if s.pseudo_labels]


@dataclass(frozen=True)
class Variant:
    name: str
    calm: CalmConfig
    sampler: str
    ratio: float
    select_seed: int

    @property
    def sequential(self) -> list[str]:
        return list(self.calm.sequential)

    def efficient(self, tasks: list[str]) -> list[str]:
        """S: the tasks not merged sequentially, in data.tasks order."""
        return [t for t in tasks if t not in self.calm.sequential]

    def key(self) -> str:
        sampler = _WHOLE_POOL[0] if self.ratio == 1 and self.sampler in _WHOLE_POOL else self.sampler
        return json.dumps([self.calm.model_dump(), sampler, self.ratio, self.select_seed], sort_keys=True)


def order_permutation(tasks: list[str], seed: int) -> list[str]:
    """A seeded random permutation of the tasks; its first n form S̄ for |S̄| = n."""
    return [tasks[i] for i in np.random.default_rng(seed).permutation(len(tasks))]


def distinct_orders(tasks: list[str], n: int, count: int, max_seed: int = 10_000) -> list[tuple[int, list[str]]]:
    """(seed, S̄) for the first `count` seeds whose permutations start with distinct S̄ of
    length n (a seed repeating an earlier S̄ is skipped; fewer if fewer S̄ exist)."""
    out, seen = [], set()
    for seed in range(max_seed):
        order = order_permutation(tasks, seed)[:n]
        if tuple(order) not in seen:
            seen.add(tuple(order))
            out.append((seed, order))
            if len(out) == count:
                break
    return out


def default_variant(cfg: Config) -> Variant:
    return Variant("default", cfg.calm, cfg.select.sampler, cfg.select.ratio, cfg.select.seed)


# With data.n_val, the main table's "CALM (chosen on validation)": the default with its base's
# scale chosen on S's val splits (calm.base_scale: validation).
VALIDATED_BASE = "base-on-validation"


def validated_variant(cfg: Config) -> Variant | None:
    """The default's twin whose base scale the val splits choose, when there are val splits, the
    default's own scale is the configured one, and its base has a scale."""
    if not cfg.data.n_val or cfg.calm.base_scale != "config" or cfg.calm.base not in validated_methods():
        return None
    return replace(default_variant(cfg), name=VALIDATED_BASE,
                   calm=cfg.calm.model_copy(update={"base_scale": "validation"}))


class _Registry:
    """Names variants by their settings: the first name given to a set of settings wins."""

    def __init__(self, reserved: list[Variant]):
        self.names: dict[str, str] = {}
        self.variants: dict[str, Variant] = {}
        for v in reserved:
            self.names.setdefault(v.key(), v.name)

    def add(self, v: Variant) -> str:
        name = self.names.setdefault(v.key(), v.name)
        if name in self.variants and self.variants[name].key() != v.key():
            raise ValueError(f"two different CALM variants are both named '{name}'")
        self.variants.setdefault(name, replace(v, name=name))
        return name


def _sweep_row(ablation: str, name: str, v: Variant, repeat: int | None = None,
               order_seed: int | None = None) -> dict:
    c = v.calm
    return {"ablation": ablation, "variant": name, "sampler": v.sampler, "ratio": v.ratio,
            "repeat": repeat, "select_seed": v.select_seed,
            "n_seq": len(c.sequential), "order_seed": order_seed, "order": ">".join(c.sequential),
            "lr": c.lr, "alpha": c.alpha, "grad_reduction": c.grad_reduction,
            "regulariser": c.regulariser, "strategy": c.strategy, "iterations": c.iterations, "base": c.base}


def grid_keys(rows: list[dict]) -> dict[str, str]:
    """The grid's columns ('calm.lr', 'select.ratio', …) by the names its outputs give them: the key
    without its section ('lr'), where no other column has that name."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    short = {k: k.split(".", 1)[-1] for k in keys}
    return {k: short[k] if list(short.values()).count(short[k]) == 1 else k for k in keys}


def grid_variant(cfg: Config, name: str, row: dict) -> Variant:
    """A grid row ('calm.lr': 1e7, 'select.ratio': 0.5, ...) applied to the config's calm and select."""
    part = {sec: {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith(sec + ".")}
            for sec in ("calm", "select")}
    select = cfg.select.model_copy(update=part["select"])
    return Variant(name, cfg.calm.model_copy(update=part["calm"]), select.sampler, select.ratio, select.seed)


def plan(cfg: Config, grid: dict[str, dict] | None = None) -> tuple[dict[str, Variant], pd.DataFrame]:
    """Every variant the workflow knows, by name, and the tidy table of sweep points (`grid`:
    the rows of a sweep grid, as calm.config.files.validate_sweep_table returns them, under
    their variant names; the workflow names them as Snakemake's Paramspace does).

    The table has one row per point: `ablation`, `variant` and that variant's settings
    (sampler, ratio, repeat, select_seed, n_seq, order_seed, order, lr, alpha, grad_reduction,
    regulariser, strategy, iterations, base); repeat is empty outside the sampler sweep, order_seed
    outside the n_seq sweep.
    """
    ab = cfg.ablations
    tasks = cfg.data.tasks
    default = default_variant(cfg)
    base_calm = cfg.calm.model_copy(update={"iterations": ab.iterations or cfg.calm.iterations})
    base = Variant("sweep-base", base_calm, cfg.select.sampler, cfg.select.ratio, cfg.select.seed)
    reg = _Registry([default, base])
    reg.add(default)
    if (validated := validated_variant(cfg)) is not None:
        reg.add(validated)
    rows: list[dict] = []

    def point(ablation: str, name: str, order_seed: int | None = None, sampler: str | None = None,
              ratio: float | None = None, repeat: int | None = None, **calm) -> None:
        sampler = sampler or base.sampler
        ratio = base.ratio if ratio is None else ratio
        # A repeat reseeds the selection only where the sampler draws (a deterministic one, or
        # any at ratio 1, keeps the same set): its credible sets are then shared.
        select_seed = base.select_seed + (repeat or 0) if sampler in SEEDED and ratio < 1 else base.select_seed
        v = Variant(name, base_calm.model_copy(update=calm), sampler, ratio, select_seed)
        rows.append(_sweep_row(ablation, reg.add(v), v, repeat, order_seed))

    for sampler in ab.samplers:
        for ratio in ab.ratios:
            point("samplers", f"{sampler}-r{ratio:g}", sampler=sampler, ratio=ratio, repeat=0)
    # The repeats sit at select.ratio; repeat 0 there is the grid's point when the grid has it.
    for sampler in ab.samplers:
        for k in range(0 if base.ratio not in ab.ratios else 1, ab.sampler_repeats):
            point("samplers", f"{sampler}-r{base.ratio:g}" + (f"-s{k}" if k else ""), sampler=sampler,
                  ratio=base.ratio, repeat=k, seed=base_calm.seed + k)
    for n in ab.n_seq or range(1, len(tasks)):
        for seed, order in distinct_orders(tasks, n, ab.orders):
            point("n_seq", f"nseq{n}-o{seed}", order_seed=seed, sequential=order)
    for lr in ab.lr_grid:
        point("lr", f"lr{lr:g}", lr=lr)
    for alpha in ab.alpha_grid:
        point("alpha", f"alpha{alpha:g}", alpha=alpha)
    for s in ab.switches:
        point("switches", f"{s.grad_reduction}-{s.regulariser}", grad_reduction=s.grad_reduction,
              regulariser=s.regulariser)
    for strategy in ab.strategies:
        point("strategy", f"strategy-{strategy}", strategy=strategy)
    for n in ab.iterations_grid:
        point("iterations", f"iter{n}", iterations=n)
    for b in ab.bases:
        for strategy in ab.base_strategies:
            point("bases", f"base-{b}-{strategy}", base=b, strategy=strategy)
    mask_task = ab.mask_task or cfg.calm.sequential[-1]
    point("mask_analysis", f"mask-{mask_task}", sequential=[mask_task])
    point("trace", "trace", trace_eval_every=ab.trace_eval_every)
    for name, row in (grid or {}).items():
        v = grid_variant(cfg, name, row)
        rows.append(_sweep_row("grid", reg.add(v), v))
    table = pd.DataFrame(rows)
    for column in ("repeat", "order_seed"):
        table[column] = table[column].astype("Int64")
    return reg.variants, table
