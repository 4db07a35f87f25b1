# --- lineage (the `lineage` param of every compute rule) -----------------------------------

# Per output, a digest of every setting it was computed from, its own job's and those
# of every job upstream of it. Each compute rule records its output's lineage as a param
# (`lineage`), so Snakemake's params trigger reruns an output whenever any setting it depends
# on changed, even when the job that reads the setting directly failed in between: Snakemake
# deletes a failed job's outputs, and with them the only record that its setting changed, so
# without this the outputs downstream (whose own params did not change) stood as they were.
# docs/design.md (5.5) says why this and not content-addressed folders.
#
# Each function mirrors one rule: its own settings (as its params render them) and the
# lineages of its inputs. A setting that changes no result (calm.checkpoint_every,
# model.trust_pickle, threads) is in no lineage, as in no rule's params.


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def pretrained_lineage():
    return digest("pretrained", CFG.model.source, MODEL_FLAGS)


# data.n_val is fetch_val's alone: fetch_data's splits are the same bytes with or without a val split
DATA_FLAGS = render_flags(CFG.data, exclude=("tasks", "custom", "hf", "n_val"))
VAL_FLAGS = render_flags(CFG.data, exclude=("tasks", "custom", "hf"))


@functools.cache
def data_lineage(task):
    spec = {"custom": CFG.data.custom.get(task), "hf": CFG.data.hf.get(task)}
    return digest("data", DATA_FLAGS,
                  {k: v.model_dump() for k, v in spec.items() if v is not None})


@functools.cache
def val_lineage(task):
    """The task's encoded val split (rules fetch_val and prepare_val)."""
    return digest("prepare_val", pretrained_lineage(), VAL_FLAGS, {"custom": CFG.data.custom.get(task)})


@functools.cache
def prepared_lineage(task):
    """The task's preprocessed inputs and head (rule prepare)."""
    head = finetuned_lineage(task) if CFG.model.heads_from_checkpoints else None
    return digest("prepare", pretrained_lineage(), data_lineage(task), head)


@functools.cache
def finetuned_lineage(task, rep=""):
    if CFG.model.finetuned:
        return digest("fetch_finetuned", pretrained_lineage(), CFG.model.finetuned[task], CFG.model.heads.get(task))
    settings = render_flags(CFG.finetune.model_copy(update={"seed": finetune_seed(rep)}))
    return digest("finetune", settings, pretrained_lineage(), prepared_lineage(task))


@functools.cache
def scores_lineage(task, rep=""):
    return digest("score", render_flags(CFG.score), finetuned_lineage(task, rep), prepared_lineage(task))


@functools.cache
def credible_lineage(sampler, ratio, task, seed, rep=""):
    return digest("select", sampler, f"{ratio:g}", seed, scores_lineage(task, rep))


def variant_credible_lineage(variant, task, rep=""):
    v = VARIANTS[variant]
    return credible_lineage(v.sampler, v.ratio, task, v.select_seed, rep)


@functools.cache
def base_lineage(variant, rep=""):
    v = VARIANTS[variant]
    base = [] if v.calm.base == "task_arithmetic" else [str(calm_base_flags(variant))]  # the default's as before
    val = base_val_tasks(variant)
    if val:
        base.append([str(base_val_flags(variant)), [(prepared_lineage(t), val_lineage(t)) for t in val]])
    return digest("calm_base", v.calm.efficient_lambda, [finetuned_lineage(t, rep) for t in v.efficient(TASKS)], *base)


@functools.cache
def step_lineage(variant, k, rep=""):
    """The k-th sequential step's outputs (calm_step's): steps after it are not upstream, so
    appending a task to calm.sequential changes no earlier step's lineage."""
    before = base_lineage(variant, rep) if k == 1 else step_lineage(variant, k - 1, rep)
    visible = [(prepared_lineage(t), variant_credible_lineage(variant, t, rep)) for t in visible_tasks(variant, k)]
    return digest("calm_step", calm_flags(variant), before, finetuned_lineage(VARIANTS[variant].sequential[k - 1], rep),
                  visible, [prepared_lineage(t) for t in traced(variant)])


def variant_lineage(variant, rep=""):
    """The variant's merged model (calm_model's), θ0 plus its last step's task vector."""
    return digest("calm_model", pretrained_lineage(), step_lineage(variant, len(VARIANTS[variant].sequential), rep))


def analysis_lineage(variant):
    """The mask-analysis models of a variant's last step (rule mask_parts)."""
    n = len(VARIANTS[variant].sequential)
    before = base_lineage(variant) if n == 1 else step_lineage(variant, n - 1)
    return digest("mask_parts", pretrained_lineage(), before, step_lineage(variant, n),
                  finetuned_lineage(VARIANTS[variant].sequential[-1]))


@functools.cache
def baseline_lineage(method, rep=""):
    data = {"inputs": prepared_lineage, "head": prepared_lineage, "scores": lambda t: scores_lineage(t, rep)}
    return digest("merge_baseline", method, baseline_settings(SimpleNamespace(method=method, rep=rep)),
                  pretrained_lineage(), [finetuned_lineage(t, rep) for t in TASKS],
                  [data[need](t) for need in METHODS[method].needs for t in TASKS])


def checkpoints_lineage(method, rep=""):
    """What the checkpoints a method is evaluated with were computed from (see eval_models)."""
    if method == "individual":
        return [finetuned_lineage(t, rep) for t in TASKS]
    if method == "pretrained":
        return pretrained_lineage()
    if method == "calm":
        return variant_lineage("default", rep)
    if method.startswith("calm/"):
        _, variant, *part = method.split("/")
        if not part:
            return variant_lineage(variant, rep)
        if part[0] == "tau2":
            return finetuned_lineage(VARIANTS[variant].sequential[-1], rep)
        return analysis_lineage(variant)
    return baseline_lineage(method.removeprefix("baseline_"), rep)


EVALUATE_SETTINGS = render_flags(CFG.evaluate, exclude=("bootstrap", "seed"))


@functools.cache
def eval_lineage(method, rep=""):
    """A method's predictions (rule evaluate)."""
    return digest("evaluate", EVALUATE_SETTINGS, checkpoints_lineage(method, rep), [prepared_lineage(t) for t in TASKS])


@functools.cache
def ta_eval_lineage(rep=""):
    """The λ sweep's predictions (rule evaluate_task_arithmetic, one job for every λ)."""
    return digest("evaluate_task_arithmetic", EVALUATE_SETTINGS, list(ta_evals(rep)), pretrained_lineage(),
                  [finetuned_lineage(t, rep) for t in TASKS], [prepared_lineage(t) for t in TASKS])


def path_lineage(path):
    """The lineage of a predictions file, by its path (the tables read them by path)."""
    m = re.fullmatch(r"results(?P<rep>/seeds/seed-?[0-9]+)?/eval/(?P<method>.+)\.parquet", path)
    if m is None:
        raise ValueError(f"no lineage for '{path}'")
    rep, method = m.group("rep") or "", m.group("method")
    if method.startswith("validated/"):  # data.n_val's rows (helpers/evaluate.smk)
        return validated_lineage(method.removeprefix("validated/"), rep)
    return ta_eval_lineage(rep) if method.startswith("task_arithmetic_lam") else eval_lineage(method, rep)
