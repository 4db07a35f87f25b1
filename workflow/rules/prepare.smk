# Each task's splits encoded once (tokenised texts or decoded images) and its frozen head: every
# later stage reads these, never the raw data.


rule prepare:
    input:
        # the checkpoint-head families read a task's head from its fine-tuned checkpoint
        unpack(lambda w: {"finetuned": finetuned(w.task)} if CFG.model.heads_from_checkpoints else {}),
        model=PRETRAINED,
        data="resources/data/{task}",
    output:
        inputs="results/inputs/{task}.safetensors",
        head="results/heads/{task}.safetensors",
    params:
        model=MODEL_FLAGS,
        lineage=lambda w: prepared_lineage(w.task),
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


rule prepare_val:
    input:
        model=PRETRAINED,
        data="resources/val/{task}",
    output:
        inputs="results/inputs/val/{task}.safetensors",
    params:
        model=MODEL_FLAGS,
        lineage=lambda w: val_lineage(w.task),
    threads: CFG.threads
    resources:
        **job_resources("prepare"),
    log:
        "logs/prepare_val/{task}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm prepare-val {params.model} --threads {threads} --data {input.data} "
        "--inputs {output.inputs} 2> {log}"
