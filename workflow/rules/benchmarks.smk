# Performance benchmarks (benchmarks/README.md), not part of the default target:
#   snakemake --cores 2 benchmarks
# They time CALM's mask step on this config's tasks and model, so they need the raw task data
# (fetch_data) but no result of the pipeline; per-rule times of an earlier run
# (benchmarks/rules/) are summarised when present. The summary is rewritten on every run of
# `python -m benchmarks`; force this rule with `--forcerun benchmarks`.


# The benchmarks' code lives beside the workflow, whatever --directory the run uses.
BENCHMARKS_RUN = str(Path(workflow.basedir) / "benchmarks" / "run.py")


rule benchmarks:
    input:
        data=expand("resources/data/{task}", task=TASKS),
    output:
        "benchmarks/results/SUMMARY.md",
    params:
        run=BENCHMARKS_RUN,
        config=shlex.quote(json.dumps(config)),
        device=CFG.device,
        precision=CFG.precision,
    threads: CFG.threads
    resources:
        **job_resources("benchmarks", gpu=True),
    log:
        "logs/benchmarks.log",
    conda:
        "../../environment.yml"
    shell:
        "python {params.run} all --config-json {params.config} --device {params.device} "
        "--precision {params.precision} --threads {threads} --data resources/data --wheels resources/wheels "
        "--rules-dir benchmarks/rules --out benchmarks/results 2> {log}"
