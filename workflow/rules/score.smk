rule score:
    input:
        model=PRETRAINED,
        finetuned=lambda w: finetuned(w.task, w.rep),
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    output:
        "results{rep}/scores/{task}.parquet",
    params:
        model=MODEL_FLAGS,
        settings=render_flags(CFG.score),
        lineage=lambda w: scores_lineage(w.task, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("score", gpu=True),
    log:
        "logs{rep}/score/{task}.log",
    benchmark:
        "benchmarks/rules{rep}/score/{task}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm score {params.model} --threads {threads} --model {input.finetuned} --inputs {input.inputs} "
        "--head {input.head} --out {output} {params.settings} 2> {log}"


# One credible set per sampler and ratio (the config's select section picks the default
# CALM's; the ablations sweep the rest), drawn with select.seed.
rule select:
    input:
        "results{rep}/scores/{task}.parquet",
    output:
        "results{rep}/credible/{sampler}-{ratio}/{task}.parquet",
    params:
        seed=CFG.select.seed,
        lineage=lambda w: credible_lineage(w.sampler, float(w.ratio), w.task, CFG.select.seed, w.rep),
    priority: 50  # CALM's chain first (see calm_step)
    resources:
        **job_resources("select"),
    log:
        "logs{rep}/select/{sampler}-{ratio}/{task}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm select --scores {input} --out {output} --sampler {wildcards.sampler} "
        "--ratio {wildcards.ratio} --seed {params.seed} 2> {log}"


# The sampler sweep's repeats draw their credible sets with other seeds (calm/sweeps.py).
use rule select as select_seeded with:
    output:
        "results{rep}/credible/{sampler}-{ratio}-s{seed}/{task}.parquet",
    params:
        seed=lambda w: int(w.seed),
        lineage=lambda w: credible_lineage(w.sampler, float(w.ratio), w.task, int(w.seed), w.rep),
    log:
        "logs{rep}/select/{sampler}-{ratio}-s{seed}/{task}.log",
