# Every baseline of the registry (calm.methods.METHODS) is one job: the data-free ones read
# the fine-tuned models only; the data-driven ones also the per-task files their registry
# entry names (preprocessed splits, heads, pool scores).

rule merge_baseline:
    input:
        model=PRETRAINED,
        finetuned=lambda w: [finetuned(t, w.rep) for t in TASKS],
        data=baseline_inputs,
    output:
        model=directory("results{rep}/merge/baselines/{method}/model"),
        summary="results{rep}/merge/baselines/{method}/summary.json",
    wildcard_constraints:
        method="|".join(METHODS),
    params:
        model=MODEL_FLAGS,
        data=baseline_data_flags,
        settings=baseline_settings,
        lineage=lambda w: baseline_lineage(w.method, w.rep),
    threads: CFG.threads
    resources:
        **job_resources("merge_baseline", gpu=True),
    log:
        "logs{rep}/merge/baseline_{method}.log",
    benchmark:
        "benchmarks/rules{rep}/merge/baseline_{method}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "python -m calm merge-baseline {params.model} --threads {threads} --method {wildcards.method} "
        "--models {input.finetuned} {params.data} --out {output.model} --summary {output.summary} "
        "{params.settings} 2> {log}"


# `snakemake --cores 2 baselines`: every method of the registry, those baselines.methods leaves out
# (AdaRank, by default) too, and their table, results/tables/baselines.{csv,md,json}: the main
# table's rows and theirs.
rule baselines:
    input:
        "results/tables/baselines.csv",
