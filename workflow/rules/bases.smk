# CALM over each base merge of S (ablations.bases × ablations.base_strategies), against its base
# alone and the best single-model method of the results table; `snakemake --cores 2 bases` runs
# it (not part of `ablations`: the paper has no such table). replicates.ablations: [bases] repeats
# it over fine-tuning seeds in `snakemake seeds`.
rule bases_table:
    input:
        lambda w: bases_files([bases_run()]),
    output:
        **bases_outputs("results/ablations/bases_table", "Bases sweep"),
    params:
        runs=lambda w: quoted([bases_run()]),
        lineage=lambda w: digest("bases_table", [path_lineage(p) for p in bases_files([bases_run()])]),
        prefix=lambda w, output: output.md.removesuffix(".md"),
        settings=render_flags(CFG.evaluate, exclude=("batch_size",)),
    resources:
        **job_resources("bases_table"),
    log:
        "logs/ablations/bases_table.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm bases-table --runs {params.runs} --out-prefix {params.prefix} {params.settings} > {log} 2>&1"


rule bases:
    input:
        "results/ablations/bases.csv",
        rules.bases_table.output,
