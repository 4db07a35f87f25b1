import functools
import hashlib
import json
import os
import posixpath
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from pydantic import BaseModel
from snakemake.utils import Paramspace

from calm import resources, sweeps
from calm.config import Config
from calm.config.files import ConfigError, validate_sweep_table
from calm.flags import interpreter_first_on_path, render_flags
from calm.methods import METHODS
from calm.paper.registry import ITEMS, item_digest, options_json, report_label
from calm.sweeps import MASK_ROWS

# The typed config re-checks what the JSON schema cannot (cross-key rules such as
# calm.sequential ⊆ data.tasks) before any job starts.
CFG = Config.model_validate(config)
# Jobs call `python -m calm`: the interpreter running Snakemake (the venv's) goes first on
# PATH, so the shell finds the same environment without naming it.
interpreter_first_on_path()
TASKS = CFG.data.tasks
SEQ = CFG.calm.sequential
EFFICIENT = CFG.efficient_tasks
PRETRAINED = "resources/models/pretrained"


class Untracked:
    """A rule parameter that reaches the shell command (as its text) but not Snakemake's record
    of params, which keeps only plain values (strings, numbers, containers) and skips other
    objects: changing it reruns nothing. For a setting that no output depends on."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


# model.trust_pickle only says whether a fetch may unpickle a .pt/.bin source, never what the
# fetched safetensors hold, and every job after the fetches reads only those: so no rule
# tracks it (flipping it reruns nothing; a fetch it refused left no output and runs anyway),
# and only the fetch rules pass it.
MODEL_SECTION = render_flags(CFG.model, prefix="model_", exclude=("source", "trust_pickle"))
TRUST_PICKLE = Untracked(f"--model-trust-pickle {CFG.model.trust_pickle}")
MODEL_FLAGS = f"--pretrained {PRETRAINED} {MODEL_SECTION} --device {CFG.device} --precision {CFG.precision}"
LAMBDAS = [f"{lam:g}" for lam in CFG.baselines.lambda_grid]
TA_LAMBDA = f"{CFG.baselines.task_arithmetic_lambda:g}"


def ta_evals(rep=""):
    """Every λ task arithmetic is evaluated at (the sweep's, and the table's own row) -> its predictions."""
    return {lam: f"results{rep}/eval/task_arithmetic_lam{lam}.parquet"
            for lam in sorted({*LAMBDAS, TA_LAMBDA}, key=float)}


# Every CALM run is a named variant (calm/sweeps.py): `default` is the config's calm and
# select sections; the ablations add the rest. SWEEPS is the tidy table of sweep points.
def grid_names(rows: list[dict]) -> list[str]:
    """Each grid row's variant name: its values as Paramspace names an instance,
    'ratio~0.5_lr~1e+07' (a list joined by '+'; the key without its section where that is unique)."""
    names = sweeps.grid_keys(rows)
    keys = list(names)

    def text(v) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)

    table = pd.DataFrame([{names[k]: text(row[k]) for k in keys} for row in rows], columns=list(names.values()))
    return list(Paramspace(table, filename_params="*").instance_patterns)


# A user's sweep grid (the config's `grid`, relative to the working directory): every row is
# checked before any job starts, one error line per bad row.
try:
    GRID = validate_sweep_table(CFG.grid, Config, base=CFG, sections=("calm", "select")) if CFG.grid else []
except ConfigError as exc:
    sys.exit("\n".join(f"error: {line}" for line in str(exc).splitlines()))
VARIANTS, SWEEPS = sweeps.plan(CFG, dict(zip(grid_names(GRID), GRID)))


# A replicate of the pipeline under another fine-tuning seed (`snakemake seeds`) writes what
# depends on the fine-tuned models under results/seeds/seed<s>/ (logs, benchmarks alike); the
# main run's `rep` is empty, so its paths, commands and params are those of a run without
# replicates, and a finished main run is replicate 0 as it stands. The data, the pretrained
# model and the prepared inputs and heads depend on no fine-tuning seed and stay shared.
REPLICATE = re.compile(r"(|/seeds/seed-?[0-9]+)")


wildcard_constraints:
    rep=REPLICATE.pattern,
    task="|".join(TASKS),
    k=r"[0-9]+",
    variant="|".join(re.escape(v) for v in VARIANTS),
    sampler="cb_ems|ems|supervised|random",
    seed=r"[0-9]+",
    ratio=r"[0-9.e-]+",


def custom_flag(wildcards):
    spec = CFG.data.custom.get(wildcards.task)
    return "" if spec is None else f"--custom {shlex.quote(json.dumps(spec.model_dump()))}"


NO_REPLICATES = ("error: replicates (snakemake seeds) need fine-tuning done by the workflow, "
                 "and model.finetuned names fetched checkpoints: leave it empty to fine-tune here")


def finetuned(task, rep=""):
    """Fetched (model.finetuned) or fine-tuned here (the embedded default)."""
    if CFG.model.finetuned:
        if rep:
            sys.exit(NO_REPLICATES)
        return f"resources/models/finetuned/{task}"
    return f"results{rep}/models/finetuned/{task}"


def replicate(r):
    """The `rep` of replicate r: it fine-tunes with finetune.seed + r; replicate 0 is the main run."""
    # joined from parts: snakemake --lint reads any string literal that starts with a slash as an
    # absolute path
    return "" if r == 0 else posixpath.join(posixpath.sep, "seeds", f"seed{CFG.finetune.seed + r}")


def finetune_seed(rep):
    return CFG.finetune.seed if rep == "" else int(rep.rsplit("seed", 1)[1])


def finetune_flags(rep):
    """The finetune section of a replicate: only the seed differs from the main run's."""
    return render_flags(CFG.finetune.model_copy(update={"seed": finetune_seed(rep)}))


