# The helpers of the rules in workflow/rules/ablations.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

from calm.sweeps import MASK_ROWS


def point(row, columns, path):
    """A sweep point for `python -m calm ablation-table`: its axis values and the file it reads."""
    return {**{c: row[c].item() if hasattr(row[c], "item") else row[c] for c in columns}, "path": path}


def accuracy_points(ablation, rep=""):
    """One point per sweep row; the iterations sweep also reads its CALM steps' benchmark files,
    for what each setting costs."""
    points = [point(r, sweeps.AXES[ablation], variant_eval(r["variant"], rep)) for r in sweep_rows(ablation)]
    if ablation == "iterations":
        for p, r in zip(points, sweep_rows(ablation)):
            p["benchmarks"] = [step_benchmark(r["variant"], k, rep) for k in range(1, r["n_seq"] + 1)]
    return points


def pseudo_label_points():
    """One point per distinct credible set of the sampler sweep: a repeat whose sampler does not
    draw (or draws the whole pool) reads its repeat 0's set, which is listed once."""
    points = {}
    for r in sweep_rows("samplers"):
        for t in TASKS:
            path = credible(r["sampler"], r["ratio"], t, r["select_seed"])
            points.setdefault((r["sampler"], path), {**point(r, ["sampler", "ratio", "repeat"], path), "task": t})
    return list(points.values())


def grid_points():
    """One point per row of the sweep grid: its row number, swept keys (named as sweeps.grid_keys
    names them; a list as 'a>b'), its variant and predictions."""
    if not CFG.grid:
        raise ValueError("no sweep grid: set `grid: FILE` in the config (or --config grid=FILE)")
    keys = sweeps.grid_keys(GRID)
    return [{"row": i, **{keys[k]: ">".join(v) if isinstance(v, list) else v for k, v in row.items()},
             "variant": r["variant"], "path": variant_eval(r["variant"])}
            for i, (row, r) in enumerate(zip(GRID, sweep_rows("grid")), start=1)]


def mask_variant():
    return sweep_rows("mask_analysis")[0]["variant"]


def mask_points():
    v = mask_variant()
    files = {
        "theta0": "results/eval/pretrained.parquet",
        **{part: f"results/eval/calm/{v}/{part}.parquet" for part in ANALYSIS_PARTS + ["tau2"]},
        "merged": variant_eval(v),
    }
    return [{"row": label, "path": files[key]} for key, (label, *_) in MASK_ROWS.items()]


def step_points(variant, name="task"):
    """One point per sequential step of a variant: step, its task, and its folder."""
    return [
        {"step": k, name: t, "dir": step_dir(variant, k)}
        for k, t in enumerate(VARIANTS[variant].sequential, start=1)
    ]


def trace_points():
    variant = sweep_rows("trace")[0]["variant"]
    return [
        {"step": p["step"], "task_merged": p["task_merged"], "path": f"{p['dir']}/trace.csv"}
        for p in step_points(variant, "task_merged")
    ]


def paths(points):
    return sorted({p["path"] for p in points})


def points_lineage(points):
    """Of a sweep table: each predictions file it reads (other inputs, benchmark times, credible
    sets, step folders, are its record of how a setting ran, not a setting)."""
    return digest("points", [path_lineage(p) for p in paths(points) if "/eval/" in p])
