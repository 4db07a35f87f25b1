# The helpers of the rules in workflow/rules/paper.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

from calm.paper.registry import ITEMS, item_digest, options_json, report_label


def calm_steps():
    """(k, task, folder, benchmark file) of each sequential step of the main CALM run."""
    return [(k, t, step_dir("default", k), step_benchmark("default", k)) for k, t in enumerate(CFG.calm.sequential, start=1)]


def calm_traces():
    """Fig. 12: label -> mask trace of each sequential step of the main CALM run."""
    return {f"{t} (step {k})": f"{folder}/trace.csv" for k, t, folder, _ in calm_steps()}


def runtime_rows():
    """Table 8: row name -> (Snakemake benchmark files whose `s` add up to one run of the row,
    iterations). A row over several runs (CALM at one |S̄| over the order sweep's orders) is the
    mean of its runs; runtime_runs() names each file's run. CALM's rows: each step of the main run,
    all of them, then each |S̄| of the order sweep."""
    it = CFG.calm.iterations
    steps = calm_steps()
    rows = {f"CALM step {k}: {t} ({len(CFG.efficient_tasks) + k} visible tasks)": ([bench], it) for k, t, _, bench in steps}
    if len(steps) > 1:
        rows[f"CALM, all {len(steps)} steps (|S̄| = {len(steps)})"] = ([b for *_, b in steps], it * len(steps))
    by_n = {}
    for r in sweep_rows("n_seq"):
        by_n.setdefault(r["n_seq"], []).append(r)
    for n, runs in sorted(by_n.items()):
        name = f"CALM, |S̄| = {n} (mean of {len(runs)} order{'s' * (len(runs) > 1)})"
        rows[name] = ([step_benchmark(r["variant"], k) for r in runs for k in range(1, n + 1)],
                      int(runs[0]["iterations"]) * int(n))
    # The baselines the main run made that learn from data in steps (iterations: L&S epochs per
    # task, AdaMerging's and AdaRank's steps), in registry order.
    steps = {"localize_stitch": CFG.baselines.localize_stitch.epochs * len(TASKS), "adamerging": CFG.baselines.adamerging.steps,
             "adarank": CFG.baselines.adarank.steps}
    for m, spec in METHODS.items():
        if m in CFG.baselines.methods and spec.adapter in steps:
            rows[spec.label] = ([f"benchmarks/rules/merge/baseline_{m}.tsv"], steps[spec.adapter])
    return rows


def runtime_runs():
    """Table 8: each benchmark file of the order sweep -> its run (the variant); the files a row
    reads that no run names form one run together."""
    return {step_benchmark(r["variant"], k): r["variant"]
            for r in sweep_rows("n_seq") for k in range(1, r["n_seq"] + 1)}


def labelled(pairs):
    """LABEL=PATH arguments, each shell-quoted (labels hold spaces and brackets)."""
    return " ".join(shlex.quote(f"{label}={path}") for label, path in pairs)


# Items that read one ablation sweep's tidy table.
SWEEP_TABLE = {
    "table2_mask_analysis": "mask_analysis",
    "table3_strategy": "strategy",
    "table4_lr": "lr",
    "table5_alpha": "alpha",
    "table_switches": "switches",
    "table7_topk": "topk",
    "fig4_ratio": "samplers",
    "fig5_samplers": "samplers",
    "fig6_n_seq": "n_seq",
    "fig7_layers": "layers",
    "fig8_pseudo_labels": "pseudo_labels",
    "fig11_trace_accuracy": "trace_accuracy",
}


def paper_sources(name):
    """(input files, LABEL=PATH pairs or None, options or None) of one item."""
    if name in SWEEP_TABLE:
        return [f"results/ablations/{SWEEP_TABLE[name]}.csv"], None, None
    if name == "table1_main":
        return [main_table()["csv"]], None, None
    if name == "fig3_normalised":  # the seeds table's s.d. as error bars, once `seeds` has run
        seeds = "results/tables/seeds.csv"
        pairs = [("main", main_table()["csv"])] + ([("seeds", seeds)] if Path(seeds).exists() else [])
        return [f for _, f in pairs], pairs, None
    if name == "table8_runtime":
        rows = runtime_rows()
        pairs = [(row, f) for row, (files, _) in rows.items() for f in files]
        options = {"iterations": {row: it for row, (_, it) in rows.items()}, "runs": runtime_runs()}
        return [f for _, f in pairs], pairs, options
    if name == "fig9_entropy":
        pairs = [(t, f"results/scores/{t}.parquet") for t in TASKS]
    elif name == "fig12_active_fraction":
        pairs = list(calm_traces().items())
    else:
        raise ValueError(f"paper item '{name}' has no inputs in workflow/rules/paper.smk")
    return [f for _, f in pairs], pairs, None


def paper_outputs(name):
    """A table as HTML (in the report), CSV, Markdown and LaTeX; a figure as PNG (in the report) and PDF."""
    kind = ITEMS[name].kind
    folder = f"results/paper/{kind}s/{name}"
    shown, *others = ("html", "csv", "md", "tex") if kind == "table" else ("png", "pdf")
    category = "Paper tables" if kind == "table" else "Paper figures"
    outputs = {shown: report(f"{folder}.{shown}", caption=f"../report/paper/{name}.rst", category=category,
                             labels={"item": report_label(name)})}
    return outputs | {ext: f"{folder}.{ext}" for ext in others}


def paper_params(name):
    """The rule's params. The shell command is the same for every item, with all that differs
    in params: Snakemake evaluates a rule's `shell:` when the job runs, after the loop that made
    the rules has moved on, so the command may not name the loop's item."""
    _, pairs, options = paper_sources(name)
    shown = "html" if ITEMS[name].kind == "table" else "png"
    return {
        "code": item_digest(name),
        "command": f"paper-{ITEMS[name].kind} {name}",
        "inputs": (lambda w, input: " ".join(input)) if pairs is None else labelled(pairs),
        "options": "" if options is None else f" --options {shlex.quote(options_json(options))}",
        "prefix": lambda w, output, shown=shown: getattr(output, shown).rsplit(".", 1)[0],
    }
