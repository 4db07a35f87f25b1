"""The baselines' config sections: which methods run, and each method's settings at its
literature defaults (config/README.md lists where the embedded default differs)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from calm.config.section import Section
from calm.methods import METHODS, default_methods


# The names of calm.methods.METHODS, written there alone: the schema's enum, the CLI's choices and
# the workflow's wildcard constraint come from the registry.
BaselineName = Literal[tuple(METHODS)]


class TiesConfig(Section):
    k: float = Field(0.2, gt=0, le=1, description="Fraction of each task vector kept by the trim (top-k by |τ|).")
    lam: float = Field(0.3, gt=0, description="λ scaling the merged vector.")
    merge: Literal["sum", "mean"] = Field(
        "sum", description="Disjoint merge of the entries that agree with the elected sign: sum (the "
        "AdaMerging and TALL-masks code, which produced the paper's TIES rows) or mean (the TIES paper).")


class ConsensusConfig(Section):
    tall_lambda: float = Field(0.4, gt=0, description="λ_t of the TALL masks |τ_t| > λ_t·|τ_MTL − τ_t|.")
    min_tasks: int = Field(2, ge=0, description="Keep the entries that at least this many TALL masks select.")
    lam: float = Field(0.3, gt=0, description="λ scaling the masked merged vector.")


class LocalizeStitchConfig(Section):
    n_shot: int = Field(64, gt=0, description="Labelled train examples per task the mask is trained on.")
    epochs: int = Field(10, gt=0, description="Passes over them; one mask step per pass (gradients averaged).")
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e7, gt=0, description="SGD learning rate on the mask logits.")
    alpha: float = Field(1.0, ge=0, description="Regulariser strength.")
    init_value: float = Field(5.0, gt=0, description="The mask logits start at ±init_value.")
    init_fraction: float = Field(1e-5, ge=0, lt=1, description="Fraction of entries (largest |τ_t|) that start on.")
    regulariser: Literal["polarise", "l1"] = Field("polarise", description="As calm.regulariser.")
    seed: int = 0


class AdaMergingConfig(Section):
    steps: int = Field(500, gt=0, description="Adam steps on the merging coefficients.")
    batch_size: int = Field(16, gt=0)
    batches_per_task: int = Field(2, gt=0, description="Unlabeled pool batches per task per step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    init: float = Field(0.3, ge=0, le=1, description="Coefficients start here; clamped to [0, 1] after each step.")
    seed: int = 0


class FisherConfig(Section):
    n_examples: int = Field(256, gt=0, description="Pool examples per task (pseudo-labelled) the Fisher is estimated on.")
    epsilon: float = Field(1e-6, ge=0, description="Added to every Fisher entry, so entries no example reaches are averaged.")
    seed: int = 0


class RegMeanConfig(Section):
    n_examples: int = Field(256, gt=0, description="Pool examples per task whose linear-layer inputs form the Gram matrices.")
    batch_size: int = Field(32, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="Off-diagonal entries of each Gram matrix are scaled by α.")
    seed: int = 0


class TsvConfig(Section):
    alpha: float = Field(1.0, gt=0, description="α scaling the merged vector (the paper's 1.0).")
    exclude: list[str] = Field(default_factory=list, description="Tensors whose names contain one of these are "
                               "averaged instead of merged as matrices.")


class IsoCConfig(Section):
    alpha: float = Field(1.0, gt=0, description="α scaling the merged vector (FusionBench's 1.0; the authors "
                         "tune it on validation data).")
    exclude: list[str] = Field(default_factory=list, description="As tsv.exclude.")


class IsoCTSConfig(IsoCConfig):
    common_space_fraction: float = Field(0.8, ge=0, le=1, description="Share of each matrix's rank given to the "
                                         "summed update's top singular directions; the rest is split between tasks.")


class WudiConfig(Section):
    solver: Literal["adam", "closed_form"] = Field("adam", description="adam: the authors' code (Adam from Σ τ_t); "
                                                   "closed_form: the minimiser itself (not in their code).")
    steps: int = Field(300, gt=0, description="Adam steps per linear layer.")
    lr: float = Field(1e-5, gt=0, description="Adam learning rate.")
    others: Literal["zero", "mean"] = Field("zero", description="Tensors that are not linear weights: zero (the "
                                            "authors' code keeps them pre-trained) or the tasks' mean (FusionBench).")
    exclude: list[str] = Field(default_factory=lambda: ["embed"], description="2-D tensors whose names contain one "
                               "of these are not linear weights (embeddings).")


class EmrConfig(Section):
    rescale: Literal["tensor_mean", "sum"] = Field("tensor_mean", description="Per-task rescaler: tensor_mean (the "
                                                   "authors' code: per-tensor means added up) or sum (the paper).")


class CartConfig(Section):
    lam: float = Field(2.0, gt=0, description="λ on the summed low-rank centred vectors (the authors' 8-task "
                       "ViT-B/32 config; 1.9 for 20 tasks).")
    rank_ratio: float = Field(0.12, gt=0, le=1, description="Share of each matrix's rank kept of every centred "
                              "vector (the authors' 8-task config; the paper's rank study: about 0.08).")
    exclude: list[str] = Field(default_factory=lambda: ["embed"], description="2-D tensors whose names contain one "
                               "of these stay at the average (the authors' code low-ranks attention and MLP weights).")


# AdaRank's starting λ and rank share per base (calm.merging.adarank.BASE_DEFAULTS, repeated here so
# that the config parses without importing torch; tests/test_merging_adarank.py keeps them equal).
ADARANK_BASES = {"task_arithmetic": (0.3, 1.0), "tsv": (1.0, 1.0), "cart": (2.3, 0.16)}


class AdaRankConfig(Section):
    base: Literal["task_arithmetic", "tsv", "cart"] = Field(
        "cart", description="The merge whose singular components the masks select (cart: the paper's best).")
    steps: int = Field(10000, gt=0, description="Adam steps on the masks and coefficients.")
    batch_size: int = Field(16, gt=0)
    batches_per_task: int = Field(1, gt=0, description="Unlabeled pool batches per task per step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    mask_temperature: float = Field(10.0, gt=0, description="The mask is σ(m / T) in the straight-through gradient.")
    prior: float = Field(2.3, gt=0, description="λ the layer-wise coefficients start at; left out, the base's "
                         "(task_arithmetic 0.3, tsv 1.0, cart 2.3).")
    initial_rank_ratio: float = Field(0.16, ge=0, le=1, description="Share of each matrix's components the mask "
                                      "starts on; left out, the base's (task_arithmetic 1.0, tsv 1.0, cart 0.16).")
    learn_coefficients: bool = Field(True, description="true: λ learns alongside the masks (the authors' code); "
                                     "false: only the masks learn.")
    exclude: list[str] = Field(default_factory=lambda: ["embed"], description="2-D tensors whose names contain one "
                               "of these are not masked (kept whole, with their coefficient).")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data):
        if isinstance(data, dict) and data.get("base") in ADARANK_BASES:
            prior, ratio = ADARANK_BASES[data["base"]]
            data = {"prior": prior, "initial_rank_ratio": ratio, **data}
        return data


class BaselinesConfig(Section):
    task_arithmetic_lambda: float = Field(0.3, gt=0)
    lambda_grid: list[float] = Field(
        default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        description="λ values of the task-arithmetic sweep (the table reports the best, an oracle); with "
        "data.n_val, also the λ the validation split chooses for task arithmetic, TIES and Consensus TA/TIES.")
    alpha_grid: list[float] = Field(
        default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4],
        description="With data.n_val: the α the validation split chooses for TSV-Merge, Iso-C, Iso-CTS and WUDI "
        "(WUDI's merged vector times α).")
    ties_k_grid: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3],
        description="With data.n_val: the k (kept fraction) the validation split chooses for TIES, with its λ: a "
        "merge per k, each rescaled over lambda_grid (the TIES paper's 10, 20, 30 %); empty: ties.k alone.")
    tall_lambda_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6],
        description="With data.n_val: each task's λ_t of its TALL mask for Consensus TA/TIES, chosen on that task's "
        "val split by θ0 + m_t ∘ τ_MTL, as the TALL-mask authors do (their grid), before their λ; empty: "
        "consensus.tall_lambda for every task.")
    cart_lambda_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 1.5, 2.0, 2.5, 3.0],
        description="With data.n_val: the λ the validation split chooses for CART (the authors fix it per "
        "benchmark: 2.0 for 8 tasks). CART is affine in λ: rebuilt from its model and weight averaging's.")
    fisher_coefficient_draws: int = Field(
        51, ge=1, description="With data.n_val: how many per-model coefficient vectors the validation split "
        "chooses Fisher merging's from, as its authors search them (51 in their code): equal coefficients (the "
        "Fisher row), then seeded draws from a flat Dirichlet; each a merge of its own, from one set of Fishers.")
    methods: list[BaselineName] | Literal["all"] = Field(
        default_factory=default_methods,
        description="Baselines the main table runs (task_arithmetic: its λ row and the λ sweep); unset, every "
        "method of the registry but AdaRank (minutes more on the embedded default); `all`: every one.")
    ties: TiesConfig = TiesConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    localize_stitch: LocalizeStitchConfig = LocalizeStitchConfig()
    adamerging: AdaMergingConfig = AdaMergingConfig()
    fisher: FisherConfig = FisherConfig()
    regmean: RegMeanConfig = RegMeanConfig()
    tsv: TsvConfig = TsvConfig()
    iso_c: IsoCConfig = IsoCConfig()
    iso_cts: IsoCTSConfig = IsoCTSConfig()
    wudi: WudiConfig = WudiConfig()
    emr: EmrConfig = EmrConfig()
    cart: CartConfig = CartConfig()
    adarank: AdaRankConfig = AdaRankConfig()

    @model_validator(mode="before")
    @classmethod
    def _all_methods(cls, data):
        if isinstance(data, dict) and data.get("methods") == "all":
            data = {**data, "methods": list(METHODS)}
        return data

    @model_validator(mode="after")
    def _distinct_methods(self) -> "BaselinesConfig":
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ValueError(f"baselines.methods names a method twice: {dupes}")
        return self
