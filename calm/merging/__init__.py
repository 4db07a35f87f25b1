"""Merging methods: one registry, name -> `Method` (the pure function plus what it needs).

Data-free methods are called as `METHODS[name](vectors, **METHODS[name].options(cfg))`.
Data-driven ones (`needs` non-empty) take callables or statistics that `calm.stages` builds
from the files named by `needs`; nothing here imports a model family or a data source.
CALM itself, with its own stages, lives in `calm.merging.calm`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from calm.config import BaselinesConfig

from .adamerging import adamerging
from .consensus import consensus_ta, consensus_ties
from .fisher import fisher_merge
from .localize_stitch import stitch
from .regmean import regmean
from .task_arithmetic import task_arithmetic
from .ties import ties
from .weight_averaging import weight_averaging

# Per-task files a data-driven method reads: preprocessed splits, frozen head, pool scores.
NEEDS = ("inputs", "head", "scores")


@dataclass(frozen=True)
class Method:
    fn: Callable
    label: str  # its row in the results table
    sections: tuple[str, ...] = ()  # the BaselinesConfig keys it reads
    needs: tuple[str, ...] = ()  # per-task files (of NEEDS); empty: data-free
    options: Callable[[BaselinesConfig], dict[str, Any]] = lambda cfg: {}

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _section(name: str, drop: tuple[str, ...] = ("seed",)):
    return lambda cfg: getattr(cfg, name).model_dump(exclude=set(drop))


METHODS: dict[str, Method] = {
    "weight_averaging": Method(weight_averaging, "Weight averaging"),
    "task_arithmetic": Method(task_arithmetic, "Task arithmetic", ("task_arithmetic_lambda",),
                              options=lambda cfg: {"lam": cfg.task_arithmetic_lambda}),
    "ties": Method(ties, "TIES", ("ties",), options=_section("ties")),
    "consensus_ta": Method(consensus_ta, "Consensus TA", ("consensus",), options=_section("consensus")),
    "consensus_ties": Method(consensus_ties, "Consensus TIES", ("consensus", "ties"),
                             options=lambda cfg: {**cfg.consensus.model_dump(), "k": cfg.ties.k,
                                                  "merge": cfg.ties.merge}),
    "localize_stitch": Method(stitch, "Localize-and-Stitch", ("localize_stitch",), ("inputs", "head")),
    "adamerging_task": Method(partial(adamerging, granularity="task"), "AdaMerging (task-wise)",
                              ("adamerging",), ("inputs", "head")),
    "adamerging_layer": Method(partial(adamerging, granularity="layer"), "AdaMerging (layer-wise)",
                               ("adamerging",), ("inputs", "head")),
    "fisher": Method(fisher_merge, "Fisher", ("fisher",), ("inputs", "head", "scores")),
    "regmean": Method(regmean, "RegMean", ("regmean",), ("inputs",)),
}