def hf_flag(wildcards):
    spec = CFG.data.hf.get(wildcards.task)
    return "" if spec is None else f"--hf {shlex.quote(json.dumps(spec.model_dump()))}"


def checkpoint_head_input(wildcards):
    """prepare reads a task's head from its fine-tuned checkpoint in the checkpoint-head families."""
    return {"finetuned": finetuned(wildcards.task)} if CFG.model.heads_from_checkpoints else {}


def scaled(base):
    """A resource that grows with each retry (profiles/slurm sets `retries`)."""
    return lambda wildcards, attempt: base * attempt


MODEL_MB = resources.model_mb(CFG, Path(PRETRAINED))
# On a cluster, every job that declares gpu=1 goes to the GPU partition and asks for the GPU model
# the environment names (profiles/slurm; the other jobs go to SLURM_PARTITION), whatever its rule.
GPU_SITE = {key: os.environ[var] for key, var in (("slurm_partition", "SLURM_GPU_PARTITION"),
                                                  ("gpu_model", "SLURM_GPU_MODEL")) if os.environ.get(var)}


def job_resources(rule, gpu=False):
    """A compute rule's resources: memory and run time from the config's scale
    (calm/resources.py), growing with each retry; gpu=1 and the site's GPU partition for a GPU job."""
    mem_mb, runtime = resources.first_attempt(CFG, rule, MODEL_MB, gpu)
    return {"mem_mb": scaled(mem_mb), "runtime": scaled(runtime), **({"gpu": 1, **GPU_SITE} if gpu else {})}


def variant_dir(variant, rep=""):
    return f"results{rep}/merge/calm/{variant}"


def credible(sampler, ratio, task, seed, rep=""):
    """A credible set; one drawn with a seed other than select.seed has its own folder (select_seeded)."""
    suffix = "" if seed == CFG.select.seed else f"-s{seed}"
    return f"results{rep}/credible/{sampler}-{ratio:g}{suffix}/{task}.parquet"


