# The paper's tables and figures: one rule per item (paper_<item>), made by one loop over the
# registry (calm/paper/registry.py), so changing one item's code reruns only that item: each
# rule's `code` param is a digest of the code that builds it, and a changed param reruns the
# job. `snakemake paper` builds them all, running the sweeps they read (results/ablations/*.csv,
# written by workflow/rules/ablations.smk).

include: "helpers/paper.smk"


for item in ITEMS:

    rule:
        name:
            f"paper_{item}"
        input:
            paper_sources(item)[0],
        output:
            **paper_outputs(item),
        params:
            **paper_params(item),
        threads: 1
        resources:
            **job_resources("paper"),
        log:
            f"logs/paper/{item}.log",
        conda:
            "../../environment.yml"
        shell:
            "python -m calm {params.command} --inputs {params.inputs}{params.options} --out-prefix {params.prefix} > {log} 2>&1"


rule paper:
    input:
        [getattr(rules, f"paper_{item}").output for item in ITEMS],
