"""The SLURM profile on a real cluster: the one-machine cluster of .ci/slurm-up (partitions `cpu`,
no GPU, and `gpu`, GRES gpu:h100), which `.ci/run` starts before the test suite. A pico config
runs through `profiles/slurm` as the README says, job by job through sbatch, to the same
results as a local run; a user's sweep grid runs its variants side by side; a cancelled and
an out-of-memory job are retried and end as an uninterrupted run.

Without `sbatch` (or without those partitions) every test here is skipped; with
CALM_REQUIRE_SLURM=1 (set by .ci/run) the module fails instead.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import same_tensors
from test_scale_workflow import planned_resources
from pico_workflow import ROOT, SNAKEMAKE, pico_config, planned_jobs

# What the README tells users to export, for .ci/slurm-up's cluster.
SLURM_ENV = {"SLURM_ACCOUNT": "calm", "SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu", "SLURM_GPU_MODEL": "h100"}
# The README's poll interval for a small idle cluster (the plugin's default is 40 s).
POLL = ["--slurm-init-seconds-before-status-checks", "2"]
TASKS = ["animal", "mood"]
ITERATIONS, CHECKPOINT_EVERY = 100, 10
STEP = Path("results/merge/calm/default/step1-mood")
# The rules of the pico run that declare gpu=1 (written out: the test must not take them from the
# workflow it checks).
GPU_RULES = {"finetune", "score", "calm_base", "calm_step", "calm_model", "merge_baseline", "evaluate"}


def missing_cluster() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (.ci/slurm-up installs and starts a one-machine Slurm cluster)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if proc.returncode != 0 or not {"cpu", "gpu"} <= set(proc.stdout.split()):
        return "no Slurm cluster with partitions cpu and gpu answers (run .ci/slurm-up)"
    return None


WHY_NOT = missing_cluster()
if WHY_NOT and os.environ.get("CALM_REQUIRE_SLURM"):
    raise RuntimeError(f"CALM_REQUIRE_SLURM is set, but {WHY_NOT}")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def started(cmd: list[str], output: Path, **kwargs) -> subprocess.Popen:
    """A command started with its output going to a file (a pipe nobody reads would fill up)."""
    with output.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)
    proc.output = output
    return proc


def start_on_cluster(work: Path, *args: str, spelling: str = "--workflow-profile") -> subprocess.Popen:
    """The README's command, from the repository: `snakemake <spelling> profiles/slurm --configfile
    …`, in `work` (--directory) and polling every 2 s; started, not waited for."""
    cmd = SNAKEMAKE + [spelling, "profiles/slurm", "--configfile", str(work / "config.yaml"),
                       "--directory", str(work), *POLL, *args]
    return started(cmd, work.parent / f"{work.name}.out", cwd=ROOT, env={**os.environ, **SLURM_ENV})


def finished(proc: subprocess.Popen, timeout: int = 900) -> str:
    """Its output, once it has ended well."""
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill() if proc.poll() is None else None
    out = proc.output.read_text()
    assert proc.returncode == 0, out[-6000:]
    return out


def on_cluster(work: Path, *args: str, spelling: str = "--workflow-profile") -> str:
    return finished(start_on_cluster(work, *args, spelling=spelling))


def submitted(output: str) -> list[str]:
    """Slurm job ids of the jobs Snakemake submitted, from its log lines."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def slurm_jobs(ids: list[str]) -> list[dict[str, str]]:
    """What slurmctld knows of each job (slurm.conf keeps finished jobs for an hour), with `rule`
    parsed from the comment the executor gives each job (rule_<name>_wildcards_<values>)."""
    known = {}
    for line in subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        job = dict(field.split("=", 1) for field in line.split() if "=" in field)
        known[job["JobId"]] = job
    jobs = [known[i] for i in ids]
    for job in jobs:
        job["rule"] = re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["Comment"]).group(1)
    return jobs


def copy_run(src: Path, dst: Path, drop: list[Path]) -> Path:
    """A copy of a finished run without the files in `drop` (the jobs to run again)."""
    shutil.copytree(src, dst, symlinks=True)
    for path in drop:
        shutil.rmtree(dst / path) if (dst / path).is_dir() else (dst / path).unlink()
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pico_model):
    """The same pico config (two tasks, a 100-iteration CALM step checkpointed every 10, one
    baseline) run locally and through the SLURM profile, at the same time (the cluster run waits
    on its jobs most of the time); returns both folders, the cluster run's output and wall time."""
    root = tmp_path_factory.mktemp("slurm")
    config = pico_config(pico_model, root, iterations=ITERATIONS, checkpoint_every=CHECKPOINT_EVERY)
    config["data"]["tasks"] = TASKS
    config["data"]["custom"] = {t: config["data"]["custom"][t] for t in TASKS}
    config["baselines"]["methods"] = ["ties"]
    local, cluster = root / "local", root / "cluster"
    for work in (local, cluster):
        work.mkdir()
        (work / "config.yaml").write_text(yaml.safe_dump(config))
    reference = started(SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(local), "--configfile",
                                     str(local / "config.yaml"), "--cores", "1"], root / "local.out", cwd=local)
    start = time.monotonic()
    out = on_cluster(cluster)
    seconds = time.monotonic() - start
    finished(reference)
    return {"local": local, "cluster": cluster, "output": out, "seconds": seconds, "planned": planned_jobs(out)}


def test_every_compute_job_is_an_sbatch_job_and_gpu_jobs_run_on_the_gpu_partition(runs):
    out = runs["output"]
    ids = submitted(out)
    jobs = slurm_jobs(ids)
    local_rules = {"fetch_model", "fetch_data", "all"}
    planned = runs["planned"]
    # 2 prepare, finetune, score, select; calm_base, calm_step, calm_model; TIES; 4 evaluations; table
    assert sum(n for rule, n in planned.items() if rule not in local_rules) == len(ids) == 17
    assert len(set(ids)) == len(ids) and {j["JobName"] for j in jobs} == {jobs[0]["JobName"]}
    assert all(j["JobState"] == "COMPLETED" for j in jobs), [(j["JobId"], j["JobState"]) for j in jobs]
    by_rule = {}
    for j in jobs:
        by_rule[j["rule"]] = by_rule.get(j["rule"], 0) + 1
    assert by_rule == {rule: n for rule, n in planned.items() if rule not in local_rules}
    declared = {rule for rule, runs_ in planned_resources(out).items() if any(r.get("gpu") == "1" for r in runs_)}
    assert declared == GPU_RULES
    for j in jobs:
        if j["rule"] in GPU_RULES:
            assert (j["Partition"], j.get("TresPerJob")) == ("gpu", "gres:gpu:h100:1"), j
        else:
            assert j["Partition"] == "cpu" and "gpu" not in j.get("TresPerJob", "") + j.get("TRES", ""), j
    print(f"\n{len(ids)} sbatch jobs in {runs['seconds']:.0f} s")


def test_the_cluster_run_equals_the_local_run(runs):
    local, cluster = runs["local"], runs["cluster"]
    assert (cluster / "results/tables/main.csv").read_bytes() == (local / "results/tables/main.csv").read_bytes()
    assert (cluster / STEP / "tau.safetensors").read_bytes() == (local / STEP / "tau.safetensors").read_bytes()
    assert same_tensors(cluster / STEP / "mask.safetensors", local / STEP / "mask.safetensors")


def test_a_cancelled_and_an_out_of_memory_calm_step_are_retried_and_end_as_the_uninterrupted_run(runs, tmp_path):
    """Two copies of the run without their mask step, at the same time. In one, scancel the step
    once it has checkpointed: the profile's retries submit it again and the new attempt continues
    from the checkpoint. In the other, resources.mem_scale 0.35 makes the step's first attempt ask
    for 1.05 GB, less than it uses (Slurm counts ~1.7 GB: the job's own Snakemake and the step), so
    Slurm kills it (OverMemoryKill); the retry asks for twice as much. (At 0.4, 1.2 GB, the first
    attempt once got through: the step's use is near 1.2 GB for much of its run.) Both end bitwise as the
    uninterrupted step."""
    cancel, starve = (copy_run(runs["cluster"], tmp_path / name, [STEP]) for name in ("cancel", "starve"))
    config = yaml.safe_load((starve / "config.yaml").read_text())
    config["resources"] = {"mem_scale": 0.35}
    (starve / "config.yaml").write_text(yaml.safe_dump(config))
    starving = start_on_cluster(starve, str(STEP / "tau.safetensors"))
    cancelling = start_on_cluster(cancel, str(STEP / "tau.safetensors"))
    checkpoint = cancel / f"{STEP}.resume.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert cancelling.poll() is None and time.monotonic() < deadline, "no mask checkpoint within 5 min"
        time.sleep(0.05)
    running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %Z"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    cancelled = [line.split()[0] for line in running if line.split()[1] == str(cancel)]
    assert len(cancelled) == 1, running
    subprocess.run(["scancel", cancelled[0]], check=True)

    first, second = slurm_jobs(submitted(finished(cancelling)))
    assert first["JobId"] == cancelled[0] and first["JobState"] == "CANCELLED" and second["JobState"] == "COMPLETED"
    log = (cancel / "logs/merge/calm/default/step1-mood.log").read_text()
    resumed = re.search(r"resuming the mask optimisation from \S+ after iteration (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) < ITERATIONS, log[-2000:]
    assert not checkpoint.exists()

    first, second = slurm_jobs(submitted(finished(starving)))
    mem = [int(j["MinMemoryNode"].removesuffix("M")) for j in (first, second)]
    assert first["JobState"] in ("FAILED", "OUT_OF_MEMORY") and second["JobState"] == "COMPLETED"
    assert mem[1] == 2 * mem[0] and mem[0] < 1500 < 2000 < mem[1], mem
    # The executor names a job's log folder by its wildcards joined with '_', the replicate's
    # {rep} first: empty for the main run, hence the leading '_'.
    killed = (starve / f".snakemake/slurm_logs/rule_calm_step/_default_1_mood/{first['JobId']}.log").read_text()
    assert "exceeded memory limit" in killed

    for work in (cancel, starve):
        assert (work / STEP / "tau.safetensors").read_bytes() == (runs["cluster"] / STEP / "tau.safetensors").read_bytes()
        assert same_tensors(work / STEP / "mask.safetensors", runs["cluster"] / STEP / "mask.safetensors")


def readme_command(comment: str) -> list[str]:
    """The words of the README's command line that ends in `# <comment>`."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.endswith(f"# {comment}")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].rsplit("#", 1)[0])