def variant_credible(variant, task, rep=""):
    v = VARIANTS[variant]
    return credible(v.sampler, v.ratio, task, v.select_seed, rep)


def step_dir(variant, k, rep=""):
    """Folder of a variant's k-th sequential step (1-based); it merges S̄[k-1]."""
    return f"{variant_dir(variant, rep)}/step{k}-{VARIANTS[variant].sequential[k - 1]}"


def last_step_dir(variant, rep=""):
    return step_dir(variant, len(VARIANTS[variant].sequential), rep)


def tau_before(variant, k, rep=""):
    if k == 1:
        return f"{variant_dir(variant, rep)}/base.safetensors"
    return f"{step_dir(variant, k - 1, rep)}/tau.safetensors"


def visible_tasks(variant, k):
    """S, then the sequential tasks up to and including the k-th."""
    v = VARIANTS[variant]
    return v.efficient(TASKS) + v.sequential[:k]


def step_task(w):
    """The task a calm_step job merges; the folder name must agree with the variant's order."""
    seq = VARIANTS[w.variant].sequential
    k = int(w.k)
    if not 1 <= k <= len(seq) or seq[k - 1] != w.task:
        raise ValueError(f"CALM variant '{w.variant}' has no step {k} merging '{w.task}' (its order: {seq})")
    return w.task


def visible_flag(variant, k, rep=""):
    return " ".join(
        f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors,{variant_credible(variant, t, rep)}"
        for t in visible_tasks(variant, k)
    )


def calm_flags(variant):
    return render_flags(VARIANTS[variant].calm, exclude=("sequential", "efficient_lambda", "checkpoint_every"))


def traced(variant):
    """Tracing variants evaluate every task's test split inside the mask loop."""
    return TASKS if VARIANTS[variant].calm.trace_eval_every else []


