"""The Snakemake workflow end to end on a pico model and three tiny local tasks, plus lint,
the default config's dry run and the schema's agreement with the typed config."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from calm.config.files import json_schema
from conftest import same_tensors
from pico_workflow import MASK_ITERATIONS, PICO_METHODS, ROOT, SNAKEMAKE, WORDS, planned_jobs, snakemake

# the pico run's methods (pico_workflow.PICO_METHODS) in the registry's order, CALM last
MAIN_TABLE_ROWS = ["Pretrained", "Individual", "Task arithmetic (λ=0.3)", "best λ", "TIES", "Localize-and-Stitch",
                   "AdaMerging (task-wise)", "AdaMerging (layer-wise)", "Fisher", "RegMean", "WUDI-Merging",
                   "EMR-Merging (a model per task)", "AdaRank", "CALM"]


def test_end_to_end_writes_every_artefact(pico_run):
    work = pico_run
    table = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    rows = list(table.index)
    assert rows[3].startswith("Task arithmetic λ=") and rows[3].endswith("(best λ, oracle)")
    assert rows[:3] + rows[4:] == [r for r in MAIN_TABLE_ROWS if r != "best λ"]
    assert list(table.columns) == ["colour", "animal", "mood", "Avg", "Norm. avg"]
    assert table.loc["Individual", "Norm. avg"] == pytest.approx(100.0)
    # the averages are the means of the task columns
    assert (table[["colour", "animal", "mood"]].mean(axis=1) - table["Avg"]).abs().max() < 0.01
    step = work / "results/merge/calm/default/step1-mood"
    trace = pd.read_csv(step / "trace.csv")
    assert list(trace["iteration"]) == list(range(1, MASK_ITERATIONS + 1))
    assert {"loss", "active_fraction", "loss/colour", "loss/animal", "loss/mood"} <= set(trace.columns)
    summary = json.loads((step / "summary.json").read_text())
    assert summary["visible"] == ["colour", "animal", "mood"]
    # the merged model is a normal HF folder
    from transformers import AutoModel
    AutoModel.from_pretrained(work / "results/merge/calm/default/model")
    preds = pd.read_parquet(work / "results/eval/calm.parquet")
    assert set(preds["task"]) == set(WORDS) and {"idx", "label", "pred"} <= set(preds.columns)
    for folder in ("fetch_data", "finetune", "score", "merge", "evaluate"):
        assert any((work / "logs" / folder).iterdir())


def test_the_table_json_says_what_produced_it(pico_run):
    """The precision the evaluations ran in (this CPU's: bf16 only where torch computes it
    natively), the CPU, and the commit of this checkout."""
    import subprocess

    import torch
    made_by = json.loads((pico_run / "results/tables/main.json").read_text())["provenance"]
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert made_by["precision"] == ["bf16" if native else "fp32"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head and made_by["commit"].startswith(head)
    assert torch.__version__.startswith(made_by["torch"]) and made_by["transformers"] != "unknown"
    assert {r["torch"] for r in made_by["rows"].values()} == {torch.__version__}
    assert [m["device"] for m in made_by["machines"]] == ["cpu"] and made_by["machines"][0]["cpu"]
    # every predictions file the table read: the λ sweep's rows, which the table shows as their best
    table = set(pd.read_csv(pico_run / "results/tables/main.csv", index_col=0).index)
    best = {row for row in table if row.endswith(" (best λ, oracle)")}
    assert len(best) == 1
    assert set(made_by["rows"]) == (table - best) | {"Task arithmetic λ=0.3", "Task arithmetic λ=0.6"}
    step = json.loads((pico_run / "results/merge/calm/default/step1-mood/summary.json").read_text())
    assert step["compute"]["precision"] == made_by["precision"][0]


def test_every_baseline_writes_a_model_and_what_it_learned(pico_run):
    from transformers import AutoModel

    base = pico_run / "results/merge/baselines"
    for method in ("task_arithmetic", "ties", "localize_stitch", "adamerging_task", "adamerging_layer", "fisher",
                   "regmean", "wudi", "adarank"):
        AutoModel.from_pretrained(base / method / "model")
        summary = json.loads((base / method / "summary.json").read_text())
        assert summary["method"] == method
    layer = json.loads((base / "adamerging_layer/summary.json").read_text())
    assert set(layer["coefficients"]) == set(WORDS) and len(layer["trace"]) == 2
    assert all(0.0 <= c <= 1.0 for per_tensor in layer["coefficients"].values() for c in per_tensor.values())
    stitched = json.loads((base / "localize_stitch/summary.json").read_text())
    assert [t["task"] for t in stitched["localize"]] == list(WORDS)
    assert all(t["examples"] == 8 for t in stitched["localize"])
    assert json.loads((base / "fisher/summary.json").read_text())["examples"] == {t: 4 for t in WORDS}
    adarank = json.loads((base / "adarank/summary.json").read_text())
    assert adarank["base"] == "cart" and len(adarank["trace"]) == 2 and set(adarank["kept"]) == set(WORDS)
    assert all(0.0 <= k["kept_fraction"] <= 1.0 for k in adarank["kept"].values())
    regmean = json.loads((base / "regmean/summary.json").read_text())
    assert "encoder.layer.0.attention.self.query.weight" in regmean["closed_form_tensors"]


def test_emr_writes_a_checkpoint_per_task_that_each_task_is_evaluated_with(pico_run):
    """EMR is not one model: task t's checkpoint is θ0 + λ_t M_t ⊙ τ_uni, with τ_uni the elected
    vector (the sign of Σ τ, the largest agreeing |τ|) and M_t where τ_t agrees with it."""
    from calm.checkpoints import read_checkpoint_dir

    base, work = pico_run / "results/merge/baselines/emr", pico_run
    summary = json.loads((base / "summary.json").read_text())
    assert summary["extra_bits_per_parameter"] == pytest.approx(3, abs=1e-3)  # one mask bit per task
    theta0 = read_checkpoint_dir(work / "resources/models/pretrained")
    taus = {t: {n: w - theta0[n] for n, w in read_checkpoint_dir(work / f"results/models/finetuned/{t}").items()}
            for t in WORDS}
    name = "encoder.layer.0.attention.self.query.weight"
    stack = torch.stack([taus[t][name] for t in WORDS])
    sign = torch.where(stack.sum(0) > 0, 1.0, -1.0)
    unified = sign * torch.where(stack * sign > 0, stack.abs(), torch.zeros_like(stack)).amax(0)
    for i, t in enumerate(WORDS):
        mask = stack[i] * unified > 0
        expected = theta0[name] + summary["rescalers"][t] * mask * unified
        got = read_checkpoint_dir(base / "model" / t)[name]
        assert torch.allclose(got, expected, atol=1e-6)
    preds = pd.read_parquet(work / "results/eval/baseline_emr.parquet")
    assert list(preds["task"].unique()) == list(WORDS)


def test_the_lambda_sweep_predicts_what_the_merged_task_arithmetic_model_predicts(pico_run, tmp_path):
    """The sweep builds θ0 + λ Σ τ in memory; at the config's λ its predictions are those of
    the task arithmetic baseline's checkpoint, evaluated as any other model."""
    work = pico_run
    model = work / "results/merge/baselines/task_arithmetic/model"
    out = tmp_path / "ta.parquet"
    subprocess.run([sys.executable, "-m", "calm", "evaluate", "--pretrained", str(work / "resources/models/pretrained"),
                    "--model-max-length", "16", "--model-logit-scale", "10", "--device", "cpu", "--threads", "1",
                    "--models", *[f"{t}={model}" for t in WORDS],
                    "--inputs", *[f"{t}={work}/results/inputs/{t}.safetensors" for t in WORDS],
                    "--heads", *[f"{t}={work}/results/heads/{t}.safetensors" for t in WORDS],
                    "--batch-size", "16", "--out", str(out)], check=True, cwd=work)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(work / "results/eval/task_arithmetic_lam0.3.parquet"))
    swept = {lam: pd.read_parquet(work / f"results/eval/task_arithmetic_lam{lam}.parquet") for lam in ("0.3", "0.6")}
    assert list(swept["0.6"]["task"].unique()) == list(WORDS) and len(swept["0.6"]) == len(swept["0.3"])