def as_checkout(work: Path) -> Path:
    """`work` laid out as the README's commands expect their folder: the repository's files and
    its .venv, linked."""
    for name in ("Snakefile", "workflow", "profiles", ".venv"):
        (work / name).symlink_to(ROOT / name)
    return work


def test_the_readmes_grid_command_runs_the_variants_side_by_side(runs, tmp_path):
    """The README's grid command, exactly as printed (with the test's poll interval after it),
    on a grid of three mask learning rates over the finished run, through `--profile
    profiles/slurm` (Snakemake then also reads the workflow's profiles/default): row 1 is the
    config's own calm section (the run's variant, no job), rows 2 and 3 are two new variants
    whose jobs run at the same time; one tidy CSV and a plot. (The README's old line, with `grid`
    after `--configfile my.yaml`, read `grid` as a second config file.)"""
    work = as_checkout(copy_run(runs["cluster"], tmp_path / "work", []))
    (work / "config.yaml").rename(work / "my.yaml")
    (work / "my-grid.csv").write_text("lr,ratio\n1e6,0.9\n2e6,0.9\n4e6,0.9\n")
    words = readme_command("a sweep grid")
    assert words[:2] == [".venv/bin/snakemake", "grid"] and "my.yaml" in words and "grid=my-grid.csv" in words
    out = finished(started(words + POLL, tmp_path / "grid.out", cwd=work, env={**os.environ, **SLURM_ENV}))
    jobs = slurm_jobs(submitted(out))
    grid = pd.read_csv(work / "results/grid/grid.csv")
    assert list(grid.columns) == ["row", "lr", "ratio", "variant", "task", "accuracy", "normalised"]
    assert grid["row"].tolist() == [r for r in (1, 2, 3) for _ in TASKS + ["average"]]
    variants = grid.drop_duplicates("row")["variant"].tolist()
    assert variants == ["default", "lr~2e+06_ratio~0.9", "lr~4e+06_ratio~0.9"]
    assert sorted(j["rule"] for j in jobs) == sorted(["calm_base", "calm_step", "calm_model", "evaluate"] * 2 + ["grid"])
    assert all(j["Partition"] == ("cpu" if j["rule"] == "grid" else "gpu") for j in jobs)
    spans = {v: [(datetime.fromisoformat(j["StartTime"]), datetime.fromisoformat(j["EndTime"]))
                 for j in jobs if v in j["Comment"]] for v in variants[1:]}
    assert any(a[0] < b[1] and b[0] < a[1] for a in spans[variants[1]] for b in spans[variants[2]]), spans
    assert (work / "results/grid/grid.png").stat().st_size > 5000


