"""Merging methods: one registry, name -> `Method` (the pure function plus what it needs).

Data-free methods are called as `METHODS[name](vectors, **METHODS[name].options(cfg))`.
Data-driven ones (`needs` non-empty) take callables or statistics that `calm.stages` builds
from the files named by `needs`; nothing here imports a model family or a data source.
CALM itself, with its own stages, lives in `calm.merging.calm`.

The functions are imported on first use, so that the workflow, which reads this registry
for its wildcards, inputs and table rows, parses without importing torch
(tests/test_house_plan.py checks it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from calm.config import BaselinesConfig

# Per-task files a data-driven method reads: preprocessed splits, frozen head, pool scores.
NEEDS = ("inputs", "head", "scores")


@dataclass(frozen=True)
class Method:
    target: str  # "module:function" within calm.merging
    label: str  # its row in the results table
    sections: tuple[str, ...] = ()  # the BaselinesConfig keys it reads
    needs: tuple[str, ...] = ()  # per-task files (of NEEDS); empty: data-free
    options: Callable[[BaselinesConfig], dict[str, Any]] = lambda cfg: {}
    bound: dict[str, Any] = field(default_factory=dict)  # arguments fixed by the registry entry

    @property
    def fn(self) -> Callable:
        module, _, name = self.target.partition(":")
        f = getattr(importlib.import_module(f"calm.merging.{module}"), name)
        return partial(f, **self.bound) if self.bound else f

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _section(name: str, drop: tuple[str, ...] = ("seed",)):
    return lambda cfg: getattr(cfg, name).model_dump(exclude=set(drop))


METHODS: dict[str, Method] = {
    "weight_averaging": Method("weight_averaging:weight_averaging", "Weight averaging"),
    "task_arithmetic": Method("task_arithmetic:task_arithmetic", "Task arithmetic", ("task_arithmetic_lambda",),
                              options=lambda cfg: {"lam": cfg.task_arithmetic_lambda}),
    "ties": Method("ties:ties", "TIES", ("ties",), options=_section("ties")),
    "consensus_ta": Method("consensus:consensus_ta", "Consensus TA", ("consensus",), options=_section("consensus")),
    "consensus_ties": Method("consensus:consensus_ties", "Consensus TIES", ("consensus", "ties"),
                             options=lambda cfg: {**cfg.consensus.model_dump(), "k": cfg.ties.k,
                                                  "merge": cfg.ties.merge}),
    "localize_stitch": Method("localize_stitch:stitch", "Localize-and-Stitch", ("localize_stitch",),
                              ("inputs", "head")),
    "adamerging_task": Method("adamerging:adamerging", "AdaMerging (task-wise)", ("adamerging",),
                              ("inputs", "head"), bound={"granularity": "task"}),
    "adamerging_layer": Method("adamerging:adamerging", "AdaMerging (layer-wise)", ("adamerging",),
                               ("inputs", "head"), bound={"granularity": "layer"}),
    "fisher": Method("fisher:fisher_merge", "Fisher", ("fisher",), ("inputs", "head", "scores")),
    "regmean": Method("regmean:regmean", "RegMean", ("regmean",), ("inputs",)),
}
