include: "helpers/evaluate.smk"


rule evaluate:
    input:
        model=PRETRAINED,
        checkpoints=lambda w: eval_checkpoints(w.method, w.rep),
        inputs=[f"results/inputs/{t}.safetensors" for t in TASKS],
        heads=[f"results/heads/{t}.safetensors" for t in TASKS],
    output:
        "results{rep}/eval/{method}.parquet",
    wildcard_constraints:
        method=r"(?!task_arithmetic_lam|validated/).+",  # evaluate_task_arithmetic's, evaluate_validated's
    params:
        model=MODEL_FLAGS,
        pairs=lambda w: " ".join(
            f"{t}={d}" for t, d in eval_models(w.method, w.rep).items()
        ),
        inputs=" ".join(f"{t}=results/inputs/{t}.safetensors" for t in TASKS),
        heads=" ".join(f"{t}=results/heads/{t}.safetensors" for t in TASKS),
        settings=render_flags(CFG.evaluate, exclude=("bootstrap", "seed")),
        lineage=lambda w: eval_lineage(w.method, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("evaluate", gpu=True),
    log:
        "logs{rep}/evaluate/{method}.log",
    benchmark:
        "benchmarks/rules{rep}/evaluate/{method}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm evaluate {params.model} --threads {threads} --models {params.pairs} "
        "--inputs {params.inputs} --heads {params.heads} --out {output} {params.settings} 2> {log}"


# Task arithmetic's λ sweep in one job: it adds λ Σ τ_t to θ0 in memory for each λ. The model
# at the config's λ is also a baseline like any other (results/merge/baselines/task_arithmetic).
rule evaluate_task_arithmetic:
    input:
        model=PRETRAINED,
        finetuned=lambda w: [finetuned(t, w.rep) for t in TASKS],
        inputs=[f"results/inputs/{t}.safetensors" for t in TASKS],
        heads=[f"results/heads/{t}.safetensors" for t in TASKS],
    output:
        list(ta_evals("{rep}").values()),
    params:
        model=MODEL_FLAGS,
        outs=lambda w: " ".join(f"{lam}={path}" for lam, path in ta_evals(w.rep).items()),
        inputs=" ".join(f"{t}=results/inputs/{t}.safetensors" for t in TASKS),
        heads=" ".join(f"{t}=results/heads/{t}.safetensors" for t in TASKS),
        settings=render_flags(CFG.evaluate, exclude=("bootstrap", "seed")),
        lineage=lambda w: ta_eval_lineage(w.rep),
    threads: CFG.threads
    resources:
        **job_resources("evaluate_task_arithmetic", gpu=True),
    log:
        "logs{rep}/evaluate/task_arithmetic.log",
    benchmark:
        "benchmarks/rules{rep}/evaluate/task_arithmetic.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm evaluate-task-arithmetic {params.model} --threads {threads} --models {input.finetuned} "
        "--outs {params.outs} --inputs {params.inputs} --heads {params.heads} {params.settings} 2> {log}"


# With data.n_val: a baseline's scale (λ or α) chosen on every task's val split, from its merged
# model (rescaled, not merged again), and its test predictions at that scale; a method whose
# option is chosen too (TIES' k: baselines.ties_k_grid) is merged once per option value instead,
# Fisher once per draw of its coefficients (baselines.fisher_coefficient_draws), from the Fishers
# of its pools computed once.
rule evaluate_validated:
    input:
        unpack(validated_sources),
        model=PRETRAINED,
        val_inputs=[val_inputs(t) for t in TASKS],
        inputs=[f"results/inputs/{t}.safetensors" for t in TASKS],
        heads=[f"results/heads/{t}.safetensors" for t in TASKS],
    output:
        **validated_eval("{method}", "{rep}"),
    wildcard_constraints:
        method="|".join(validated_rows()),
    params:
        model=MODEL_FLAGS,
        source=lambda w, input: validated_source_flags(w.method, w.rep, input),
        scale=lambda w: validated_scale(w.method),
        grid=lambda w: validated_grid(w.method),
        val_inputs=" ".join(f"{t}={val_inputs(t)}" for t in TASKS),
        inputs=" ".join(f"{t}=results/inputs/{t}.safetensors" for t in TASKS),
        heads=" ".join(f"{t}=results/heads/{t}.safetensors" for t in TASKS),
        settings=render_flags(CFG.evaluate, exclude=("bootstrap", "seed")),
        lineage=lambda w: validated_lineage(w.method, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("evaluate_validated", gpu=True),
    log:
        "logs{rep}/evaluate/validated_{method}.log",
    benchmark:
        "benchmarks/rules{rep}/evaluate/validated_{method}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm evaluate-validated {params.model} --threads {threads} {params.source} "
        "--scale {params.scale} --grid {params.grid} --val-inputs {params.val_inputs} --inputs {params.inputs} "
        "--heads {params.heads} "
        "--out {output.preds} --curve {output.curve} {params.settings} 2> {log}"


rule table:
    input:
        lambda w: list(table_rows(w.rep, TABLE_METHODS[w.table]).values()),
    output:
        csv=report("results{rep}/tables/{table}.csv", caption="../report/table.rst", category="Results"),
        md="results{rep}/tables/{table}.md",
        json=report("results{rep}/tables/{table}.json", caption="../report/provenance.rst", category="Results"),
    wildcard_constraints:
        table="|".join(TABLE_METHODS),
    params:
        rows=lambda w: " ".join(shlex.quote(f"{name}={path}")
                                for name, path in table_rows(w.rep, TABLE_METHODS[w.table]).items()),
        prefix=lambda w, output: output.md.removesuffix(".md"),
        ta=shlex.quote(f"Task arithmetic (λ={TA_LAMBDA})"),
        settings=render_flags(CFG.evaluate, exclude=("batch_size",)),
        lineage=lambda w: table_lineage(w.rep, TABLE_METHODS[w.table]),
    resources:
        **job_resources("table"),
    log:
        "logs{rep}/tables/{table}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm table --eval {params.rows} --insert-best-after {params.ta} "
        "--out-prefix {params.prefix} {params.settings} > {log} 2>&1"


# `snakemake --cores 2 seeds`: the main run and its replicates under the next fine-tuning seeds
# (replicates.seeds in all; their results under results/seeds/seed<s>/), and the table over them:
# mean ± s.d. per method and task, CALM's difference with each method with an interval from a
# bootstrap over seeds and test examples, and the per-seed averages as a figure (a row per
# method). With replicates.ablations, the named sweeps per seed too, and their table over seeds.
rule seeds:
    input:
        lambda w: seeds_inputs(),
    output:
        **seeds_outputs(),
    params:
        runs=lambda w: quoted(seed_runs()),
        ablations=lambda w: f"--ablations {quoted(seed_ablations())}" if CFG.replicates.ablations else "",
        prefix=lambda w, output: output.md.removesuffix(".md"),
        ta=shlex.quote(f"Task arithmetic (λ={TA_LAMBDA})"),
        settings=render_flags(CFG.evaluate, exclude=("batch_size",)),
    resources:
        **job_resources("seeds"),
    log:
        "logs/seeds.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm seeds --runs {params.runs} {params.ablations} --insert-best-after {params.ta} "
        "--out-prefix {params.prefix} {params.settings} > {log} 2>&1"
