rule merge_task_arithmetic:
    input:
        model=PRETRAINED,
        finetuned=[finetuned(t) for t in TASKS],
    output:
        directory("results/merge/task_arithmetic/lam{lam}"),
    params:
        model=MODEL_FLAGS,
    threads: CFG.threads
    resources:
        mem_mb=scaled(6000),
        runtime=scaled(20),
        gpu=1,
    log:
        "logs/merge/task_arithmetic_lam{lam}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm merge {params.model} --threads {threads} --method task_arithmetic --lam {wildcards.lam} "
        "--models {input.finetuned} --out {output} 2> {log}"


rule calm_base:
    input:
        model=PRETRAINED,
        finetuned=[finetuned(t) for t in EFFICIENT],
    output:
        "results/merge/calm/base.safetensors",
    params:
        model=MODEL_FLAGS,
        lam=CFG.calm.efficient_lambda,
    threads: CFG.threads
    resources:
        mem_mb=scaled(6000),
        runtime=scaled(20),
        gpu=1,
    log:
        "logs/merge/calm_base.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm calm-base {params.model} --threads {threads} --lam {params.lam} "
        "--models {input.finetuned} --out {output} 2> {log}"


# One job per sequential task: each step's merged task vector is its own file, so adding a
# task at the end of calm.sequential reruns only the new step and what follows.
rule calm_step:
    input:
        model=PRETRAINED,
        tau_prev=lambda w: tau_before(int(w.k)),
        finetuned=lambda w: finetuned(SEQ[int(w.k) - 1]),
        inputs=lambda w: [f"results/inputs/{t}.safetensors" for t in visible_tasks(int(w.k))],
        heads=lambda w: [f"results/heads/{t}.safetensors" for t in visible_tasks(int(w.k))],
        credible=lambda w: [f"results/credible/{t}.parquet" for t in visible_tasks(int(w.k))],
    output:
        tau="results/merge/calm/step{k}-{task}/tau.safetensors",
        mask="results/merge/calm/step{k}-{task}/mask.safetensors",
        trace=report(
            "results/merge/calm/step{k}-{task}/trace.csv",
            caption="../report/trace.rst",
            category="CALM mask",
        ),
        layers="results/merge/calm/step{k}-{task}/layers.csv",
        summary="results/merge/calm/step{k}-{task}/summary.json",
    params:
        model=MODEL_FLAGS,
        visible=lambda w: visible_flag(int(w.k)),
        settings=render_flags(CFG.calm, exclude=("sequential", "efficient_lambda", "checkpoint_every")),
        out=lambda w, output: str(Path(output.tau).parent),
        # Checkpointing does not change results: a function of `threads` is a derived param,
        # which Snakemake does not count as a change, so a new value reruns no finished step.
        checkpoint_every=lambda w, threads: CFG.calm.checkpoint_every,
    threads: CFG.threads
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(120),
        gpu=1,
    log:
        "logs/merge/calm_step{k}-{task}.log",
    benchmark:
        "benchmarks/rules/merge/calm_step{k}-{task}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm calm-step {params.model} --threads {threads} --tau-prev {input.tau_prev} "
        "--model {input.finetuned} --visible {params.visible} --step {wildcards.k} "
        "--out {params.out} {params.settings} --checkpoint-every {params.checkpoint_every} 2> {log}"


rule calm_model:
    input:
        model=PRETRAINED,
        tau=f"{step_dir(len(SEQ))}/tau.safetensors",
    output:
        directory("results/merge/calm/model"),
    params:
        model=MODEL_FLAGS,
    threads: CFG.threads
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(20),
        gpu=1,
    log:
        "logs/merge/calm_model.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm apply {params.model} --threads {threads} --tau {input.tau} --out {output} 2> {log}"
