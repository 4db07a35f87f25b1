"""A bad config, config file or sweep table is one clear line naming the file, the key (or row
and column) and what was expected, before any job runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calm.config import CalmConfig, Config, SelectConfig
from calm.config.files import ConfigError, check_config, load_config, validate_sweep_table

ROOT = Path(__file__).resolve().parents[1]


def base_config(**sections) -> dict:
    cfg = {"data": {"tasks": ["a", "b", "c"]}, "calm": {"sequential": ["c"]}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def config_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(cfg, "my.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("my.yaml: ")
    return message


# --- config -----------------------------------------------------------------------------------

def test_base_config_is_valid():
    assert check_config(base_config(), "my.yaml").efficient_tasks == ["a", "b"]


@pytest.mark.parametrize("cfg, expected", [
    (base_config(colour="red"), "colour: unknown key (allowed: device, threads, precision, model, data,"),
    (base_config(calm={"lr_typo": 1.0}), "calm.lr_typo: unknown key (allowed: sequential, efficient_lambda,"),
    (base_config(threads="two"), "threads: expected a valid integer"),
    (base_config(calm={"base": "fisher"}), "calm.base 'fisher' is not a merge of task vectors alone into one model"),
    (base_config(calm={"base_scale": "validation"}),
     "calm.base_scale: validation chooses the base's scale on the val splits; set data.n_val > 0"),
    (base_config(data={"n_val": 10}, calm={"base_scale": "validation", "base": "weight_averaging"}),
     "calm.base_scale: validation needs a base with a scale; calm.base 'weight_averaging' has none (allowed: "
     "task_arithmetic, ties,"),
    (base_config(data={"n_val": 10}, calm={"base_scale": "validation"}, ablations={"bases": ["tsv", "weight_averaging"]}),
     "calm.base_scale: validation needs a base with a scale; ablations.bases 'weight_averaging' has none"),
    (base_config(data={"n_val": 10, "hf": {"c": {"source": "hf:x"}}}),
     "data.n_val: the validation split is drawn from built-in and custom tasks' rows; the data.hf tasks ['c']"),
    (base_config(data={"tasks": "a"}), "data.tasks: expected a valid list, got 'a'"),
    (base_config(select={"ratio": 0}), "select.ratio: expected a value greater than 0, got 0"),
    (base_config(select={"ratio": 1.5}), "select.ratio: expected a value less than or equal to 1, got 1.5"),
    (base_config(calm={"lr": -1e7}), "calm.lr: expected a value greater than 0, got -10000000.0"),
    (base_config(finetune={"lr": 0}), "finetune.lr: expected a value greater than 0, got 0"),
    (base_config(calm={"iterations": 0}), "calm.iterations: expected a value greater than 0, got 0"),
    (base_config(calm={"checkpoint_every": -1}), "calm.checkpoint_every: expected a value greater than or equal to 0"),
    (base_config(calm={"sequential": ["z"]}), "calm.sequential names 'z', which is not in data.tasks ['a', 'b', 'c']"),
    (base_config(calm={"sequential": ["c", "c"]}), "calm.sequential names a task twice: ['c']"),
    (base_config(calm={"sequential": ["a", "b", "c"]}), "calm.sequential has 3 tasks but data.tasks has 3"),
    (base_config(data={"tasks": ["a", "b", "a"]}), "data.tasks names a task twice: ['a']"),
    ({"data": {"tasks": ["a", "b"]}}, "calm: required key is missing"),
    (base_config(replicates={"seeds": 0}), "replicates.seeds: expected a value greater than or equal to 1, got 0"),
    (base_config(replicates={"ablations": ["lr"]}), "replicates.ablations[0]: expected 'strategy', 'n_seq' or 'bases', got 'lr'"),
    (base_config(replicates={"ablations": ["n_seq", "n_seq"]}), "replicates.ablations names a sweep twice"),
    (base_config(data={"custom": {"x": {"path": "x.csv", "classes": ["p", "q"], "labels": 1}}}),
     "data.custom.x.labels: unknown key (allowed: path, text_column, label_column, classes, prompt)"),
    # n_test below a task's classes: said when the config is read, not after the data jobs as a
    # split "too few rows" for a task that has plenty
    (base_config(data={"n_test": 2, "custom": {"a": {"path": "a.csv", "classes": ["p", "q", "r"]}}}),
     "data.n_test 2 is below the 3 classes of task 'a': the class-balanced test split takes n_test // 3 = 0 rows "
     "of each class"),
    (base_config(data={"tasks": ["ng20", "r8"], "n_test": 10}, calm={"sequential": ["r8"]}),
     "data.n_test 10 is below the 20 classes of task 'ng20'"),
])
def test_bad_config_is_one_line_naming_the_key(cfg, expected):
    assert expected in config_error(cfg)


def test_every_error_of_a_config_is_on_the_one_line():
    message = config_error(base_config(calm={"lr": -1, "iterations": 0}))
    assert "calm.iterations: expected" in message and "; calm.lr: expected" in message


def test_yaml_syntax_error_and_empty_file_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  tasks: [a, b\ncalm: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ not valid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the config is empty"):
        load_config(empty)
    with pytest.raises(ConfigError, match="nothere.yaml: no such config file"):
        load_config(tmp_path / "nothere.yaml")


def test_cli_validate_prints_one_line_and_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base_config(select={"ratio": 2})))
    proc = subprocess.run([sys.executable, "-m", "calm", "validate", "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: select.ratio: expected a value less than or equal to 1, got 2"]


def test_cli_flags_out_of_range_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "calm", "calm-step", "--pretrained", str(tmp_path),
                           "--tau-prev", "x", "--model", "y", "--visible", "t=a,b,c", "--out", str(tmp_path / "o"),
                           "--lr", "-5"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: CalmConfig (command-line flags): lr: expected a value greater than 0, got -5.0")


def test_workflow_start_rejects_a_bad_config_in_one_line_before_any_job(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base_config(calm={"sequential": ["c", "d"]})))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'config.yaml'}: calm.sequential names 'd', which is not in "
                      "data.tasks ['a', 'b', 'c']"]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


# --- sweep tables -----------------------------------------------------------------------------

def write_tsv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_sweep_table_rows_come_back_typed(tmp_path):
    table = write_tsv(tmp_path / "s.tsv", "sampler\tratio\ncb_ems\t0.5\nems\t1\n")
    assert validate_sweep_table(table, SelectConfig) == [{"sampler": "cb_ems", "ratio": 0.5},
                                                         {"sampler": "ems", "ratio": 1.0}]
    nested = write_tsv(tmp_path / "n.tsv", "calm.lr\tselect.ratio\n1e7\t0.8\n")
    assert validate_sweep_table(nested, Config) == [{"calm.lr": 1e7, "select.ratio": 0.8}]


@pytest.mark.parametrize("text, expected", [
    ("sampler\tratoi\ncb_ems\t0.5\n", "column 'ratoi' is not a key of select (allowed: sampler, ratio, seed)"),
    ("sampler\tratio\ncb_ems\t0.5\ncb_ems\t1.5\n", "row 2 column 'ratio': expected less than or equal to 1, got '1.5'"),
    ("sampler\tratio\nbest\t0.5\n", "row 1 column 'sampler': expected 'cb_ems', 'ems', 'supervised' or 'random', got 'best'"),
    ("sampler\tratio\ncb_ems\thalf\n", "row 1 column 'ratio': expected a valid number"),
    ("sampler\tratio\ncb_ems\t\n", "row 1 column 'ratio' is empty"),
    ("sampler\tratio\nems\t0.5\nems\t0.5\n", "row 2 repeats row 1"),
    ("sampler\tratio\n", "the sweep table has no rows"),
])
def test_bad_sweep_table_is_one_line_naming_file_row_and_column(tmp_path, text, expected):
    table = write_tsv(tmp_path / "sweep.tsv", text)
    with pytest.raises(ConfigError) as info:
        validate_sweep_table(table, SelectConfig)
    assert str(info.value) == f"{table}: {expected}" or str(info.value).startswith(f"{table}: {expected}")


def test_sweep_table_rows_are_checked_against_the_config_section(tmp_path):
    cfg = check_config(base_config(), "my.yaml")
    table = write_tsv(tmp_path / "orders.tsv", "sequential\tlr\nc\t1e7\nb,b\t1e7\n")
    with pytest.raises(ConfigError, match=r"orders.tsv: row 2: calm.sequential names a task twice: \['b'\]"):
        validate_sweep_table(table, CalmConfig, base=cfg)
    whole = write_tsv(tmp_path / "whole.tsv", "calm.sequential\nc\na,b,c\n")
    with pytest.raises(ConfigError, match="whole.tsv: row 2: calm.sequential has 3 tasks but data.tasks has 3"):
        validate_sweep_table(whole, Config, base=cfg)
