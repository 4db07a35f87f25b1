rule evaluate:
    input:
        model=PRETRAINED,
        checkpoints=lambda w: eval_checkpoints(w.method),
        inputs=[f"results/inputs/{t}.safetensors" for t in TASKS],
        heads=[f"results/heads/{t}.safetensors" for t in TASKS],
    output:
        "results/eval/{method}.parquet",
    wildcard_constraints:
        method=r"(?!task_arithmetic_lam).+",  # evaluate_task_arithmetic's
    params:
        model=MODEL_FLAGS,
        pairs=lambda w: " ".join(
            f"{t}={d}" for t, d in eval_models(w.method).items()
        ),
        inputs=" ".join(f"{t}=results/inputs/{t}.safetensors" for t in TASKS),
        heads=" ".join(f"{t}=results/heads/{t}.safetensors" for t in TASKS),
        settings=render_flags(CFG.evaluate, exclude=("bootstrap", "seed")),
    threads: CFG.threads
    resources:
        **job_resources("evaluate", gpu=True),
    log:
        "logs/evaluate/{method}.log",
    benchmark:
        "benchmarks/rules/evaluate/{method}.tsv"
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
        finetuned=[finetuned(t) for t in TASKS],
        inputs=[f"results/inputs/{t}.safetensors" for t in TASKS],
        heads=[f"results/heads/{t}.safetensors" for t in TASKS],
    output:
        list(TA_EVALS.values()),
    params:
        model=MODEL_FLAGS,
        outs=" ".join(f"{lam}={path}" for lam, path in TA_EVALS.items()),
        inputs=" ".join(f"{t}=results/inputs/{t}.safetensors" for t in TASKS),
        heads=" ".join(f"{t}=results/heads/{t}.safetensors" for t in TASKS),
        settings=render_flags(CFG.evaluate, exclude=("bootstrap", "seed")),
    threads: CFG.threads
    resources:
        **job_resources("evaluate_task_arithmetic", gpu=True),
    log:
        "logs/evaluate/task_arithmetic.log",
    benchmark:
        "benchmarks/rules/evaluate/task_arithmetic.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm evaluate-task-arithmetic {params.model} --threads {threads} --models {input.finetuned} "
        "--outs {params.outs} --inputs {params.inputs} --heads {params.heads} {params.settings} 2> {log}"


rule table:
    input:
        list(table_rows().values()),
    output:
        csv=report("results/tables/main.csv", caption="../report/table.rst", category="Results"),
        md="results/tables/main.md",
        json="results/tables/main.json",
    params:
        rows=" ".join(shlex.quote(f"{name}={path}") for name, path in table_rows().items()),
        prefix=lambda w, output: output.md.removesuffix(".md"),
        ta=shlex.quote(f"Task arithmetic (λ={TA_LAMBDA})"),
        settings=render_flags(CFG.evaluate, exclude=("batch_size",)),
    resources:
        **job_resources("table"),
    log:
        "logs/table.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm table --eval {params.rows} --insert-best-after {params.ta} "
        "--out-prefix {params.prefix} {params.settings} > {log} 2>&1"
