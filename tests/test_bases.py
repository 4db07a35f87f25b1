"""The bases sweep (`snakemake bases`): CALM over each base merge of S crossed with the merging
strategies, its table against each variant's own base and the best single-model method (numbers
worked out by hand), what the pico workflow plans for it (counted by hand), and a real run whose
interval against task arithmetic is the main table's own."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from calm import sweeps
from calm.config import Config
from calm.stages import ablations, bases
from pico_workflow import planned_jobs, snakemake


def small_config(**ablations_section) -> Config:
    return Config.model_validate({
        "data": {"tasks": ["a", "b", "c"]},
        "calm": {"sequential": ["c"]},
        "ablations": {"strategies": ["both", "only_m"], **ablations_section},
    })


def test_the_sweep_crosses_each_base_with_each_strategy_and_shares_the_points_it_already_has():
    variants, table = sweeps.plan(small_config(bases=["task_arithmetic", "tsv"], base_strategies=["both", "only_m"]))
    rows = table[table.ablation == "bases"].set_index(["base", "strategy"])["variant"]
    assert rows.to_dict() == {("task_arithmetic", "both"): "default", ("task_arithmetic", "only_m"): "strategy-only_m",
                              ("tsv", "both"): "base-tsv-both", ("tsv", "only_m"): "base-tsv-only_m"}
    tsv = variants["base-tsv-only_m"].calm
    assert (tsv.base, tsv.strategy) == ("tsv", "only_m")
    assert tsv.model_dump() == {**variants["default"].calm.model_dump(), "base": "tsv", "strategy": "only_m"}
    # every sweep's rows carry the base; the other sweeps keep the config's
    assert set(table[table.ablation != "bases"]["base"]) == {"task_arithmetic"}


def test_a_base_that_reads_data_or_gives_a_model_per_task_is_refused():
    for method in ("adamerging_task", "emr"):
        with pytest.raises(ValueError, match=f"ablations.bases '{method}' is not a merge of task vectors alone"):
            small_config(bases=["tsv", method])


def predictions(hits: int, n: int = 20) -> pd.DataFrame:
    """One task of n examples, the first `hits` right."""
    return pd.DataFrame({"task": "t", "idx": range(n), "label": 1, "pred": [1] * hits + [0] * (n - hits)})


def bases_runs(tmp_path) -> list[dict]:
    """Two seeds of 20 examples. Right answers, seed 0 / seed 1: CALM over TSV both 20 / 18, only M
    10 / 12 (TSV's own examples), TSV alone 10 / 12, RegMean 6 / 8."""
    runs = []
    for seed, hits in enumerate([{"both": 20, "only_m": 10, "tsv": 10, "regmean": 6},
                                 {"both": 18, "only_m": 12, "tsv": 12, "regmean": 8}]):
        paths = {}
        for name, h in hits.items():
            paths[name] = str(tmp_path / f"{name}{seed}.parquet")
            predictions(h).to_parquet(paths[name])
        runs.append({"seed": seed, "variants": [{"base": "tsv", "strategy": s, "path": paths[s]} for s in ("both", "only_m")],
                     "bases": {"tsv": {"label": "TSV-Merge", "path": paths["tsv"]}},
                     "methods": {"RegMean": paths["regmean"], "TSV-Merge": paths["tsv"]}})
    return runs


def test_the_bases_table_by_hand(tmp_path):
    """Averages: both 100, 90 (mean 95, s.d. √50); only M 50, 60 (55); TSV 50, 60 (55); RegMean
    30, 40 (35): the best single-model method is TSV-Merge. both − TSV: +50 and +30 points, mean
    +40, ten and six examples apart, so every resample is above zero; only M − TSV: the same
    examples right, exactly 0."""
    text = bases.bases_table(bases_runs(tmp_path), tmp_path / "bases", bootstrap=500, seed=0)
    table = pd.read_csv(tmp_path / "bases.csv").set_index("strategy")
    both, only_m = table.loc["both"], table.loc["only_m"]
    assert (both["accuracy"], both["accuracy s.d."]) == pytest.approx((95, 50 ** 0.5))
    assert (both["accuracy (seed 0)"], both["accuracy (seed 1)"]) == (100, 90)
    assert (both["base accuracy"], both["base accuracy s.d."]) == pytest.approx((55, 50 ** 0.5))
    assert both["best"] == "TSV-Merge" and both["best accuracy"] == pytest.approx(55)
    assert both["− base"] == pytest.approx(40) and 0 < both["− base low"] < 40 < both["− base high"]
    assert both["− best"] == pytest.approx(40) and bool(both["ahead of best"])
    assert (only_m["− base"], only_m["− base low"], only_m["− base high"]) == (0, 0, 0)
    assert not bool(only_m["ahead of best"])
    assert "| TSV-Merge | both (CALM) | 95.0 ± 7.1 | 55.0 ± 7.1 | +40.0 [" in text
    assert "interval against TSV-Merge above zero): CALM over TSV-Merge, both (CALM)" in text
    summary = json.loads((tmp_path / "bases.json").read_text())
    assert summary["best"] == "TSV-Merge" and summary["method averages"] == {"RegMean": 35.0, "TSV-Merge": 55.0}
    assert "precision" in summary["provenance"]
    assert (tmp_path / "bases.png").stat().st_size > 5000 and (tmp_path / "bases.pdf").exists()


def test_seeds_with_the_bases_sweep_write_the_bases_table_and_no_empty_sweep_table(tmp_path):
    ablations.seeds_ablations({"bases": bases_runs(tmp_path)}, tmp_path / "seeds", bootstrap=100, seed=0)
    assert pd.read_csv(tmp_path / "seeds_bases.csv")["seeds"].tolist() == [2, 2]
    assert not (tmp_path / "seeds_ablations.csv").exists()


def test_seeds_refuse_a_variant_missing_under_one_seed(tmp_path):
    runs = bases_runs(tmp_path)
    runs[1]["variants"] = runs[1]["variants"][:1]
    with pytest.raises(ValueError, match="seed 1 has other variants or methods than seed 0"):
        bases.bases_table(runs, tmp_path / "bases", bootstrap=10, seed=0)


def with_bases(work, name: str, bases: list[str], strategies: list[str]) -> str:
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["ablations"] = {**config.get("ablations", {}), "bases": bases, "base_strategies": strategies}
    (work / name).write_text(yaml.safe_dump(config))
    return str(work / name)


def test_the_pico_run_plans_one_calm_run_per_new_variant(pico_run):
    """Bases task arithmetic and WUDI (both in the pico run's table) × both and only M: task
    arithmetic with both is the default, finished; 3 new variants of one step each, their
    evaluations, the tidy sweep table and the bases table."""
    config = with_bases(pico_run, "bases-plan.yaml", ["task_arithmetic", "wudi"], ["both", "only_m"])
    out = snakemake(pico_run, "bases", "-n", "--configfile", config)
    assert planned_jobs(out.stdout + out.stderr) == {
        "calm_base": 3, "calm_step": 3, "calm_model": 3, "evaluate": 3, "ablation_accuracy": 1, "bases_table": 1,
        "bases": 1}
    # over one seed with replicates.ablations: the same CALM runs, and the seeds table reads them
    config = yaml.safe_load((pico_run / "bases-plan.yaml").read_text())
    config["replicates"] = {"seeds": 1, "ablations": ["bases"]}
    (pico_run / "bases-seeds.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(pico_run, "seeds", "-n", "--configfile", str(pico_run / "bases-seeds.yaml"))
    assert planned_jobs(out.stdout + out.stderr) == {
        "calm_base": 3, "calm_step": 3, "calm_model": 3, "evaluate": 3, "seeds": 1}
    assert "results/tables/seeds_bases.png" in out.stdout and "seeds_ablations.csv" not in out.stdout
    # the seeds table stays beside it (its prefix is seeds, not seeds_bases)
    assert "results/tables/seeds.md" in out.stdout and "seeds_bases_bases" not in out.stdout


def test_a_bases_run_of_the_default_alone_gives_the_main_tables_interval_against_task_arithmetic(pico_run, tmp_path):
    """With one seed the hierarchical bootstrap is the paired one with the same seed and resamples:
    CALM − task arithmetic (λ = 0.3) must be the main table's to the last digit."""
    work = tmp_path / "work"
    shutil.copytree(pico_run, work, symlinks=True)
    config = with_bases(work, "bases.yaml", ["task_arithmetic"], ["both"])
    snakemake(work, "bases", "--configfile", config)
    row = pd.read_csv(work / "results/ablations/bases_table.csv").iloc[0]
    main = json.loads((work / "results/tables/main.json").read_text())
    paired = next(c for c in main["comparisons"] if c["comparison"] == "CALM − Task arithmetic (λ=0.3)")
    assert (row["− base"], row["− base low"], row["− base high"]) == pytest.approx(
        (paired["difference"], paired["low"], paired["high"]), abs=1e-9)
    assert row["base_label"] == "Task arithmetic (λ=0.3)" and row["seeds"] == 1
    table = pd.read_csv(work / "results/tables/main.csv", index_col=0)
    single = table.drop(index=["Pretrained", "Individual", "CALM", "EMR-Merging (a model per task)"])
    single = single[~single.index.str.contains("oracle")]
    assert row["best"] == single["Avg"].idxmax() and row["best accuracy"] == pytest.approx(single["Avg"].max())
    assert pd.read_csv(work / "results/ablations/bases.csv")["base"].unique().tolist() == ["task_arithmetic"]
