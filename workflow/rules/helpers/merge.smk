# The helpers of the rules in workflow/rules/merge.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

def variant_credible(variant, task, rep=""):
    v = VARIANTS[variant]
    return credible(v.sampler, v.ratio, task, v.select_seed, rep)


def visible_tasks(variant, k):
    """S, then the sequential tasks up to and including the k-th."""
    v = VARIANTS[variant]
    return v.efficient(TASKS) + v.sequential[:k]


def step_task(w):
    """The task a calm_step job merges; the folder name must agree with the variant's order."""
    seq = VARIANTS[w.variant].sequential
    k = int(w.k)
    if not 1 <= k <= len(seq) or seq[k - 1] != w.task:
        raise ValueError(f"CALM variant '{w.variant}' has no step {k} merging '{w.task}' (its order: {seq})")
    return w.task


def visible_flag(variant, k, rep=""):
    return " ".join(
        f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors,{variant_credible(variant, t, rep)}"
        for t in visible_tasks(variant, k)
    )


def calm_flags(variant):
    return render_flags(VARIANTS[variant].calm,
                        exclude=("sequential", "efficient_lambda", *CALM_BASE_FIELDS, "checkpoint_every"))


def calm_base_flags(variant):
    """--base and the flags of its baselines section, for a base other than the paper's task
    arithmetic; for that one nothing, not even in Snakemake's record of params, so that the
    default's command and a finished run's jobs stay what they were before calm.base existed."""
    base = VARIANTS[variant].calm.base
    if base == "task_arithmetic":
        return Untracked("")
    return f"--base {base} {baseline_settings(SimpleNamespace(method=base))} "


def base_val_tasks(variant):
    """calm.base_scale: validation: the tasks of S, whose val splits choose the base's scale."""
    v = VARIANTS[variant]
    return v.efficient(TASKS) if v.calm.base_scale == "validation" else []


def base_val_flags(variant):
    """--val, --grid and --batch-size when the base's scale is chosen on validation; otherwise
    nothing, untracked, so that the default's command and record stay as they were."""
    tasks = base_val_tasks(variant)
    if not tasks:
        return Untracked("")
    pairs = " ".join(f"{t}={val_inputs(t)},results/heads/{t}.safetensors" for t in tasks)
    return (f"--val {pairs} --grid {validated_grid(VARIANTS[variant].calm.base)} "
            f"--batch-size {CFG.evaluate.batch_size} ")


def traced(variant):
    """Tracing variants evaluate every task's test split inside the mask loop."""
    return TASKS if VARIANTS[variant].calm.trace_eval_every else []


def trace_flag(variant):
    pairs = [f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors" for t in traced(variant)]
    return "--trace-eval " + " ".join(pairs) if pairs else ""
