rule finetune:
    input:
        model=PRETRAINED,
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    output:
        directory("results/models/finetuned/{task}"),
    params:
        model=MODEL_FLAGS,
        settings=render_flags(CFG.finetune),
    threads: CFG.threads
    resources:
        **job_resources("finetune", gpu=True),
    log:
        "logs/finetune/{task}.log",
    benchmark:
        "benchmarks/rules/finetune/{task}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm finetune {params.model} --threads {threads} --inputs {input.inputs} --head {input.head} "
        "--out {output} {params.settings} 2> {log}"