def trace_flag(variant):
    pairs = [f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors" for t in traced(variant)]
    return "--trace-eval " + " ".join(pairs) if pairs else ""


def variant_model(variant, rep=""):
    return f"{variant_dir(variant, rep)}/model"


def variant_eval(variant, rep=""):
    """Predictions of a variant's merged model; the default's are the main table's CALM row."""
    return f"results{rep}/eval/calm.parquet" if variant == "default" else f"results{rep}/eval/calm/{variant}.parquet"


# Checkpoints of the mask analysis (paper Table 2) that `python -m calm mask-parts` writes.
ANALYSIS_PARTS = ["tau1", "not_m_tau1", "m_tau2"]


def variant_eval_models(method, rep=""):
    """calm/<variant>: its merged model; calm/<variant>/<part>: a mask-analysis model of its
    last step (tau2: the step's fine-tuned model)."""
    _, variant, *part = method.split("/")
    if variant not in VARIANTS or len(part) > 1:
        raise ValueError(f"unknown evaluation target '{method}'")
    if not part:
        return {t: variant_model(variant, rep) for t in TASKS}
    if part[0] == "tau2":
        return {t: finetuned(VARIANTS[variant].sequential[-1], rep) for t in TASKS}
    if part[0] in ANALYSIS_PARTS:
        return {t: f"{variant_dir(variant, rep)}/analysis/{part[0]}" for t in TASKS}
    raise ValueError(f"unknown evaluation target '{method}'")


def eval_models(method, rep=""):
    """The checkpoint each task is evaluated with under a method name."""
    if method == "individual":
        return {t: finetuned(t, rep) for t in TASKS}
    if method == "pretrained":
        return {t: PRETRAINED for t in TASKS}
    if method == "calm":
        return {t: variant_model("default", rep) for t in TASKS}
    if method.startswith("calm/"):
        return variant_eval_models(method, rep)
    name = method.removeprefix("baseline_")
    if method.startswith("baseline_") and name in METHODS:
        # A per-task method (EMR) writes one checkpoint per task inside its model folder.
        model = f"{baseline_dir(name, rep)}/model"
        return {t: f"{model}/{t}" if METHODS[name].per_task else model for t in TASKS}
    raise ValueError(f"unknown evaluation target '{method}'")


def eval_checkpoints(method, rep=""):
    """The folders a method's evaluation reads: the job outputs that hold its checkpoints."""
    name = method.removeprefix("baseline_")
    if method.startswith("baseline_") and name in METHODS and METHODS[name].per_task:
        return [f"{baseline_dir(name, rep)}/model"]
    return sorted(set(eval_models(method, rep).values()))


def table_rows(rep=""):
    """Row name -> predictions file, in table order (the registry's, for the baselines that
    baselines.methods names); the λ sweep rows collapse to the best."""
    rows = {
        # θ0 depends on no fine-tuning seed: every replicate's table reads the main run's
        "Pretrained": "results/eval/pretrained.parquet",
        "Individual": f"results{rep}/eval/individual.parquet",
    }
    ta = ta_evals(rep)
    for method, spec in METHODS.items():
        if method not in CFG.baselines.methods:
            continue
        if method == "task_arithmetic":
            rows[f"Task arithmetic (λ={TA_LAMBDA})"] = ta[TA_LAMBDA]
            rows.update({f"Task arithmetic λ={lam}": ta[lam] for lam in LAMBDAS})
        else:
            rows[spec.label] = f"results{rep}/eval/baseline_{method}.parquet"
    rows["CALM"] = f"results{rep}/eval/calm.parquet"
    return rows


def main_table(rep=""):
    """The files of a run's results table (`table`), by extension."""
    return {ext: f"results{rep}/tables/main.{ext}" for ext in ("csv", "md", "json")}


# --- fine-tuning seeds (the `seeds` rule, workflow/rules/evaluate.smk) ---------------------


def replicates():
    """The `rep` of every replicate `snakemake seeds` reads, the main run's first."""
    if CFG.model.finetuned:
        sys.exit(NO_REPLICATES)
    return [replicate(r) for r in range(CFG.replicates.seeds)]


def seed_runs():
    """Per replicate: its fine-tuning seed and its results table's rows (name -> predictions)."""
    return [{"seed": finetune_seed(rep), "rows": table_rows(rep)} for rep in replicates()]


def seed_ablations():
    """Per sweep of replicates.ablations, per replicate: its seed, its tidy table (ablation_accuracy)
    and, for the strategy sweep, each strategy's predictions (for the intervals between them)."""
    out = {}
    for sweep in CFG.replicates.ablations:
        out[sweep] = []
        for rep in replicates():
            run = {"seed": finetune_seed(rep), "table": f"results{rep}/ablations/{sweep}.csv"}
            if sweep == "strategy":
                run["predictions"] = {r["strategy"]: variant_eval(r["variant"], rep) for r in sweep_rows(sweep)}
            out[sweep].append(run)
    return out


def seeds_inputs():
    """Every replicate's predictions of the main table's rows, and its own results table."""
    files = [path for run in seed_runs() for path in run["rows"].values()]
    files += [path for rep in replicates() for path in main_table(rep).values()]
    for runs in seed_ablations().values():
        files += [path for run in runs for path in [run["table"], *run.get("predictions", {}).values()]]
    return list(dict.fromkeys(files))


def seeds_outputs():
    """The seeds table (CSV in the report, Markdown, JSON with the intervals) and its figure; the
    sweeps' table over seeds when replicates.ablations names one, and the |S̄| curve for n_seq."""
    prefix = "results/tables/seeds"
    out = {
        "csv": report(f"{prefix}.csv", caption="../report/seeds.rst", category="Fine-tuning seeds"),
        "md": f"{prefix}.md",
        "json": f"{prefix}.json",
        "png": report(f"{prefix}.png", caption="../report/seeds_figure.rst", category="Fine-tuning seeds"),
        "pdf": f"{prefix}.pdf",
    }
    if CFG.replicates.ablations:
        out["ablations_csv"] = report(f"{prefix}_ablations.csv", caption="../report/seeds_ablations.rst",
                                      category="Fine-tuning seeds")
        out["ablations_md"] = f"{prefix}_ablations.md"
    if "n_seq" in CFG.replicates.ablations:
        out["n_seq_png"] = report(f"{prefix}_n_seq.png", caption="../report/seeds_n_seq.rst",
                                  category="Fine-tuning seeds")
        out["n_seq_pdf"] = f"{prefix}_n_seq.pdf"
    return out


# --- baselines (workflow/rules/baselines.smk) -------------------------------------------------

# The scores depend on the fine-tuned models (a replicate's own); inputs and heads are shared.
BASELINE_FILES = {
    "inputs": ("--inputs", "results/inputs/{task}.safetensors"),
    "head": ("--heads", "results/heads/{task}.safetensors"),
    "scores": ("--scores", "results{rep}/scores/{task}.parquet"),
}


def baseline_dir(method, rep=""):
    return f"results{rep}/merge/baselines/{method}"


def baseline_inputs(wildcards):
    """The per-task files the method's registry entry says it reads."""
    return [BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)
            for need in METHODS[wildcards.method].needs for t in TASKS]


