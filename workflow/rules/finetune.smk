rule finetune:
    input:
        model=PRETRAINED,
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    output:
        directory("results{rep}/models/finetuned/{task}"),
    params:
        model=MODEL_FLAGS,
        lineage=lambda w: finetuned_lineage(w.task, w.rep),
        # a replicate (`snakemake seeds`) differs from the main run in finetune.seed alone
        settings=lambda w: render_flags(CFG.finetune.model_copy(update={"seed": finetune_seed(w.rep)})),
    threads: CFG.threads
    resources:
        **job_resources("finetune", gpu=True),
    log:
        "logs{rep}/finetune/{task}.log",
    benchmark:
        "benchmarks/rules{rep}/finetune/{task}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm finetune {params.model} --threads {threads} --inputs {input.inputs} --head {input.head} "
        "--out {output} {params.settings} 2> {log}"