def test_a_changed_setting_whose_step_fails_on_every_attempt_is_recomputed_once_the_cause_is_gone(runs, tmp_path):
    """On the finished run, calm.lr and calm.iterations change, and the CALM step's input
    base.safetensors is corrupt: the step fails on each of the profile's attempts, and Snakemake
    deletes its outputs, the only record that the settings changed. The user deletes the corrupt
    file and runs the same command again: it recomputes the base, the step, the CALM model, its
    evaluation and the table under the new settings, as a local run of them that never failed
    (before: "Nothing to be done", the old settings' model and table standing)."""
    base = Path("results/merge/calm/default/base.safetensors")
    work = copy_run(runs["cluster"], tmp_path / "work", [])
    reference = copy_run(runs["local"], tmp_path / "reference", [])
    for folder in (work, reference):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["calm"].update(lr=3e6, iterations=20)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (work / base).write_bytes(b"not a safetensors file")
    local = started(SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "--directory", str(reference), "--configfile",
                                 str(reference / "config.yaml"), "--cores", "1"], tmp_path / "reference.out",
                    cwd=reference)
    failing = start_on_cluster(work)
    failing.wait(timeout=900)
    assert failing.returncode != 0
    attempts = [j for j in slurm_jobs(submitted(failing.output.read_text())) if j["rule"] == "calm_step"]
    assert [j["JobState"] for j in attempts] == ["FAILED"] * 3, attempts
    assert not (work / STEP / "tau.safetensors").exists()

    (work / base).unlink()
    rules = sorted(j["rule"] for j in slurm_jobs(submitted(on_cluster(work))))
    assert rules == ["calm_base", "calm_model", "calm_step", "evaluate", "table"]
    finished(local)
    assert json.loads((work / STEP / "summary.json").read_text())["settings"]["lr"] == 3e6
    assert (work / STEP / "tau.safetensors").read_bytes() == (reference / STEP / "tau.safetensors").read_bytes()
    assert (work / "results/tables/main.csv").read_bytes() == (reference / "results/tables/main.csv").read_bytes()