def baseline_data_flags(wildcards):
    return " ".join(
        f"{BASELINE_FILES[need][0]} "
        + " ".join(f"{t}={BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)}" for t in TASKS)
        for need in METHODS[wildcards.method].needs
    )


def baseline_settings(wildcards):
    """Only the config sections the method reads, so that changing one method's settings
    reruns that method alone."""
    parts = []
    for section in METHODS[wildcards.method].sections:
        value = getattr(CFG.baselines, section)
        if isinstance(value, BaseModel):
            parts.append(render_flags(value, prefix=f"{section}_"))
        else:
            parts.append(f"--{section.replace('_', '-')} {value}")
    return " ".join(parts)


def show_table():
    path = Path("results/tables/main.md")
    if path.exists():
        print(f"\nResults ({path}):\n\n{path.read_text()}")


# --- paper tables and figures (workflow/rules/paper.smk) ---------------------------------------


def step_benchmark(variant, k, rep=""):
    """The Snakemake benchmark file of a variant's k-th sequential step (calm_step's `benchmark:`)."""
    return f"benchmarks/rules{rep}/merge/calm/{variant}/step{k}-{VARIANTS[variant].sequential[k - 1]}.tsv"


def calm_steps():
    """(k, task, folder, benchmark file) of each sequential step of the main CALM run."""
    return [(k, t, step_dir("default", k), step_benchmark("default", k)) for k, t in enumerate(SEQ, start=1)]


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
    rows = {f"CALM step {k}: {t} ({len(EFFICIENT) + k} visible tasks)": ([bench], it) for k, t, _, bench in steps}
    if len(steps) > 1:
        rows[f"CALM, all {len(steps)} steps (|S̄| = {len(steps)})"] = ([b for *_, b in steps], it * len(steps))
    by_n = {}
    for r in sweep_rows("n_seq"):
        by_n.setdefault(r["n_seq"], []).append(r)
    for n, runs in sorted(by_n.items()):
        name = f"CALM, |S̄| = {n} (mean of {len(runs)} order{'s' * (len(runs) > 1)})"
        rows[name] = ([step_benchmark(r["variant"], k) for r in runs for k in range(1, n + 1)],
                      int(runs[0]["iterations"]) * int(n))
    # The data-driven baselines the main run made (iterations: L&S epochs per task, AdaMerging steps).
    for m in ("localize_stitch", "adamerging_task", "adamerging_layer"):
        if m in CFG.baselines.methods:
            iters = (CFG.baselines.localize_stitch.epochs * len(TASKS) if m == "localize_stitch"
                     else CFG.baselines.adamerging.steps)
            rows[METHODS[m].label] = ([f"benchmarks/rules/merge/baseline_{m}.tsv"], iters)
    return rows


