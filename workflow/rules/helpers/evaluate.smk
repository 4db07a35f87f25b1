# The helpers of the rules in workflow/rules/evaluate.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

def table_rows(rep="", methods=None):
    """Row name -> predictions file, in table order (the registry's, for the baselines that
    `methods`, by default baselines.methods, names); the λ sweep rows collapse to the best."""
    rows = {
        # θ0 depends on no fine-tuning seed: every replicate's table reads the main run's
        "Pretrained": "results/eval/pretrained.parquet",
        "Individual": f"results{rep}/eval/individual.parquet",
    }
    ta = ta_evals(rep)
    for method, spec in METHODS.items():
        if method not in (CFG.baselines.methods if methods is None else methods):
            continue
        if method == "task_arithmetic":
            rows[f"Task arithmetic (λ={TA_LAMBDA})"] = ta[TA_LAMBDA]
            rows.update({f"Task arithmetic λ={lam}": ta[lam] for lam in LAMBDAS})
        else:
            rows[spec.label] = f"results{rep}/eval/baseline_{method}.parquet"
        if method in VALIDATED:
            rows[f"{spec.label}{ON_VALIDATION}"] = validated_eval(method, rep)["preds"]
    rows["CALM"] = f"results{rep}/eval/calm.parquet"
    if sweeps.VALIDATED_BASE in VARIANTS:
        rows[f"CALM{ON_VALIDATION}"] = variant_eval(sweeps.VALIDATED_BASE, rep)
    return rows


def variant_model(variant, rep=""):
    return f"{variant_dir(variant, rep)}/model"


def variant_eval_models(method, rep=""):
    """calm/<variant>: its merged model; calm/<variant>/<part>: a mask-analysis model of its
    last step (tau2: the step's fine-tuned model)."""
    _, variant, *part = method.split("/")
    if variant not in VARIANTS or len(part) > 1:
        raise ValueError(f"unknown evaluation target '{method}'")
    if not part:
        return {t: variant_model(variant, rep) for t in TASKS}
    if part[0] == "tau2":
        return {t: finetuned(VARIANTS[variant].sequential[-1], rep) for t in TASKS}
    if part[0] in ANALYSIS_PARTS:
        return {t: f"{variant_dir(variant, rep)}/analysis/{part[0]}" for t in TASKS}
    raise ValueError(f"unknown evaluation target '{method}'")


def eval_models(method, rep=""):
    """The checkpoint each task is evaluated with under a method name."""
    if method == "individual":
        return {t: finetuned(t, rep) for t in TASKS}
    if method == "pretrained":
        return {t: PRETRAINED for t in TASKS}
    if method == "calm":
        return {t: variant_model("default", rep) for t in TASKS}
    if method.startswith("calm/"):
        return variant_eval_models(method, rep)
    name = method.removeprefix("baseline_")
    if method.startswith("baseline_") and name in METHODS:
        # A per-task method (EMR) writes one checkpoint per task inside its model folder.
        model = f"{baseline_dir(name, rep)}/model"
        return {t: f"{model}/{t}" if METHODS[name].per_task else model for t in TASKS}
    raise ValueError(f"unknown evaluation target '{method}'")


def eval_checkpoints(method, rep=""):
    """The folders a method's evaluation reads: the job outputs that hold its checkpoints."""
    name = method.removeprefix("baseline_")
    if method.startswith("baseline_") and name in METHODS and METHODS[name].per_task:
        return [f"{baseline_dir(name, rep)}/model"]
    return sorted(set(eval_models(method, rep).values()))


def validated_scale(method):
    """The scale the baseline's own model was merged at (1 for a method without one: WUDI)."""
    spec = METHODS[method]
    return spec.options(CFG.baselines)[spec.scale] if spec.scale else 1.0


def validated_option_grid(method):
    """The values of the method's option its val splits choose too (calm.methods `option`), or [];
    for one whose values are drawn (`option_draws`: Fisher's coefficients), how many."""
    spec = METHODS[method]
    return getattr(CFG.baselines, spec.option_grid) if spec.option_grid else []


# The needs of a data-driven method that evaluate_validated reads anyway: the encoded splits (whose
# pool Fisher's Fishers read) and the heads, under its own --inputs and --heads.
RULE_GIVES = ("inputs", "head")


def validated_sources(wildcards):
    """The baseline's merged model (and, for one affine in its scale, its origin's: CART's weight
    averaging); with an option grid, the fine-tuned models it merges again (and, for a data-driven
    method, Fisher, the per-task files its merge reads)."""
    if validated_option_grid(wildcards.method):
        return {"finetuned": [finetuned(t, wildcards.rep) for t in TASKS],
                "data": baseline_inputs(wildcards, skip=RULE_GIVES)}
    origin = METHODS[wildcards.method].origin
    return {"merged": f"{baseline_dir(wildcards.method, wildcards.rep)}/model",
            **({"origin": f"{baseline_dir(origin, wildcards.rep)}/model"} if origin else {})}


