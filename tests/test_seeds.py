"""The `seeds` target on the pico workflow: what a replicate plans (counted by hand), a real
two-seed run whose table equals what the two runs' own tables give, and the one-line refusal
when the fine-tuned models are fetched rather than made here."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from pico_workflow import WORDS, pico_config, planned_jobs, snakemake


def with_config(work, name: str, **sections) -> str:
    """A config file in `work`: the run's own with `sections` laid over it; returns its path."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = work / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_replicate_plans_the_pipeline_again_except_what_no_seed_changes(pico_run):
    """On the finished main run, a second seed adds one fine-tuning and scoring and one credible
    set per task (T = 3), its CALM chain (|S̄| = 1), the 9 of the pico run's 10 baselines that
    have a checkpoint (task arithmetic's row comes from the λ sweep), 11 evaluations (individual,
    CALM and those 9; the pretrained model's are the main run's), the λ sweep, its table, and the seeds table;
    no fetch, no prepare, and nothing of the main run. The replicates section leaves the
    default target as it was."""
    seeds = with_config(pico_run, "seeds2.yaml", replicates={"seeds": 2})
    out = snakemake(pico_run, "seeds", "-n", "-p", "--configfile", seeds)
    assert planned_jobs(out.stdout + out.stderr) == {
        "finetune": 3, "score": 3, "select": 3, "calm_base": 1, "calm_step": 1, "calm_model": 1,
        "merge_baseline": 9, "evaluate": 11, "evaluate_task_arithmetic": 1, "table": 1, "seeds": 1}
    assert "--seed 1 " in out.stdout and "results/seeds/seed1/models/finetuned/mood" in out.stdout
    out = snakemake(pico_run, "-n", "--configfile", seeds)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_sweeps_over_seeds_plan_each_seeds_variants(pico_run):
    """replicates.ablations [strategy, n_seq] on the finished main run, counted by hand: per seed 7
    variants beyond the default (only M, only 1 − M; |S̄| = 1 and 2 with 3 orders each, [mood]
    being the default: 5), with 2 + 8 CALM steps, and the two sweeps' tables; the second seed
    also its default merge and the rest of its pipeline, as above."""
    seeds = with_config(pico_run, "seeds2ab.yaml", replicates={"seeds": 2, "ablations": ["strategy", "n_seq"]})
    out = snakemake(pico_run, "seeds", "-n", "--configfile", seeds)
    assert planned_jobs(out.stdout + out.stderr) == {
        "finetune": 3, "score": 3, "select": 3, "calm_base": 7 + 8, "calm_step": 10 + 11, "calm_model": 7 + 8,
        "merge_baseline": 9, "evaluate": 7 + 11 + 7, "evaluate_task_arithmetic": 1, "table": 1,
        "ablation_accuracy": 2 * 2, "seeds": 1}


def test_seeds_table_of_two_seeds_is_the_mean_and_sd_of_their_tables(pico_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(pico_run, work, symlinks=True)
    seeds = with_config(work, "seeds.yaml", replicates={"seeds": 2}, baselines={"methods": ["ties"]})
    snakemake(work, "seeds", "--configfile", seeds)
    runs = [pd.read_csv(work / f"results{rep}/tables/main.csv", index_col=0) for rep in ("", "/seeds/seed1")]
    table = pd.read_csv(work / "results/tables/seeds.csv", index_col="method")
    assert list(table.index) == ["Pretrained", "Individual", "TIES", "CALM"]
    for column in [*WORDS, "Avg", "Norm. avg"]:
        a, b = (run.loc["CALM", column] for run in runs)
        assert table.loc["CALM", column] == pytest.approx((a + b) / 2)
        assert table.loc["CALM", f"{column} s.d."] == pytest.approx(abs(a - b) / 2 ** 0.5)
    # CALM − TIES: the mean of the two seeds' paired differences
    paired = [next(c["difference"] for c in json.loads((work / f"results{rep}/tables/main.json").read_text())
                   ["comparisons"] if c["comparison"] == "CALM − TIES") for rep in ("", "/seeds/seed1")]
    assert table.loc["TIES", "CALM − method"] == pytest.approx(sum(paired) / 2)
    # the replicate fine-tuned with the next seed: its models differ from the main run's
    main, replica = (work / f"results{rep}/models/finetuned/colour/model.safetensors" for rep in ("", "/seeds/seed1"))
    assert main.read_bytes() != replica.read_bytes()
    for ext in ("md", "json", "png", "pdf"):
        assert (work / f"results/tables/seeds.{ext}").stat().st_size > 100


def test_seeds_refuses_fetched_checkpoints_in_one_line(pico_model, tmp_path):
    config = pico_config(pico_model, tmp_path)
    config["model"]["finetuned"] = {t: str(tmp_path / t) for t in WORDS}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "seeds", "-n", check=False)
    assert out.returncode != 0
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: replicates (snakemake seeds) need fine-tuning done by the workflow, and "
                      "model.finetuned names fetched checkpoints: leave it empty to fine-tune here"]