def runtime_runs():
    """Table 8: each benchmark file of the order sweep -> its run (the variant); the files a row
    reads that no run names form one run together."""
    return {step_benchmark(r["variant"], k): r["variant"]
            for r in sweep_rows("n_seq") for k in range(1, r["n_seq"] + 1)}


def labelled(pairs):
    """LABEL=PATH arguments, each shell-quoted (labels hold spaces and brackets)."""
    return " ".join(shlex.quote(f"{label}={path}") for label, path in pairs)


# --- ablations (workflow/rules/ablations.smk) ------------------------------------------


def sweep_rows(ablation):
    return SWEEPS[SWEEPS["ablation"] == ablation].to_dict(orient="records")


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


def quoted(points):
    return shlex.quote(json.dumps(points, ensure_ascii=False))


# --- paper items (workflow/rules/paper.smk) -------------------------------------------


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
    if name in ("table1_main", "fig3_normalised"):
        return [main_table()["csv"]], None, None
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


# --- lineage (the `lineage` param of every compute rule) -----------------------------------

# Per output, a digest of every setting it was computed from, its own job's and those
# of every job upstream of it. Each compute rule records its output's lineage as a param
# (`lineage`), so Snakemake's params trigger reruns an output whenever any setting it depends
# on changed, even when the job that reads the setting directly failed in between: Snakemake
# deletes a failed job's outputs, and with them the only record that its setting changed, so
# without this the outputs downstream (whose own params did not change) stood as they were.
# docs/design.md (5.5) says why this and not content-addressed folders.
#
# Each function mirrors one rule: its own settings (as its params render them) and the
# lineages of its inputs. A setting that changes no result (calm.checkpoint_every,
# model.trust_pickle, threads) is in no lineage, as in no rule's params.


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def pretrained_lineage():
    return digest("pretrained", CFG.model.source, MODEL_FLAGS)


@functools.cache
def data_lineage(task):
    spec = {"custom": CFG.data.custom.get(task), "hf": CFG.data.hf.get(task)}
    return digest("data", render_flags(CFG.data, exclude=("tasks", "custom", "hf")),
                  {k: v.model_dump() for k, v in spec.items() if v is not None})


@functools.cache
def prepared_lineage(task):
    """The task's preprocessed inputs and head (rule prepare)."""
    head = finetuned_lineage(task) if CFG.model.heads_from_checkpoints else None
    return digest("prepare", pretrained_lineage(), data_lineage(task), head)


@functools.cache
def finetuned_lineage(task, rep=""):
    if CFG.model.finetuned:
        return digest("fetch_finetuned", pretrained_lineage(), CFG.model.finetuned[task], CFG.model.heads.get(task))
    return digest("finetune", finetune_flags(rep), pretrained_lineage(), prepared_lineage(task))


@functools.cache
def scores_lineage(task, rep=""):
    return digest("score", render_flags(CFG.score), finetuned_lineage(task, rep), prepared_lineage(task))


@functools.cache
def credible_lineage(sampler, ratio, task, seed, rep=""):
    return digest("select", sampler, f"{ratio:g}", seed, scores_lineage(task, rep))


def variant_credible_lineage(variant, task, rep=""):
    v = VARIANTS[variant]
    return credible_lineage(v.sampler, v.ratio, task, v.select_seed, rep)


@functools.cache
def base_lineage(variant, rep=""):
    v = VARIANTS[variant]
    return digest("calm_base", v.calm.efficient_lambda, [finetuned_lineage(t, rep) for t in v.efficient(TASKS)])