def validated_source_flags(method, rep, input):
    grid = validated_option_grid(method)
    if not grid:
        return f"--model {input.merged}" + (f" --origin {input.origin}" if METHODS[method].origin else "")
    wildcards = SimpleNamespace(method=method, rep=rep)
    data = baseline_data_flags(wildcards, skip=RULE_GIVES)
    values = (f"--option-draws {grid}" if METHODS[method].option_draws
              else f"--option-grid {','.join(f'{v:g}' for v in grid)}")
    return " ".join(p for p in (f"--method {method} --models {' '.join(input.finetuned)} {values}", data,
                                baseline_settings(wildcards)) if p)


def validated_lineage(method, rep=""):
    """A baseline's predictions at the scale its val splits chose (rule evaluate_validated)."""
    return digest("evaluate_validated", EVALUATE_SETTINGS, validated_scale(method), validated_grid(method),
                  validated_option_grid(method), baseline_lineage(method, rep),
                  *([baseline_lineage(METHODS[method].origin, rep)] if METHODS[method].origin else []),
                  [(prepared_lineage(t), val_lineage(t)) for t in TASKS])


def replicates():
    """The `rep` of every replicate `snakemake seeds` reads, the main run's first."""
    if CFG.model.finetuned:
        sys.exit(NO_REPLICATES)
    return [replicate(r) for r in range(CFG.replicates.seeds)]


def seed_runs():
    """Per replicate: its fine-tuning seed and its results table's rows (name -> predictions)."""
    return [{"seed": finetune_seed(rep), "rows": table_rows(rep)} for rep in replicates()]


def seed_ablations():
    """Per sweep of replicates.ablations, per replicate: its seed, its tidy table (ablation_accuracy)
    and, for the strategy sweep, each strategy's predictions (for the intervals between them)."""
    out = {}
    for sweep in CFG.replicates.ablations:
        out[sweep] = []
        for rep in replicates():
            if sweep == "bases":
                out[sweep].append(bases_run(rep))
                continue
            run = {"seed": finetune_seed(rep), "table": f"results{rep}/ablations/{sweep}.csv"}
            if sweep == "strategy":
                run["predictions"] = {r["strategy"]: variant_eval(r["variant"], rep) for r in sweep_rows(sweep)}
            out[sweep].append(run)
    return out


def seeds_inputs():
    """Every replicate's predictions of the main table's rows, and its own results table."""
    files = [path for run in seed_runs() for path in run["rows"].values()]
    files += [path for rep in replicates() for path in main_table(rep).values()]
    for sweep, runs in seed_ablations().items():
        if sweep == "bases":
            files += bases_files(runs)
            continue
        files += [path for run in runs for path in [run["table"], *run.get("predictions", {}).values()]]
    return list(dict.fromkeys(files))


def seeds_outputs():
    """The seeds table (CSV in the report, Markdown, JSON with the intervals) and its figure; the
    sweeps' table over seeds when replicates.ablations names strategy or n_seq, the |S̄| curve
    for n_seq, and the bases table and figure for bases."""
    prefix = "results/tables/seeds"
    out = {
        "csv": report(f"{prefix}.csv", caption="../report/seeds.rst", category="Fine-tuning seeds"),
        "md": f"{prefix}.md",
        "json": report(f"{prefix}.json", caption="../report/provenance.rst", category="Fine-tuning seeds"),
        "png": report(f"{prefix}.png", caption="../report/seeds_figure.rst", category="Fine-tuning seeds"),
        "pdf": f"{prefix}.pdf",
    }
    if {"strategy", "n_seq"} & set(CFG.replicates.ablations):
        out["ablations_csv"] = report(f"{prefix}_ablations.csv", caption="../report/seeds_ablations.rst",
                                      category="Fine-tuning seeds")
        out["ablations_md"] = f"{prefix}_ablations.md"
    if "n_seq" in CFG.replicates.ablations:
        out["n_seq_png"] = report(f"{prefix}_n_seq.png", caption="../report/seeds_n_seq.rst",
                                  category="Fine-tuning seeds")
        out["n_seq_pdf"] = f"{prefix}_n_seq.pdf"
    if "bases" in CFG.replicates.ablations:
        # keys of their own: under the seeds table's (csv, md, …) they would replace it
        out.update({f"bases_{key}": path for key, path in bases_outputs(f"{prefix}_bases", "Fine-tuning seeds").items()})
    return out


# The tables that `table` writes: the main table (the baselines that baselines.methods names), and
# the `baselines` target's table over every method of the registry.
TABLE_METHODS = {"main": None, "baselines": list(METHODS)}


def table_lineage(rep="", methods=None):
    return digest("table", {name: path_lineage(path) for name, path in table_rows(rep, methods).items()})
