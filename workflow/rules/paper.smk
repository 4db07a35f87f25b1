# The paper's tables and figures: one rule per item, so changing one item's code reruns only
# that item (each rule's `code` param is a digest of the code that builds it, and a changed
# param reruns the job). `snakemake paper` builds them all, running the sweeps they read
# (results/ablations/*.csv, written by workflow/rules/ablations.smk).
from calm.paper.registry import item_digest, options_json


rule paper_table1_main:
    input:
        rules.table.output.csv,
    output:
        html=report(
            "results/paper/tables/table1_main.html",
            caption="../report/paper/table1_main.rst",
            category="Paper tables",
            labels={"item": "Table 1"},
        ),
        csv="results/paper/tables/table1_main.csv",
        md="results/paper/tables/table1_main.md",
        tex="results/paper/tables/table1_main.tex",
    params:
        code=item_digest("table1_main"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table1_main.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table1_main --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table2_mask_analysis:
    input:
        "results/ablations/mask_analysis.csv",
    output:
        html=report(
            "results/paper/tables/table2_mask_analysis.html",
            caption="../report/paper/table2_mask_analysis.rst",
            category="Paper tables",
            labels={"item": "Table 2"},
        ),
        csv="results/paper/tables/table2_mask_analysis.csv",
        md="results/paper/tables/table2_mask_analysis.md",
        tex="results/paper/tables/table2_mask_analysis.tex",
    params:
        code=item_digest("table2_mask_analysis"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table2_mask_analysis.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table2_mask_analysis --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table3_strategy:
    input:
        "results/ablations/strategy.csv",
    output:
        html=report(
            "results/paper/tables/table3_strategy.html",
            caption="../report/paper/table3_strategy.rst",
            category="Paper tables",
            labels={"item": "Table 3"},
        ),
        csv="results/paper/tables/table3_strategy.csv",
        md="results/paper/tables/table3_strategy.md",
        tex="results/paper/tables/table3_strategy.tex",
    params:
        code=item_digest("table3_strategy"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table3_strategy.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table3_strategy --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table4_lr:
    input:
        "results/ablations/lr.csv",
    output:
        html=report(
            "results/paper/tables/table4_lr.html",
            caption="../report/paper/table4_lr.rst",
            category="Paper tables",
            labels={"item": "Table 4"},
        ),
        csv="results/paper/tables/table4_lr.csv",
        md="results/paper/tables/table4_lr.md",
        tex="results/paper/tables/table4_lr.tex",
    params:
        code=item_digest("table4_lr"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table4_lr.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table4_lr --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table5_alpha:
    input:
        "results/ablations/alpha.csv",
    output:
        html=report(
            "results/paper/tables/table5_alpha.html",
            caption="../report/paper/table5_alpha.rst",
            category="Paper tables",
            labels={"item": "Table 5"},
        ),
        csv="results/paper/tables/table5_alpha.csv",
        md="results/paper/tables/table5_alpha.md",
        tex="results/paper/tables/table5_alpha.tex",
    params:
        code=item_digest("table5_alpha"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table5_alpha.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table5_alpha --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table_switches:
    input:
        "results/ablations/switches.csv",
    output:
        html=report(
            "results/paper/tables/table_switches.html",
            caption="../report/paper/table_switches.rst",
            category="Paper tables",
            labels={"item": "Update switches"},
        ),
        csv="results/paper/tables/table_switches.csv",
        md="results/paper/tables/table_switches.md",
        tex="results/paper/tables/table_switches.tex",
    params:
        code=item_digest("table_switches"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table_switches.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table_switches --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table7_topk:
    input:
        "results/ablations/topk.csv",
    output:
        html=report(
            "results/paper/tables/table7_topk.html",
            caption="../report/paper/table7_topk.rst",
            category="Paper tables",
            labels={"item": "Table 7"},
        ),
        csv="results/paper/tables/table7_topk.csv",
        md="results/paper/tables/table7_topk.md",
        tex="results/paper/tables/table7_topk.tex",
    params:
        code=item_digest("table7_topk"),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table7_topk.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table7_topk --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_table8_runtime:
    input:
        [f for files, _ in runtime_rows().values() for f in files],
    output:
        html=report(
            "results/paper/tables/table8_runtime.html",
            caption="../report/paper/table8_runtime.rst",
            category="Paper tables",
            labels={"item": "Table 8"},
        ),
        csv="results/paper/tables/table8_runtime.csv",
        md="results/paper/tables/table8_runtime.md",
        tex="results/paper/tables/table8_runtime.tex",
    params:
        code=item_digest("table8_runtime"),
        inputs=labelled((name, f) for name, (files, _) in runtime_rows().items() for f in files),
        options=shlex.quote(options_json({"iterations": {name: it for name, (_, it) in runtime_rows().items()},
                                          "runs": runtime_runs()})),
        prefix=lambda w, output: output.html.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/table8_runtime.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-table table8_runtime --inputs {params.inputs} --options {params.options} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig3_normalised:
    input:
        rules.table.output.csv,
    output:
        png=report(
            "results/paper/figures/fig3_normalised.png",
            caption="../report/paper/fig3_normalised.rst",
            category="Paper figures",
            labels={"item": "Fig. 3"},
        ),
        pdf="results/paper/figures/fig3_normalised.pdf",
    params:
        code=item_digest("fig3_normalised"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig3_normalised.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig3_normalised --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig4_ratio:
    input:
        "results/ablations/samplers.csv",
    output:
        png=report(
            "results/paper/figures/fig4_ratio.png",
            caption="../report/paper/fig4_ratio.rst",
            category="Paper figures",
            labels={"item": "Fig. 4"},
        ),
        pdf="results/paper/figures/fig4_ratio.pdf",
    params:
        code=item_digest("fig4_ratio"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig4_ratio.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig4_ratio --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig5_samplers:
    input:
        "results/ablations/samplers.csv",
    output:
        png=report(
            "results/paper/figures/fig5_samplers.png",
            caption="../report/paper/fig5_samplers.rst",
            category="Paper figures",
            labels={"item": "Fig. 5"},
        ),
        pdf="results/paper/figures/fig5_samplers.pdf",
    params:
        code=item_digest("fig5_samplers"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig5_samplers.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig5_samplers --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig6_n_seq:
    input:
        "results/ablations/n_seq.csv",
    output:
        png=report(
            "results/paper/figures/fig6_n_seq.png",
            caption="../report/paper/fig6_n_seq.rst",
            category="Paper figures",
            labels={"item": "Fig. 6"},
        ),
        pdf="results/paper/figures/fig6_n_seq.pdf",
    params:
        code=item_digest("fig6_n_seq"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig6_n_seq.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig6_n_seq --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig7_layers:
    input:
        "results/ablations/layers.csv",
    output:
        png=report(
            "results/paper/figures/fig7_layers.png",
            caption="../report/paper/fig7_layers.rst",
            category="Paper figures",
            labels={"item": "Fig. 7"},
        ),
        pdf="results/paper/figures/fig7_layers.pdf",
    params:
        code=item_digest("fig7_layers"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig7_layers.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig7_layers --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig8_pseudo_labels:
    input:
        "results/ablations/pseudo_labels.csv",
    output:
        png=report(
            "results/paper/figures/fig8_pseudo_labels.png",
            caption="../report/paper/fig8_pseudo_labels.rst",
            category="Paper figures",
            labels={"item": "Fig. 8"},
        ),
        pdf="results/paper/figures/fig8_pseudo_labels.pdf",
    params:
        code=item_digest("fig8_pseudo_labels"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig8_pseudo_labels.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig8_pseudo_labels --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig9_entropy:
    input:
        [f"results/scores/{t}.parquet" for t in TASKS],
    output:
        png=report(
            "results/paper/figures/fig9_entropy.png",
            caption="../report/paper/fig9_entropy.rst",
            category="Paper figures",
            labels={"item": "Fig. 9"},
        ),
        pdf="results/paper/figures/fig9_entropy.pdf",
    params:
        code=item_digest("fig9_entropy"),
        inputs=labelled((t, f"results/scores/{t}.parquet") for t in TASKS),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig9_entropy.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig9_entropy --inputs {params.inputs} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig11_trace_accuracy:
    input:
        "results/ablations/trace_accuracy.csv",
    output:
        png=report(
            "results/paper/figures/fig11_trace_accuracy.png",
            caption="../report/paper/fig11_trace_accuracy.rst",
            category="Paper figures",
            labels={"item": "Fig. 11"},
        ),
        pdf="results/paper/figures/fig11_trace_accuracy.pdf",
    params:
        code=item_digest("fig11_trace_accuracy"),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig11_trace_accuracy.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig11_trace_accuracy --inputs {input} --out-prefix {params.prefix} > {log} 2>&1"


rule paper_fig12_active_fraction:
    input:
        list(calm_traces().values()),
    output:
        png=report(
            "results/paper/figures/fig12_active_fraction.png",
            caption="../report/paper/fig12_active_fraction.rst",
            category="Paper figures",
            labels={"item": "Fig. 12"},
        ),
        pdf="results/paper/figures/fig12_active_fraction.pdf",
    params:
        code=item_digest("fig12_active_fraction"),
        inputs=labelled(calm_traces().items()),
        prefix=lambda w, output: output.png.rsplit(".", 1)[0],
    threads: 1
    resources:
        **job_resources("paper"),
    log:
        "logs/paper/fig12_active_fraction.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m calm paper-figure fig12_active_fraction --inputs {params.inputs} --out-prefix {params.prefix} > {log} 2>&1"


rule paper:
    input:
        rules.paper_table1_main.output,
        rules.paper_table2_mask_analysis.output,
        rules.paper_table3_strategy.output,
        rules.paper_table4_lr.output,
        rules.paper_table5_alpha.output,
        rules.paper_table_switches.output,
        rules.paper_table7_topk.output,
        rules.paper_table8_runtime.output,
        rules.paper_fig3_normalised.output,
        rules.paper_fig4_ratio.output,
        rules.paper_fig5_samplers.output,
        rules.paper_fig6_n_seq.output,
        rules.paper_fig7_layers.output,
        rules.paper_fig8_pseudo_labels.output,
        rules.paper_fig9_entropy.output,
        rules.paper_fig11_trace_accuracy.output,
        rules.paper_fig12_active_fraction.output,