@functools.cache
def step_lineage(variant, k, rep=""):
    """The k-th sequential step's outputs (calm_step's): steps after it are not upstream, so
    appending a task to calm.sequential changes no earlier step's lineage."""
    before = base_lineage(variant, rep) if k == 1 else step_lineage(variant, k - 1, rep)
    visible = [(prepared_lineage(t), variant_credible_lineage(variant, t, rep)) for t in visible_tasks(variant, k)]
    return digest("calm_step", calm_flags(variant), before, finetuned_lineage(VARIANTS[variant].sequential[k - 1], rep),
                  visible, [prepared_lineage(t) for t in traced(variant)])


def variant_lineage(variant, rep=""):
    """The variant's merged model (calm_model's), θ0 plus its last step's task vector."""
    return digest("calm_model", pretrained_lineage(), step_lineage(variant, len(VARIANTS[variant].sequential), rep))


def analysis_lineage(variant):
    """The mask-analysis models of a variant's last step (rule mask_parts)."""
    n = len(VARIANTS[variant].sequential)
    before = base_lineage(variant) if n == 1 else step_lineage(variant, n - 1)
    return digest("mask_parts", pretrained_lineage(), before, step_lineage(variant, n),
                  finetuned_lineage(VARIANTS[variant].sequential[-1]))


@functools.cache
def baseline_lineage(method, rep=""):
    data = {"inputs": prepared_lineage, "head": prepared_lineage, "scores": lambda t: scores_lineage(t, rep)}
    return digest("merge_baseline", method, baseline_settings(SimpleNamespace(method=method, rep=rep)),
                  pretrained_lineage(), [finetuned_lineage(t, rep) for t in TASKS],
                  [data[need](t) for need in METHODS[method].needs for t in TASKS])


def checkpoints_lineage(method, rep=""):
    """What the checkpoints a method is evaluated with were computed from (see eval_models)."""
    if method == "individual":
        return [finetuned_lineage(t, rep) for t in TASKS]
    if method == "pretrained":
        return pretrained_lineage()
    if method == "calm":
        return variant_lineage("default", rep)
    if method.startswith("calm/"):
        _, variant, *part = method.split("/")
        if not part:
            return variant_lineage(variant, rep)
        if part[0] == "tau2":
            return finetuned_lineage(VARIANTS[variant].sequential[-1], rep)
        return analysis_lineage(variant)
    return baseline_lineage(method.removeprefix("baseline_"), rep)


EVALUATE_SETTINGS = render_flags(CFG.evaluate, exclude=("bootstrap", "seed"))


@functools.cache
def eval_lineage(method, rep=""):
    """A method's predictions (rule evaluate)."""
    return digest("evaluate", EVALUATE_SETTINGS, checkpoints_lineage(method, rep), [prepared_lineage(t) for t in TASKS])


@functools.cache
def ta_eval_lineage(rep=""):
    """The λ sweep's predictions (rule evaluate_task_arithmetic, one job for every λ)."""
    return digest("evaluate_task_arithmetic", EVALUATE_SETTINGS, list(ta_evals(rep)), pretrained_lineage(),
                  [finetuned_lineage(t, rep) for t in TASKS], [prepared_lineage(t) for t in TASKS])


def path_lineage(path):
    """The lineage of a predictions file, by its path (the tables read them by path)."""
    m = re.fullmatch(r"results(?P<rep>/seeds/seed-?[0-9]+)?/eval/(?P<method>.+)\.parquet", path)
    if m is None:
        raise ValueError(f"no lineage for '{path}'")
    rep, method = m.group("rep") or "", m.group("method")
    return ta_eval_lineage(rep) if method.startswith("task_arithmetic_lam") else eval_lineage(method, rep)


def table_lineage(rep=""):
    return digest("table", {name: path_lineage(path) for name, path in table_rows(rep).items()})


def points_lineage(points):
    """Of a sweep table: each predictions file it reads (other inputs, benchmark times, credible
    sets, step folders, are its record of how a setting ran, not a setting)."""
    return digest("points", [path_lineage(p) for p in paths(points) if "/eval/" in p])
