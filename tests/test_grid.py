"""A user's sweep grid (the config's `grid`): its rows checked before any job, one line per bad
row; rows that share settings share jobs; the tidy CSV and plot of `python -m calm grid`.
tests/test_slurm.py runs one on the cluster."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from calm.config import Config
from calm.config.files import ConfigError, check_config, validate_sweep_table
from pico_workflow import ROOT, SNAKEMAKE, pico_config, planned_jobs

GRID = ("sequential,ratio,lr\n" + "".join(f"{seq},{ratio},{lr}\n" for seq in ("mood", "animal>mood")
                                         for ratio in (0.5, 0.7, 0.9) for lr in ("1e6", "2e6")))


def grid_config(tmp_path, pico_model, grid: str) -> None:
    (tmp_path / "grid.csv").write_text(grid)
    config = pico_config(pico_model, tmp_path)
    config["grid"] = "grid.csv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def start(tmp_path, *targets):
    """A dry run of the targets: Snakemake starts, checks the config and plans the jobs."""
    return subprocess.run(SNAKEMAKE + [*targets, "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                                       "--configfile", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)


def test_a_grid_plans_one_variant_per_row_and_rows_share_jobs(tmp_path, pico_model):
    """3 ratios × |S̄| 1 or 2 × 2 mask lr on the pico tasks (colour, animal, mood), planned with
    the main run, counted by hand: a credible set per ratio and task (9, the main run's at 0.9
    among them), 12 variants (the row mood/0.9/1e6 is the main run's CALM: no job of its own),
    each with its base, model and evaluation, and 6 · 1 + 6 · 2 CALM steps."""
    grid_config(tmp_path, pico_model, GRID)
    proc = start(tmp_path, "all", "grid")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert {k: jobs[k] for k in ("select", "calm_base", "calm_step", "calm_model", "evaluate", "grid")} == {
        # evaluate: pretrained, individual, the pico run's 9 baselines with a checkpoint, the 12 variants
        "select": 9, "calm_base": 12, "calm_step": 18, "calm_model": 12, "evaluate": 2 + 9 + 12, "grid": 1}


def test_every_bad_row_is_one_error_line_before_any_job(tmp_path, pico_model):
    grid_config(tmp_path, pico_model, "ratio,sequential,lr\n0.5,mood,1e6\n1.5,mood,1e6\n0.5,mood>mood,1e6\n"
                                      "0.5,colour>animal>mood,1e6\n0.7,mood,-1\n")
    proc = start(tmp_path, "grid")
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == [
        "error: grid.csv: row 2 column 'ratio': expected less than or equal to 1, got '1.5'",
        "error: grid.csv: row 3: calm.sequential names a task twice: ['mood']",
        "error: grid.csv: row 4: calm.sequential has 3 tasks but data.tasks has 3: at least one task must be "
        "merged by task arithmetic (S may not be empty)",
        "error: grid.csv: row 5 column 'lr': expected greater than 0, got '-1'",
    ]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("header, expected", [
    ("ratoi", "column 'ratoi' is not a key of calm or select (allowed: calm.sequential, calm.efficient_lambda"),
    ("seed", "column 'seed' is a key of both calm and select: write calm.seed or select.seed"),
    ("model.source", "column 'model.source' is not a key of calm or select"),
])
def test_a_grid_column_names_one_key_of_calm_or_select(tmp_path, header, expected):
    table = tmp_path / "grid.tsv"
    table.write_text(f"{header}\n1\n")
    base = check_config({"data": {"tasks": ["a", "b"]}, "calm": {"sequential": ["b"]}})
    with pytest.raises(ConfigError) as info:
        validate_sweep_table(table, Config, base=base, sections=("calm", "select"))
    assert str(info.value).startswith(f"{table}: {expected}")
    table.write_text("calm.seed\tselect.seed\titerations\tsampler\n3\t4\t7\tems\n")
    assert validate_sweep_table(table, Config, base=base, sections=("calm", "select")) == [
        {"calm.seed": 3, "select.seed": 4, "calm.iterations": 7, "select.sampler": "ems"}]


ALLOWED = "(allowed: calm.sequential, calm.efficient_lambda, calm.base, calm.base_scale, calm.iterations, calm.batch_size, "


@pytest.mark.parametrize("name, text, expected", [
    # a duplicated column is named as written (pandas would read the second as 'lr.1')
    ("grid.csv", "lr,lr\n1e6,2e6\n", ["column 'lr' appears twice in the header"]),
    # a wrong separator: one unknown column, and the hint
    ("grid.csv", "lr;ratio\n1e6;0.9\n", ["column 'lr;ratio' is not a key of calm or select " + ALLOWED, "; the table "
                                         "is read as comma-separated (a .csv name), but its header is separated by semicolons"]),
    ("grid.tsv", "lr,ratio\n1e6,0.9\n", ["column 'lr,ratio' is not a key of calm or select " + ALLOWED, "; the table "
                                         "is read as tab-separated (not a .csv name), but its header is separated by commas"]),
    # a bad column hides no row error
    ("grid.csv", "lr,ratoi\n1e6,0.5\n-1,0.9\n", ["column 'ratoi' is not a key of calm or select " + ALLOWED,
                                                 "row 2 column 'lr': expected greater than 0, got '-1'"]),
    # which row a repeated row repeats; rows count from 1, the first below the header, in every message
    ("grid.csv", "lr,ratio\n1e6,0.9\n2e6,0.9\n1e6,0.9\n", ["row 3 repeats row 1"]),
    ("grid.csv", "lr,ratio\n1e6,0.9\n2e6,0.9,7\n", ["row 2 has 3 comma-separated values, the header 2 columns"]),
    ("grid.csv", 'lr,ratio\n1e6,0.9\n"2e6,0.9\n', ["row 2: not a readable comma-separated table: unexpected end of data"]),
])
def test_grid_messages_name_the_column_the_separator_and_the_rows(tmp_path, name, text, expected):
    table = tmp_path / name
    table.write_text(text)
    base = check_config({"data": {"tasks": ["a", "b"]}, "calm": {"sequential": ["b"]}})
    with pytest.raises(ConfigError) as info:
        validate_sweep_table(table, Config, base=base, sections=("calm", "select"))
    lines = str(info.value).splitlines()
    if expected[0].endswith(ALLOWED):  # the allowed keys, then the hint or the next line
        assert len(lines) == len(expected) - (expected[1].startswith(";"))
        assert lines[0].startswith(f"{table}: {expected[0]}")
        if expected[1].startswith(";"):
            assert lines[0].endswith(expected[1])
        else:
            assert lines[1] == f"{table}: {expected[1]}"
    else:
        assert lines == [f"{table}: {line}" for line in expected]


def test_the_grid_stage_writes_a_tidy_csv_and_a_plot(tmp_path):
    """Two rows' predictions on two tasks of 4 test examples each, accuracies by hand."""
    def predictions(name, correct):
        rows = [{"task": t, "idx": i, "label": 1, "pred": int(i < correct[t])} for t in ("a", "b") for i in range(4)]
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame(rows).to_parquet(path)
        return str(path)

    individual = predictions("individual", {"a": 4, "b": 2})
    points = [{"row": 1, "lr": 1e6, "sequential": "b", "variant": "v1", "path": predictions("v1", {"a": 3, "b": 1})},
              {"row": 2, "lr": 2e6, "sequential": "a>b", "variant": "v2", "path": predictions("v2", {"a": 4, "b": 2})}]
    subprocess.run([sys.executable, "-m", "calm", "grid", "--points", __import__("json").dumps(points),
                    "--keys", "lr", "sequential", "--individual", individual, "--out-prefix", str(tmp_path / "g")],
                   check=True, capture_output=True)
    frame = pd.read_csv(tmp_path / "g.csv")
    assert list(frame.columns) == ["row", "lr", "sequential", "variant", "task", "accuracy", "normalised"]
    assert frame["accuracy"].tolist() == [75.0, 25.0, 50.0, 100.0, 50.0, 75.0]
    assert frame["normalised"].tolist() == [75.0, 50.0, 62.5, 100.0, 100.0, 100.0]
    assert (tmp_path / "g.png").stat().st_size > 5000 and (tmp_path / "g.pdf").stat().st_size > 1000