def test_rerun_is_a_no_op(pico_run):
    out = snakemake(pico_run, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_changing_the_mask_lr_reruns_only_merge_evaluation_and_table(pico_run):
    work = pico_run
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["calm"]["lr"] = 2e6
    (work / "changed.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "-n", "--configfile", str(work / "changed.yaml"))
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs == {"calm_step": 1, "calm_model": 1, "evaluate": 1, "table": 1, "all": 1}


def test_another_calm_base_reruns_calm_from_its_base_with_that_methods_settings(pico_run):
    work = pico_run
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["calm"]["base"] = "ties"
    (work / "changed.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "-n", "-p", "--configfile", str(work / "changed.yaml"))
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs == {"calm_base": 1, "calm_step": 1, "calm_model": 1, "evaluate": 1, "table": 1, "all": 1}
    assert "--lam 0.3 --base ties --ties-k 0.2 --ties-lam 0.3 --ties-merge sum --models" in out.stdout


def test_a_val_split_adds_a_row_chosen_on_validation_per_scaled_baseline(pico_run, tmp_path):
    """Turning data.n_val on adds jobs and reruns none: the val splits are fetched and encoded
    on their own path, so the finished run's data, models and predictions stand. Run for real
    in a copy of the shared run: the table gains the rows, and its other rows stay as they were."""
    from calm.methods import validated_rows
    work = tmp_path / "run"
    shutil.copytree(pico_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["data"]["n_val"] = 6
    config["baselines"]["fisher_coefficient_draws"] = 4
    (work / "changed.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "-n", "-p", "--configfile", str(work / "changed.yaml"))
    jobs = planned_jobs(out.stdout + out.stderr)
    # of the pico run's methods: task arithmetic, TIES, WUDI (their scales) and Fisher (its
    # coefficients); CALM's twin whose task-arithmetic base takes the λ the val splits of S
    # (colour, animal) choose: one chain beside the default's, evaluated; the table and the
    # target again, as their inputs grew
    assert jobs == {"fetch_val": 3, "prepare_val": 3, "evaluate_validated": 4, "calm_base": 1, "calm_step": 1,
                    "calm_model": 1, "evaluate": 1, "table": 1, "all": 1}
    assert set(validated_rows()) & set(PICO_METHODS) == {"task_arithmetic", "ties", "fisher", "wudi"}
    text = out.stdout
    assert "--n-val 6" in text and "fetch-data" not in text
    # TIES' k is chosen too (baselines.ties_k_grid): a merge per k from the fine-tuned models
    assert re.search(r"--method ties --models (results/models/finetuned/\w+ ){3}--option-grid 0.1,0.2,0.3 "
                     r"--ties-k 0.2 --ties-lam 0.3 --ties-merge sum --scale 0.3 --grid 0.3,0.6 ", text)
    assert "--model results/merge/baselines/wudi/model --scale 1.0 --grid 0.6,0.8,1,1.2,1.4 " in text
    # Fisher's coefficients: 4 draws, its Fishers from the pools' pseudo-labels, no scale
    assert re.search(r"--method fisher --models (results/models/finetuned/\w+ ){3}--option-draws 4 "
                     r"--scores colour=results/scores/colour.parquet \S+ \S+ --fisher-n-examples 4 "
                     r"--fisher-epsilon 1e-06 --fisher-seed 0 --scale 1.0 --grid 1 ", text)
    assert "--val-inputs colour=results/inputs/val/colour.safetensors " in text
    assert shlex.quote("TIES (chosen on validation)=results/eval/validated/ties.parquet") in text
    assert ("--lam 0.3 --val colour=results/inputs/val/colour.safetensors,results/heads/colour.safetensors "
            "animal=results/inputs/val/animal.safetensors,results/heads/animal.safetensors --grid 0.3,0.6 "
            "--batch-size 16 --models") in text
    assert shlex.quote("CALM (chosen on validation)=results/eval/calm/base-on-validation.parquet") in text

    before = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    calm_preds = (work / "results/eval/calm.parquet").stat().st_mtime_ns
    snakemake(work, "--configfile", str(work / "changed.yaml"))
    after = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    added = ["Task arithmetic (chosen on validation)", "TIES (chosen on validation)",
             "Fisher (chosen on validation)", "WUDI-Merging (chosen on validation)", "CALM (chosen on validation)"]
    assert sorted(set(after.index) - set(before.index)) == sorted(added) and set(before.index) <= set(after.index)
    pd.testing.assert_frame_equal(after.drop(index=added), before)
    assert (work / "results/eval/calm.parquet").stat().st_mtime_ns == calm_preds
    curve = json.loads((work / "results/eval/validated/ties.json").read_text())
    assert curve["val_examples"] == {t: 6 for t in WORDS} and curve["chosen"] in (0.3, 0.6)
    assert curve["option"] == "k" and curve["chosen_option"] in (0.1, 0.2, 0.3) and len(curve["val_accuracy"]) == 6
    fisher = json.loads((work / "results/eval/validated/fisher.json").read_text())
    draws = [r["coefficients"] for r in fisher["val_accuracy"]]
    assert len(draws) == 4 and draws[0] == [1 / 3] * 3 and fisher["examples"] == {t: 4 for t in WORDS}
    assert list(fisher["chosen_option"]) == list(WORDS) and list(fisher["chosen_option"].values()) in draws


def test_changing_one_baseline_setting_reruns_only_the_methods_that_read_it(pico_run):
    work = pico_run
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["baselines"]["adamerging"]["steps"] = 3  # read by both AdaMergings
    (work / "changed.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(work, "-n", "--configfile", str(work / "changed.yaml"))
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs == {"merge_baseline": 2, "evaluate": 2, "table": 1, "all": 1}


# The paper items that read the main run (Table 8 also the order sweep's CALM steps).
PAPER_FROM_MAIN_RUN = ["paper_table1_main", "paper_table8_runtime", "paper_fig3_normalised",
                       "paper_fig9_entropy", "paper_fig12_active_fraction"]


def test_paper_items_and_the_report(pico_run, tmp_path):
    """On a copy of the main run, with an order sweep of |S̄| = 1 over 2 orders: [mood] (the
    main run's) and [colour] (one new CALM step)."""
    work = tmp_path / "work"
    shutil.copytree(pico_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["ablations"] = {"n_seq": [1], "orders": 2}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(work, *PAPER_FROM_MAIN_RUN)
    tables, figures = work / "results/paper/tables", work / "results/paper/figures"
    main = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    md = (tables / "table1_main.md").read_text()
    assert md.splitlines()[0] == "| Method | colour | animal | mood | Avg | Norm. avg |"
    assert f"| Individual | {main.loc['Individual', 'colour']:.1f} |" in md
    assert (tables / "table1_main.tex").read_text().startswith(r"\begin{tabular}{lrrrrr}")
    runtime = pd.read_csv(tables / "table8_runtime.csv", index_col=0)
    mood, colour = (pd.read_csv(work / f"benchmarks/rules/merge/calm/{v}/step1-{t}.tsv", sep="\t")["s"].mean()
                    for v, t in (("default", "mood"), ("nseq1-o1", "colour")))
    assert runtime["Run time (s)"].iloc[0] == pytest.approx(mood, abs=1e-3)
    assert runtime["Iterations"].iloc[0] == MASK_ITERATIONS
    sweep = runtime.loc["CALM, |S̄| = 1 (mean of 2 orders)"]
    assert sweep["Run time (s)"] == pytest.approx((mood + colour) / 2, abs=1e-3)
    assert sweep["s.d. over runs (s)"] == pytest.approx(abs(mood - colour) / 2 ** 0.5, abs=1e-3)
    assert sweep["Runs"] == 2 and sweep["Iterations"] == MASK_ITERATIONS
    for name in ("fig3_normalised", "fig9_entropy", "fig12_active_fraction"):
        assert (figures / f"{name}.png").stat().st_size > 5000 and (figures / f"{name}.pdf").stat().st_size > 1000
    report = tmp_path / "report.html"
    snakemake(work, "--report", str(report), "all", *PAPER_FROM_MAIN_RUN)
    text = report.read_text()
    assert "fig3_normalised.png" in text and "table1_main.html" in text and "main.json" in text


def test_ablations_dry_run_reuses_the_default_merge(pico_run):
    """The pico config's default sweeps (T = 3, S̄ = [mood]), counted by hand: 51 variants —
    default; 21 of the 24 sampler points (cb_ems 0.9 is the default, EMS and random at ratio 1
    are CB-EMS at ratio 1); 2 more seeds of each of the 4 samplers at select.ratio 0.9 (8, of
    which supervised and random draw 2 · 2 new credible sets per task); |S̄| = 1, 2 with 3 orders
    each, the order [mood] being the default (5 new, 1·2 + 2·3 = 8 steps); lr 4, α 3, switches
    3, strategy 2 (the rest are the default); mask iterations 20, 50, 100 (3: the pico config
    runs 30); the mask analysis of mood alone is the default; the traced variant. Already built by the main run: the default merge, its credible sets and
    the pretrained/individual predictions."""
    out = snakemake(pico_run, "ablations", "-n")
    jobs = planned_jobs(out.stdout + out.stderr)
    steps = 21 + 8 + 8 + 4 + 3 + 3 + 2 + 3 + 1
    assert jobs == {
        "select": 4 * 6 * 3 - 3, "select_seeded": 2 * 2 * 3, "calm_base": 50, "calm_step": steps, "calm_model": 49,
        "evaluate": 49 + 4,  # 49 merged models, 4 mask-analysis models
        "mask_parts": 1, "ablation_accuracy": 7, "ablation_pseudo_labels": 1, "ablation_mask_analysis": 1,
        "ablation_topk": 1, "ablation_layers": 1, "ablation_trace": 1, "ablations": 1,
    }


def test_appending_a_task_merges_only_it_and_equals_a_fresh_merge(pico_run, tmp_path):
    """Incremental merging: a new task appended to data.tasks and calm.sequential reruns one CALM
    step on the finished merge; the result is bitwise what `python -m calm calm-step` gives by hand
    on the same step 1, and so the merge from scratch over the same order."""
    from safetensors.torch import load_file

    from calm.flags import render_flags
    from calm.config import CALM_BASE_FIELDS, CalmConfig

    work = tmp_path / "work"
    shutil.copytree(pico_run, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    pd.DataFrame({"sentence": [f"{w} {w} shape {i}" for i, w in enumerate(["round", "square"] * 30)],
                  "y": ["circle", "box"] * 30}).to_csv(work / "shape.csv", index=False)
    config["data"]["custom"]["shape"] = {"path": str(work / "shape.csv"), "text_column": "sentence",
                                         "label_column": "y", "classes": ["circle", "box"]}
    config["data"]["tasks"].append("shape")
    config["calm"]["sequential"].append("shape")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/merge/calm/default/step2-shape/tau.safetensors"
    step1, step2 = work / "results/merge/calm/default/step1-mood", (work / target).parent
    out = snakemake(work, target)
    assert planned_jobs(out.stdout + out.stderr) == {"fetch_data": 1, "prepare": 1, "finetune": 1, "score": 1,
                                                      "select": 1, "calm_step": 1}
    incremental = {f: load_file(str(step2 / f)) for f in ("tau.safetensors", "mask.safetensors")}

    by_hand = tmp_path / "by_hand"
    visible = [f"{t}=results/inputs/{t}.safetensors,results/heads/{t}.safetensors,"
               f"results/credible/cb_ems-0.9/{t}.parquet" for t in ["colour", "animal", "mood", "shape"]]
    cfg = CalmConfig(**config["calm"])
    subprocess.run([sys.executable, "-m", "calm", "calm-step", "--pretrained", "resources/models/pretrained",
                    "--model-max-length", "16", "--model-logit-scale", "10.0", "--device", "cpu", "--threads", "1",
                    "--tau-prev", str(step1 / "tau.safetensors"), "--model", "results/models/finetuned/shape",
                    "--visible", *visible, "--step", "2", "--out", str(by_hand),
                    *render_flags(cfg, exclude=("sequential", "efficient_lambda", *CALM_BASE_FIELDS)).split()],
                   check=True, cwd=work, capture_output=True)

    # The merge from scratch over the same order is that same step on the same step 1: the step
    # before the new task kept its lineage (it is not among the jobs above), and a step is
    # bitwise repeatable (test_a_changed_setting_survives_its_step_killed_and_make_resume_recomputes_it).
    for f, tensors in incremental.items():
        other = load_file(str(by_hand / f))
        assert tensors.keys() == other.keys()
        assert all(torch.equal(tensors[k], other[k]) for k in tensors), f


def test_each_stage_runs_by_hand_on_the_previous_stage_files(pico_run, tmp_path):
    work = pico_run
    out = tmp_path / "credible.parquet"
    subprocess.run([sys.executable, "-m", "calm", "select", "--scores", str(work / "results/scores/colour.parquet"),
                    "--out", str(out), "--sampler", "ems", "--ratio", "0.5"], check=True)
    chosen = pd.read_parquet(out)
    scores = pd.read_parquet(work / "results/scores/colour.parquet")
    assert len(chosen) == len(scores) // 2
    assert chosen["entropy"].max() <= scores["entropy"].sort_values().iloc[len(scores) // 2]


def test_lint_is_clean():
    proc = subprocess.run(SNAKEMAKE + ["--lint"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def top_level_blocks(text: str) -> dict[str, str]:
    """Name -> text of each top-level definition (def, class, assignment, wildcard_constraints);
    a multiple assignment goes by its first name."""
    blocks, name = {}, None
    for line in text.splitlines():
        m = re.match(r"(?:def |class )(\w+)|(\w+)(?:, \w+)* =[^=]|(wildcard_constraints):", line)
        if m:
            name = next(g for g in m.groups() if g)
        elif line and not line[0].isspace() and not line.startswith((")", "]", "}")):
            name = None
        if name:
            blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


def shared_helper_users(rules: Path) -> dict[str, set[str]]:
    """Each name common.smk defines -> the parts of the workflow that use it: a rule file with
    its helpers (rules/X.smk and rules/helpers/X.smk), the Snakefiles, or, through another
    name of common.smk, that name's users; the wildcard constraints serve every part."""
    def read(*paths: Path) -> str:
        return "".join(p.read_text() for p in paths if p.is_file())

    shared = ("common.smk", "lineage.smk")  # lineage.smk: common.smk's lineage functions, in a file of their own
    parts = {f.stem: read(f, rules / "helpers" / f.name) for f in rules.glob("*.smk") if f.name not in shared}
    parts["Snakefile"] = read(rules.parents[1] / "Snakefile", rules.parent / "Snakefile")
    blocks = top_level_blocks(read(*(rules / name for name in shared)))
    users = {n: {p for p, text in parts.items() if re.search(rf"\b{n}\b", text)} for n in blocks}
    users["wildcard_constraints"] = set(parts)
    for _ in blocks:  # to a fixed point: a name another shared name uses serves that name's users
        for n in blocks:
            for m, text in blocks.items():
                if m != n and re.search(rf"\b{n}\b", text):
                    users[n] |= users[m]
    return users


def test_common_smk_holds_only_what_two_or_more_rule_files_use():
    users = shared_helper_users(ROOT / "workflow" / "rules")
    # the reader sees known uses, so that an empty list below means something
    assert {"merge", "evaluate", "ablations", "paper"} <= users["job_resources"]
    assert users["VARIANTS"] == users["wildcard_constraints"]
    lonely = {n: sorted(u) for n, u in users.items() if len(u) < 2}
    assert not lonely, f"common.smk defines helpers that one part alone uses; move each to workflow/rules/helpers/<its part>.smk: {lonely}"


def test_default_config_dry_run_plans_the_whole_pipeline(tmp_path):
    proc = subprocess.run(SNAKEMAKE + ["-n", "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                                       "--configfile", str(ROOT / "config/config.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["finetune"] == 6 and jobs["score"] == 6 and jobs["select"] == 6
    assert jobs["evaluate_task_arithmetic"] == 1  # all 9 λ values
    # every registry method but AdaRank (calm.methods: in_default), task arithmetic at λ = 0.3 included
    assert jobs["merge_baseline"] == 16
    # pretrained, individual, CALM, 15 baselines, and CALM with its base's λ chosen on validation
    assert jobs["evaluate"] == 19
    # data.n_val: 100: each task's val split fetched and encoded on its own path; a row chosen on
    # validation for each of the 9 scaled baselines (task arithmetic, TIES, Consensus TA/TIES,
    # TSV-M, Iso-C, Iso-CTS, WUDI, CART) and for Fisher's coefficients; CALM's twin with the chain
    # of mask steps of its own
    assert jobs["fetch_val"] == jobs["prepare_val"] == 6 and jobs["evaluate_validated"] == 10
    assert jobs["calm_base"] == 2 and jobs["calm_step"] == 4 and jobs["calm_model"] == 2
    # `baselines`: AdaRank too, and the table over every method
    proc = subprocess.run(SNAKEMAKE + ["baselines", "-n", "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                                       "--configfile", str(ROOT / "config/config.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    jobs = planned_jobs(proc.stdout + proc.stderr)
    # task arithmetic's own model (λ = 0.3), which its row chosen on validation rescales, is merged
    # here too: `all` asks for it anyway
    assert jobs["merge_baseline"] == 17 and jobs["evaluate"] == 20 and jobs["table"] == 1
    assert "results/tables/baselines.csv" in proc.stdout and "baseline_adarank.parquet" in proc.stdout


def dry_run_methods(tmp_path, methods):
    """The default config with baselines.methods set, dry-run with its shell commands: (config, proc)."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["baselines"]["methods"] = methods
    (tmp_path / "methods.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(SNAKEMAKE + ["-n", "-p", "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                                       "--configfile", str(tmp_path / "methods.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return config, proc


def test_cart_on_validation_rescales_from_weight_averagings_model_even_when_the_table_leaves_it_out(tmp_path):
    """CART is affine in λ: its row chosen on validation reads weight averaging's model, its λ = 0,
    which is merged for it when baselines.methods names CART alone."""
    _, proc = dry_run_methods(tmp_path, ["cart"])
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["merge_baseline"] == 2 and jobs["evaluate_validated"] == 1
    assert ("--model results/merge/baselines/cart/model --origin results/merge/baselines/weight_averaging/model "
            "--scale 2.0 --grid 1,1.5,2,2.5,3 ") in proc.stdout
    assert shlex.quote("CART (chosen on validation)=results/eval/validated/cart.parquet") in proc.stdout
    assert "baseline_weight_averaging.parquet" not in proc.stdout  # merged, not a row of the table


def test_consensus_on_validation_chooses_each_tasks_tall_lambda_from_the_finetuned_models(tmp_path):
    """The default's tall_lambda_grid: Consensus TA's row chosen on validation merges anew from the
    six fine-tuned models, in the order of its val splits' tasks, with λ_t's grid beside λ's."""
    config, proc = dry_run_methods(tmp_path, ["consensus_ta"])
    assert planned_jobs(proc.stdout + proc.stderr)["evaluate_validated"] == 1
    tasks = config["data"]["tasks"]
    models = " ".join(f"results/models/finetuned/{t}" for t in tasks)
    assert (f"--method consensus_ta --models {models} --option-grid 0.2,0.3,0.4,0.5,0.6 --consensus-tall-lambda 0.4 "
            "--consensus-min-tasks 2 --consensus-lam 0.3 --scale 0.3 --grid 0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 ") \
        in proc.stdout
    assert "--val-inputs " + " ".join(f"{t}=results/inputs/val/{t}.safetensors" for t in tasks) in proc.stdout


def test_the_baseline_wildcard_accepts_exactly_the_registry_names(tmp_path):
    from calm.methods import METHODS

    def dry_run(*targets):
        return subprocess.run(SNAKEMAKE + [*targets, "-n", "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                                           "--configfile", str(ROOT / "config/config.yaml")],
                              capture_output=True, text=True, cwd=ROOT)

    proc = dry_run(*[f"results/merge/baselines/{m}/summary.json" for m in METHODS])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert planned_jobs(proc.stdout + proc.stderr)["merge_baseline"] == len(METHODS)
    proc = dry_run("results/merge/baselines/dare/summary.json")
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr


@pytest.mark.skipif(not (ROOT / "workflow/rules/ablations.smk").exists(),
                    reason="the ablation sweeps the paper items read are not in this tree")
def test_paper_target_plans_every_item_and_the_sweeps_they_read(tmp_path):
    from calm.paper.registry import ITEMS
    proc = subprocess.run(SNAKEMAKE + ["paper", "-n", "--directory", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                                       "--configfile", str(ROOT / "config/config.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert {f"paper_{name}" for name in ITEMS} <= {rule for rule, n in jobs.items() if n == 1}
    assert any(rule.startswith("ablation") for rule in jobs)


def test_schema_file_is_generated_from_the_typed_config():
    committed = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "run: python -m calm schema --out workflow/schemas/config.schema.yaml"


def test_every_stage_has_help(capsys):
    from calm.cli import build_parser
    parser = build_parser()
    stages = parser._subparsers._group_actions[0].choices
    top = subprocess.run([sys.executable, "-m", "calm", "--help"], capture_output=True, text=True)
    assert top.returncode == 0, top.stderr[-500:]
    assert all(name in top.stdout for name in stages), "python -m calm --help lists every stage"
    # each stage's help in this process: an interpreter per stage cost a minute
    for name in stages:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out, name


def test_changing_checkpoint_every_reruns_nothing(pico_run):
    config = yaml.safe_load((pico_run / "config.yaml").read_text())
    config["calm"]["checkpoint_every"] = 7
    (pico_run / "checkpointing.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(pico_run, "-n", "--configfile", str(pico_run / "checkpointing.yaml"))
    assert "Nothing to be done" in out.stdout + out.stderr


def step_process(work: Path) -> int | None:
    """The pid of the `python -m calm calm-step` job running in `work`, if any."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"calm-step" in cmd and b"-m" in cmd and (proc / "cwd").resolve() == work:
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def test_a_changed_setting_survives_its_step_killed_and_make_resume_recomputes_it(pico_run, tmp_path):
    """The user's case: on a finished run, set calm.lr and run; the CALM step's python is killed
    (kill -9, as the OOM killer would) after its first mask checkpoint, so Snakemake deletes its
    outputs, and with them the record that lr changed. `make resume` then recomputes the step (from
    that checkpoint), the CALM model, its evaluation and the table with the new lr, bit for bit as a
    run that was never interrupted (before: "Nothing to be done", the old lr's model and table
    standing). A kill of Snakemake itself, which leaves its lock: tests/test_make.py."""
    import os
    import signal
    import time

    from test_make import make

    work, reference = (tmp_path / "work", tmp_path / "reference")
    for folder in (work, reference):
        shutil.copytree(pico_run, folder, symlinks=True)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["calm"]["lr"] = 3e6
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for name in ("Makefile", "Snakefile", "workflow", "profiles", "requirements.txt", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    step = Path("results/merge/calm/default/step1-mood")
    checkpoint = work / "results/merge/calm/default/step1-mood.resume.pt"
    run = subprocess.Popen(SNAKEMAKE + ["--cores", "2", "--configfile", "config.yaml"], cwd=work,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not checkpoint.exists() or (pid := step_process(work.resolve())) is None:
        assert run.poll() is None, "the run ended before the mask loop's first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    assert run.wait() != 0
    assert not (work / step / "tau.safetensors").exists(), "Snakemake removed the failed step's outputs"

    proc = make(work, "resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the step went on from its last mask checkpoint, which it removes once its outputs are in place
    log = (work / "logs/merge/calm/default/step1-mood.log").read_text()
    resumed = re.search(r"resuming the mask optimisation from \S+ after iteration (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) < MASK_ITERATIONS, log[-2000:]
    assert not checkpoint.exists()
    snakemake(reference)
    assert json.loads((work / step / "summary.json").read_text())["settings"]["lr"] == 3e6
    assert (work / step / "tau.safetensors").read_bytes() == (reference / step / "tau.safetensors").read_bytes()
    assert same_tensors(work / step / "mask.safetensors", reference / step / "mask.safetensors")
    trace, uninterrupted = (pd.read_csv(w / step / "trace.csv").drop(columns="seconds") for w in (work, reference))
    pd.testing.assert_frame_equal(trace, uninterrupted)
    assert not list(work.glob("results/**/.*.tmp")), "no temporary left behind"
    pd.testing.assert_frame_equal(pd.read_parquet(work / "results/eval/calm.parquet"),
                                  pd.read_parquet(reference / "results/eval/calm.parquet"))
    assert (work / "results/tables/main.csv").read_text() == (reference / "results/tables/main.csv").read_text()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, "-n"))
