# The ablations (issue 3): each sweep is a set of CALM variants (calm/sweeps.py), merged
# and evaluated by the rules of merge.smk and evaluate.smk, and collected into one tidy
# CSV under results/ablations/. `snakemake --cores 2 ablations` runs them all; the
# ablation_* targets run one each.

include: "helpers/ablations.smk"


rule ablation_accuracy:
    input:
        predictions=lambda w: paths(accuracy_points(w.sweep, w.rep)),
        benchmarks=lambda w: sorted({b for p in accuracy_points(w.sweep, w.rep) for b in p.get("benchmarks", [])}),
        individual="results{rep}/eval/individual.parquet",
    output:
        "results{rep}/ablations/{sweep}.csv",
    params:
        points=lambda w: quoted(accuracy_points(w.sweep, w.rep)),
        lineage=lambda w: points_lineage(accuracy_points(w.sweep, w.rep)),
    wildcard_constraints:
        sweep="|".join(sweeps.AXES),
    resources:
        **job_resources("ablation_accuracy"),
    log:
        "logs{rep}/ablations/{sweep}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-table --kind accuracy --points {params.points} "
        "--individual {input.individual} --out {output} 2> {log}"


rule ablation_pseudo_labels:
    input:
        paths(pseudo_label_points()),
    output:
        "results/ablations/pseudo_labels.csv",
    params:
        points=quoted(pseudo_label_points()),
    resources:
        **job_resources("ablation_pseudo_labels"),
    log:
        "logs/ablations/pseudo_labels.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-table --kind pseudo_labels --points {params.points} --out {output} 2> {log}"


rule mask_parts:
    input:
        model=PRETRAINED,
        tau_prev=lambda w: tau_before(w.variant, len(VARIANTS[w.variant].sequential)),
        finetuned=lambda w: finetuned(VARIANTS[w.variant].sequential[-1]),
        mask=lambda w: f"{last_step_dir(w.variant)}/mask.safetensors",
    output:
        **{part: directory(f"results/merge/calm/{{variant}}/analysis/{part}") for part in ANALYSIS_PARTS},
    params:
        model=MODEL_FLAGS,
        out=lambda w: f"{variant_dir(w.variant)}/analysis",
        lineage=lambda w: analysis_lineage(w.variant),
    threads: CFG.threads
    resources:
        **job_resources("mask_parts", gpu=True),
    log:
        "logs/merge/calm/{variant}/analysis.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm mask-parts {params.model} --threads {threads} --tau-prev {input.tau_prev} "
        "--model {input.finetuned} --mask {input.mask} --out {params.out} 2> {log}"


rule ablation_mask_analysis:
    input:
        paths(mask_points()),
    output:
        "results/ablations/mask_analysis.csv",
    params:
        points=quoted(mask_points()),
    resources:
        **job_resources("ablation_mask_analysis"),
    log:
        "logs/ablations/mask_analysis.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-table --kind accuracy --points {params.points} --out {output} 2> {log}"


rule ablation_topk:
    input:
        model=PRETRAINED,
        masks=[f"{p['dir']}/mask.safetensors" for p in step_points("default")],
        finetuned=[finetuned(p["task"]) for p in step_points("default")],
    output:
        "results/ablations/topk.csv",
    params:
        model=MODEL_FLAGS,
        steps=" ".join(
            f"{p['step']}:{p['task']}={p['dir']}/mask.safetensors,{finetuned(p['task'])}"
            for p in step_points("default")
        ),
        percents=",".join(f"{k:g}" for k in CFG.ablations.top_percent),
    threads: CFG.threads
    resources:
        **job_resources("ablation_topk", gpu=True),
    log:
        "logs/ablations/topk.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-topk {params.model} --threads {threads} --steps {params.steps} "
        "--top-percent {params.percents} --out {output} 2> {log}"


rule ablation_layers:
    input:
        [f"{p['dir']}/layers.csv" for p in step_points("default")],
    output:
        "results/ablations/layers.csv",
    params:
        points=quoted(
            [{"step": p["step"], "task": p["task"], "path": f"{p['dir']}/layers.csv"} for p in step_points("default")]
        ),
    resources:
        **job_resources("ablation_layers"),
    log:
        "logs/ablations/layers.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-table --kind layers --points {params.points} --out {output} 2> {log}"


rule ablation_trace:
    input:
        paths(trace_points()),
    output:
        "results/ablations/trace_accuracy.csv",
    params:
        points=quoted(trace_points()),
    resources:
        **job_resources("ablation_trace"),
    log:
        "logs/ablations/trace_accuracy.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm ablation-table --kind trace --points {params.points} --out {output} 2> {log}"


# A user's sweep grid (the config's `grid`): every row is a CALM variant, merged and evaluated by
# the rules above (rows with the same settings, or a row equal to the config's own calm and
# select sections, share their jobs); `snakemake grid` runs them all and writes one tidy CSV
# and a plot of accuracy against the swept keys.
rule grid:
    input:
        predictions=lambda w: paths(grid_points()),
        individual="results/eval/individual.parquet",
    output:
        csv="results/grid/grid.csv",
        png="results/grid/grid.png",
        pdf="results/grid/grid.pdf",
    params:
        points=lambda w: quoted(grid_points()),
        lineage=lambda w: points_lineage(grid_points()),
        swept=lambda w: " ".join(shlex.quote(k) for k in sweeps.grid_keys(GRID).values()),
        prefix=lambda w, output: output.csv.removesuffix(".csv"),
    resources:
        **job_resources("grid"),
    log:
        "logs/grid.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm grid --points {params.points} --keys {params.swept} --individual {input.individual} "
        "--out-prefix {params.prefix} 2> {log}"


# Named targets, one per table or figure of the paper, and all of them.
rule ablation_samplers:
    input:
        "results/ablations/samplers.csv",
        "results/ablations/pseudo_labels.csv",


rule ablation_n_seq:
    input:
        "results/ablations/n_seq.csv",


rule ablation_lr:
    input:
        "results/ablations/lr.csv",


rule ablation_alpha:
    input:
        "results/ablations/alpha.csv",


rule ablation_switches:
    input:
        "results/ablations/switches.csv",


rule ablation_strategy:
    input:
        "results/ablations/strategy.csv",


rule ablation_iterations:
    input:
        "results/ablations/iterations.csv",


rule ablation_mask:
    input:
        "results/ablations/mask_analysis.csv",
        "results/ablations/topk.csv",
        "results/ablations/layers.csv",


rule ablation_trace_accuracy:
    input:
        "results/ablations/trace_accuracy.csv",


rule ablations:
    input:
        rules.ablation_samplers.input,
        rules.ablation_n_seq.input,
        rules.ablation_lr.input,
        rules.ablation_alpha.input,
        rules.ablation_switches.input,
        rules.ablation_strategy.input,
        rules.ablation_iterations.input,
        rules.ablation_mask.input,
        rules.ablation_trace_accuracy.input,
