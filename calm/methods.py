"""The merging methods: one registry, name -> `Method`.

An entry says everything the workflow and the stages need of a method: its pure function in
calm.merging (over task vectors), its row in the results table, the config sections it reads
(so that changing one reruns only the methods that read it), and, for a data-driven method, the
per-task files it reads and the adapter in calm.stages.baselines that turns them into what its
function takes. CALM, with its own stages, is not in it.

The functions are imported on first use, so that the workflow, which reads this registry for
its wildcards, inputs and table rows, parses without importing torch
(tests/test_house_plan.py checks it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from calm.config.baselines import BaselinesConfig

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
    # Data-driven methods: the key in calm.stages.baselines.ADAPTERS of the function that reads the
    # `needs` files and calls `fn` with what it computes from them. Data-free ones are called
    # fn(τs, **options(cfg)).
    adapter: str = ""
    # Not one model: fn returns an EMR-style result from which each task's own vector is built
    # (calm.merging.emr.emr_task_vector); each task is evaluated with its own checkpoint.
    per_task: bool = False
    # The option that scales the whole merged vector (λ or α; fn is linear in it), and the
    # grid (a BaselinesConfig key) it is chosen from on the validation split; "": no scale.
    scale: str = ""
    scale_grid: str = ""
    # fn affine, not linear, in its scale: the registry method whose merge it is at scale 0 (CART
    # at λ = 0 is weight averaging), which its rescaling starts from instead of θ0.
    origin: str = ""
    # An option the method's paper also tunes on validation, not linear (each value is a merge of
    # its own), and the BaselinesConfig key of its grid; with the grid empty, the configured value.
    option: str = ""
    option_grid: str = ""
    # The option chosen per task, as its paper does (the TALL masks' λ_t): "module:function" in
    # calm.merging that takes the task vectors, the option's grid and fn's other options, and yields
    # (value, task index, vector) in turn, θ0 plus the vector being judged on that task's val split;
    # fn then takes one value per task. "": one value for all.
    option_by_task: str = ""
    # The option's values drawn at random instead of listed, as its paper searches them (Fisher
    # merging's per-model coefficients, from a flat Dirichlet): (settings, number of models, number
    # of draws (the option_grid key's value)) -> the values, in the order they are tried.
    option_draws: Callable[[BaselinesConfig, int, int], list] | None = None
    # False: left out of baselines.methods when it is unset (its cost does not fit the embedded
    # default's 15 minutes); `methods: all` and the `baselines` target run it.
    in_default: bool = True

    @property
    def fn(self) -> Callable:
        return _resolve(self.target, self.bound)

    @property
    def by_task_fn(self) -> Callable:
        return _resolve(self.option_by_task, self.bound)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _resolve(target: str, bound: dict[str, Any]) -> Callable:
    module, _, name = target.partition(":")
    f = getattr(importlib.import_module(f"calm.merging.{module}"), name)
    return partial(f, **bound) if bound else f


def _section(name: str, drop: tuple[str, ...] = ("seed",)):
    return lambda cfg: getattr(cfg, name).model_dump(exclude=set(drop))


_LAMBDA = {"scale": "lam", "scale_grid": "lambda_grid"}
_ALPHA = {"scale": "alpha", "scale_grid": "alpha_grid"}

METHODS: dict[str, Method] = {
    "weight_averaging": Method("weight_averaging:weight_averaging", "Weight averaging"),
    "task_arithmetic": Method("task_arithmetic:task_arithmetic", "Task arithmetic", ("task_arithmetic_lambda",),
                              options=lambda cfg: {"lam": cfg.task_arithmetic_lambda}, **_LAMBDA),
    # TIES' paper chooses k (and λ) on validation; the TALL-mask paper each task's λ_t.
    "ties": Method("ties:ties", "TIES", ("ties",), options=_section("ties"), option="k", option_grid="ties_k_grid",
                   **_LAMBDA),
    "consensus_ta": Method("consensus:consensus_ta", "Consensus TA", ("consensus",), options=_section("consensus"),
                           option="tall_lambda", option_grid="tall_lambda_grid",
                           option_by_task="consensus:tall_vectors_ta", **_LAMBDA),
    "consensus_ties": Method("consensus:consensus_ties", "Consensus TIES", ("consensus", "ties"),
                             options=lambda cfg: {**cfg.consensus.model_dump(), "k": cfg.ties.k,
                                                  "merge": cfg.ties.merge},
                             option="tall_lambda", option_grid="tall_lambda_grid",
                             option_by_task="consensus:tall_vectors_ties", **_LAMBDA),
    "localize_stitch": Method("localize_stitch:stitch", "Localize-and-Stitch", ("localize_stitch",),
                              ("inputs", "head"), adapter="localize_stitch"),
    "adamerging_task": Method("adamerging:adamerging", "AdaMerging (task-wise)", ("adamerging",),
                              ("inputs", "head"), bound={"granularity": "task"}, adapter="adamerging"),
    "adamerging_layer": Method("adamerging:adamerging", "AdaMerging (layer-wise)", ("adamerging",),
                               ("inputs", "head"), bound={"granularity": "layer"}, adapter="adamerging"),
    # Fisher merging's paper searches its per-model coefficients on validation.
    "fisher": Method("fisher:fisher_merge", "Fisher", ("fisher",), ("inputs", "head", "scores"), adapter="fisher",
                     option="coefficients", option_grid="fisher_coefficient_draws",
                     option_draws=lambda cfg, n, draws: _resolve("fisher:coefficient_draws", {})(n, draws,
                                                                                                 cfg.fisher.seed)),
    "regmean": Method("regmean:regmean", "RegMean", ("regmean",), ("inputs",), adapter="regmean"),
    "tsv": Method("tsv:tsv_merge", "TSV-Merge", ("tsv",), options=_section("tsv"), **_ALPHA),
    "iso_c": Method("iso:iso_c", "Iso-C", ("iso_c",), options=_section("iso_c"), **_ALPHA),
    "iso_cts": Method("iso:iso_cts", "Iso-CTS", ("iso_cts",), options=_section("iso_cts"), **_ALPHA),
    # WUDI has no scale of its own: α multiplies its solution on the validation split only.
    "wudi": Method("wudi:wudi", "WUDI-Merging", ("wudi",), options=_section("wudi"), scale_grid="alpha_grid"),
    "emr": Method("emr:emr_merge", "EMR-Merging (a model per task)", ("emr",), options=_section("emr"),
                  per_task=True),
    # CALM's closest peers (issue 26): CART, and AdaRank on top of a base (adarank.base).
    # CART is τ̄ + λ·C: weight averaging at λ = 0, affine in λ.
    "cart": Method("cart:cart", "CART", ("cart",), options=_section("cart"), scale="lam",
                   scale_grid="cart_lambda_grid", origin="weight_averaging"),
    # AdaRank's 20 steps cost about 4 minutes of a core on the default: not in its table.
    "adarank": Method("adarank:adarank", "AdaRank", ("adarank",), ("inputs", "head"), adapter="adarank",
                      in_default=False),
}


def default_methods() -> list[str]:
    """What baselines.methods runs when it is unset: every method but those marked not in_default."""
    return [name for name, m in METHODS.items() if m.in_default]


def single_model_bases() -> list[str]:
    """The methods CALM's efficient part may merge S with (calm.base): one model from the task
    vectors alone, no data and no per-task checkpoint."""
    return [name for name, m in METHODS.items() if not m.needs and not m.per_task]


def validated_methods() -> list[str]:
    """The methods whose scale may be chosen on the validation split: one model from the task
    vectors alone, linear in a scale (their own λ or α, or one put on their result) or affine in
    it (`origin`)."""
    return [name for name in single_model_bases() if METHODS[name].scale_grid]


def validated_rows() -> list[str]:
    """The methods with a row "(chosen on validation)": those whose scale is chosen
    (validated_methods), and a data-driven one whose option its paper searches on validation
    (`option_draws`: Fisher's coefficients)."""
    scaled = validated_methods()
    return [name for name, m in METHODS.items() if name in scaled or m.option_draws]
