"""Provenance: the commit, versions, CPU flags and precision a results table records, and
that recording it leaves the table's CSV and Markdown as they were."""
from __future__ import annotations

import json
import subprocess

import pandas as pd

from calm import provenance
from calm.io import write_parquet
from calm.stages.evaluate import table

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_model_and_the_flags_that_decide_bf16(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert provenance.cpu(tmp_path / "cpuinfo") == {"cpu": "Intel(R) Xeon(R) Platinum 8480+",
                                                   "cpu_bf16_flags": ["avx512_bf16", "amx_bf16", "amx_tile"]}
    (tmp_path / "old").write_text("model name\t: AMD EPYC 7742\nflags\t\t: fpu avx2 avx512f\n")
    assert provenance.cpu(tmp_path / "old") == {"cpu": "AMD EPYC 7742", "cpu_bf16_flags": []}
    assert provenance.cpu(tmp_path / "absent")["cpu"] == "unknown"


def test_commit_in_and_outside_a_git_checkout(tmp_path):
    assert provenance.commit(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a").write_text("1")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "a"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    provenance.commit.cache_clear()
    assert provenance.commit(tmp_path) == head
    (tmp_path / "a").write_text("2")
    provenance.commit.cache_clear()
    assert provenance.commit(tmp_path) == f"{head}+dirty"


def _preds(correct: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"task": "a", "idx": range(len(correct)), "label": 1, "pred": correct})


def test_the_table_json_records_each_rows_precision_and_the_csv_and_markdown_do_not_change(tmp_path):
    rows = {"Individual": [1, 1, 1, 1], "TA (λ=0.3)": [1, 0, 1, 0], "CALM": [1, 1, 1, 0]}
    gpu = provenance.compute_record("cuda", True, gpu="NVIDIA H200")
    cpu = {"device": "cpu", "precision": "fp32", "cpu": "AMD EPYC", "cpu_bf16_flags": [], "torch": "2.0"}
    for name, correct in rows.items():
        write_parquet(_preds(correct), tmp_path / f"plain-{name}.parquet")
        write_parquet(_preds(correct), tmp_path / f"rec-{name}.parquet",
                      provenance.parquet_metadata(cpu if name == "CALM" else gpu))
    assert provenance.read_record(tmp_path / "plain-CALM.parquet") is None
    assert provenance.read_record(tmp_path / "rec-CALM.parquet") == cpu
    kwargs = dict(sweep_prefix="TA λ=", insert_best_after="TA (λ=0.3)", individual="Individual", target="CALM",
                  bootstrap=10, seed=0)
    table({n: tmp_path / f"plain-{n}.parquet" for n in rows}, tmp_path / "plain", **kwargs)
    table({n: tmp_path / f"rec-{n}.parquet" for n in rows}, tmp_path / "rec", **kwargs)
    for ext in ("csv", "md"):
        assert (tmp_path / f"rec.{ext}").read_bytes() == (tmp_path / f"plain.{ext}").read_bytes()
    made_by = json.loads((tmp_path / "rec.json").read_text())["provenance"]
    assert made_by["precision"] == ["bf16", "fp32"]
    assert made_by["rows"]["CALM"] == cpu and made_by["rows"]["Individual"]["gpu"] == "NVIDIA H200"
    assert {m["device"] for m in made_by["machines"]} == {"cpu", "cuda"}
    assert made_by["commit"] == provenance.commit() and made_by["torch"] == provenance.version("torch")
    assert json.loads((tmp_path / "plain.json").read_text())["provenance"]["precision"] == ["unknown"]
