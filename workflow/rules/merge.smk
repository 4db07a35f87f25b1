# A CALM run is a named variant (VARIANTS, common.smk): its settings, S̄ order and credible
# sets. results/merge/calm/default/ is the config's own calm section.

include: "helpers/merge.smk"


rule calm_base:
    input:
        model=PRETRAINED,
        finetuned=lambda w: [finetuned(t, w.rep) for t in VARIANTS[w.variant].efficient(TASKS)],
        # calm.base_scale: validation: S's val splits choose the base's scale
        val_inputs=lambda w: [val_inputs(t) for t in base_val_tasks(w.variant)],
        val_heads=lambda w: [f"results/heads/{t}.safetensors" for t in base_val_tasks(w.variant)],
    output:
        "results{rep}/merge/calm/{variant}/base.safetensors",
    params:
        model=MODEL_FLAGS,
        lam=lambda w: VARIANTS[w.variant].calm.efficient_lambda,
        base=lambda w: calm_base_flags(w.variant),
        val=lambda w: base_val_flags(w.variant),
        lineage=lambda w: base_lineage(w.variant, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("calm_base", gpu=True),
    priority: 50  # CALM's chain first (see calm_step)
    log:
        "logs{rep}/merge/calm/{variant}/base.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm calm-base {params.model} --threads {threads} --lam {params.lam} {params.base}{params.val}"
        "--models {input.finetuned} --out {output} 2> {log}"


# One job per sequential task: each step's merged task vector is its own file, so adding a
# task at the end of calm.sequential reruns only the new step and what follows.
rule calm_step:
    input:
        model=PRETRAINED,
        tau_prev=lambda w: tau_before(w.variant, int(w.k), w.rep),
        finetuned=lambda w: finetuned(step_task(w), w.rep),
        inputs=lambda w: [f"results/inputs/{t}.safetensors" for t in visible_tasks(w.variant, int(w.k))],
        heads=lambda w: [f"results/heads/{t}.safetensors" for t in visible_tasks(w.variant, int(w.k))],
        credible=lambda w: [variant_credible(w.variant, t, w.rep) for t in visible_tasks(w.variant, int(w.k))],
        traced=lambda w: [f"results/{kind}/{t}.safetensors" for t in traced(w.variant) for kind in ("inputs", "heads")],
    output:
        tau="results{rep}/merge/calm/{variant}/step{k}-{task}/tau.safetensors",
        mask="results{rep}/merge/calm/{variant}/step{k}-{task}/mask.safetensors",
        trace=report(
            "results{rep}/merge/calm/{variant}/step{k}-{task}/trace.csv",
            caption="../report/trace.rst",
            category="CALM mask",
        ),
        layers="results{rep}/merge/calm/{variant}/step{k}-{task}/layers.csv",
        summary="results{rep}/merge/calm/{variant}/step{k}-{task}/summary.json",
    params:
        model=MODEL_FLAGS,
        visible=lambda w: visible_flag(w.variant, int(w.k), w.rep),
        settings=lambda w: calm_flags(w.variant),
        lineage=lambda w: step_lineage(w.variant, int(w.k), w.rep),
        trace=lambda w: trace_flag(w.variant),
        out=lambda w, output: str(Path(output.tau).parent),
        # Checkpointing does not change results: a function of `threads` is a derived param,
        # which Snakemake does not count as a change, so a new value reruns no finished step.
        checkpoint_every=lambda w, threads: CFG.calm.checkpoint_every,
    threads: CFG.threads
    resources:
        **job_resources("calm_step", gpu=True),
    # select → calm_base → calm_step 1 … |S̄| → calm_model is the run's longest chain of jobs:
    # started before the baselines, it no longer leaves a core idle at the end.
    priority: 50
    log:
        "logs{rep}/merge/calm/{variant}/step{k}-{task}.log",
    benchmark:
        "benchmarks/rules{rep}/merge/calm/{variant}/step{k}-{task}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm calm-step {params.model} --threads {threads} --tau-prev {input.tau_prev} "
        "--model {input.finetuned} --visible {params.visible} --step {wildcards.k} "
        "--out {params.out} {params.settings} {params.trace} --checkpoint-every {params.checkpoint_every} 2> {log}"


rule calm_model:
    input:
        model=PRETRAINED,
        tau=lambda w: f"{last_step_dir(w.variant, w.rep)}/tau.safetensors",
    output:
        directory("results{rep}/merge/calm/{variant}/model"),
    params:
        model=MODEL_FLAGS,
        lineage=lambda w: variant_lineage(w.variant, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("calm_model", gpu=True),
    priority: 50  # CALM's chain first (see calm_step)
    log:
        "logs{rep}/merge/calm/{variant}/model.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm calm-model {params.model} --threads {threads} --tau {input.tau} --out {output} 2> {log}"
