"""Bad checkpoints and data give one clear line naming the file or tensor; pickles are not
unpickled unless trusted; the mask loop resumes bit for bit; the stages are deterministic on
CPU. (Config errors: tests/test_config_errors.py.)"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from calm import artifacts, resume
from calm.checkpoints import load_torch_file, read_checkpoint_dir, read_tensors
from calm.config import CalmConfig, FinetuneConfig, ModelConfig
from calm.io import write_json, write_parquet
from calm.stages.prepare import build_head, preprocess
from calm.stages.evaluate import evaluate
from calm.stages.family import open_family
from calm.stages.finetune import finetune
from calm.stages.merge import calm_step
from calm.stages.score import select
from conftest import same_tensors

ROOT = Path(__file__).resolve().parents[1]


# --- checkpoints and pickles ------------------------------------------------------------------

@pytest.fixture(scope="module")
def family(pico_model):
    return open_family(ModelConfig(max_length=16, logit_scale=10.0), pico_model, device="cpu")


def altered_checkpoint(pico_model: Path, folder: Path, change) -> Path:
    tensors = load_file(str(pico_model / "model.safetensors"))
    change(tensors)
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_missing_checkpoint_folder_or_weights_are_named(family, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such checkpoint folder"):
        family.load_state(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no weights file \(\*.safetensors"):
        family.load_state(tmp_path / "empty")


def test_checkpoint_missing_a_tensor_names_it(family, pico_model, tmp_path):
    name = "encoder.layer.0.intermediate.dense.bias"
    folder = altered_checkpoint(pico_model, tmp_path / "ft", lambda t: t.pop(name))
    with pytest.raises(ValueError, match=rf"tensor '{name}' is missing from the checkpoint .*ft \(1 missing"):
        family.load_state(folder)


def test_checkpoint_mismatch_names_the_first_tensor_in_the_pretrained_order(family, pico_model, tmp_path):
    first, later = "encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.weight"

    def change(t):
        t[later] = t[later].half()
        t[first] = torch.zeros(4, 4)

    folder = altered_checkpoint(pico_model, tmp_path / "ft", change)
    with pytest.raises(ValueError) as info:
        family.load_state(folder)
    assert str(info.value) == (f"tensor '{first}' of the checkpoint {folder} is (4, 4) torch.float32, "
                               "expected (16, 16) torch.float32")
    folder2 = altered_checkpoint(pico_model, tmp_path / "ft2", lambda t: t.update({later: t[later].half()}))
    with pytest.raises(ValueError, match=rf"tensor '{later}' of the checkpoint .* torch.float16, expected .* torch.float32"):
        family.load_state(folder2)


@pytest.mark.parametrize("bad, counts", [(float("nan"), "2 NaN and 0 Inf"), (float("inf"), "0 NaN and 2 Inf")])
def test_checkpoint_with_nan_or_inf_names_the_tensor(family, pico_model, tmp_path, bad, counts):
    name = "encoder.layer.1.attention.output.LayerNorm.weight"

    def change(t):
        t[name][[3, 5]] = bad

    folder = altered_checkpoint(pico_model, tmp_path / "ft", change)
    with pytest.raises(ValueError, match=rf"tensor '{name}' of the checkpoint .*ft holds {counts} values"):
        family.load_state(folder)


def test_truncated_safetensors_is_named_not_cryptic(family, pico_model, tmp_path):
    folder = altered_checkpoint(pico_model, tmp_path / "ft", lambda t: None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        family.load_state(folder)
    assert str(info.value).startswith(f"{folder / 'model.safetensors'}: not a readable safetensors file, "
                                      "truncated or corrupt (")


def test_bin_checkpoint_loads_through_weights_only_torch_load(family, pico_model, tmp_path):
    tensors = load_file(str(pico_model / "model.safetensors"))
    (tmp_path / "ft").mkdir()
    torch.save(tensors, tmp_path / "ft" / "pytorch_model.bin")
    state = family.load_state(tmp_path / "ft")
    assert all(torch.equal(state[n], tensors[n]) for n in state)


class _Note:
    """A harmless object of a class torch.load(weights_only=True) does not know."""


class _Payload:
    """Unpickling this calls open(marker, 'w'): code run by merely loading the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_that_runs_code_is_refused_unless_trusted(tmp_path, caplog):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2), "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError) as info:
        load_torch_file(path, trust_pickle=False)
    assert str(info.value) == (f"{path}: holds the Python object io.open, which weights-only loading "
                               "refuses; if you trust the file, set model.trust_pickle: true")
    assert not marker.exists()
    with caplog.at_level(logging.WARNING, logger="calm"):
        loaded = load_torch_file(path, trust_pickle=True)
    loaded["payload"].close()
    assert marker.exists(), "trusted: fully unpickled"
    assert any("fully unpickling (model.trust_pickle: true)" in r.message for r in caplog.records)


def test_trust_pickle_reaches_the_family_from_the_config(pico_model, tmp_path):
    trusting = open_family(ModelConfig(max_length=16, trust_pickle=True), pico_model, device="cpu")
    assert trusting.trust_pickle is True
    torch.save({"state_dict": {"w": torch.ones(2)}, "note": _Note()}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt.pt: holds the Python object [\w.]*_Note, which weights-only"):
        read_tensors(tmp_path / "ckpt.pt")
    (tmp_path / "d").mkdir()
    (tmp_path / "ckpt.pt").rename(tmp_path / "d" / "ckpt.pt")
    assert list(read_checkpoint_dir(tmp_path / "d", trust_pickle=True)) == ["w"]


def test_every_torch_load_in_calm_is_in_load_torch_file():
    import ast

    calls = set()
    for path in (ROOT / "calm").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            calls |= {(path.relative_to(ROOT).as_posix(), func.name) for n in ast.walk(func)
                      if isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"}
    assert calls == {("calm/checkpoints.py", "load_torch_file")}


# --- data -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory, family):
    """A two-class task: splits, inputs, head, a pretend fine-tuned model and a previous τ."""
    folder = tmp_path_factory.mktemp("toy")
    texts = [f"{w} number {i}" for i, w in enumerate(["good", "bad"] * 12)]
    frame = pd.DataFrame({"idx": range(24), "text": texts, "label": [i % 2 for i in range(24)]})
    data = folder / "data"
    for split, rows in {"train": frame.iloc[:12], "pool": frame.iloc[12:18], "test": frame.iloc[18:]}.items():
        write_parquet(rows, data / f"{split}.parquet")
    write_json({"name": "toy", "classes": ["good", "bad"], "prompt": "something {}"}, data / "task.json")
    preprocess(family, data, folder / "inputs.safetensors")
    build_head(family, data, folder / "head.safetensors")
    theta0 = family.pretrained_state()
    gen = torch.Generator().manual_seed(0)
    family.save({n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in theta0.items()}, folder / "ft")
    artifacts.write_vector({n: 0.02 * torch.randn(t.shape, generator=gen) for n, t in theta0.items()},
                           folder / "prev.safetensors")
    return folder


def credible(toy: Path, name: str, idx: list[int], target: list[int]) -> Path:
    path = toy / f"{name}.parquet"
    write_parquet(pd.DataFrame({"idx": idx, "target": target}), path)
    return path


def run_step(family, toy, cred, out, **calm):
    cfg = CalmConfig(sequential=["toy"], iterations=4, batch_size=4, lr=1e6, init_fraction=0.01, **calm)
    visible = [{"task": "toy", "inputs": toy / "inputs.safetensors", "head": toy / "head.safetensors",
                "credible": cred}]
    return calm_step(family, toy / "prev.safetensors", toy / "ft", visible, cfg, 1, out)


def test_empty_split_is_named(family, toy, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "pool", "test"):
        frame = pd.read_parquet(toy / "data" / f"{split}.parquet")
        write_parquet(frame.head(0) if split == "pool" else frame, data / f"{split}.parquet")
    write_json({"name": "toy", "classes": ["good", "bad"], "prompt": "{}", "rows_after_cleaning": 18},
               data / "task.json")
    with pytest.raises(ValueError) as info:
        preprocess(family, data, tmp_path / "inputs.safetensors")
    assert str(info.value) == (f"{data}/pool.parquet is empty: task 'toy' has 18 usable rows, too few for "
                               f"its pool split (see the notes in {data}/task.json)")
    assert not (tmp_path / "inputs.safetensors").exists()


def test_missing_label_column_is_named(tmp_path):
    from calm.data.task_splits import write_task_splits
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["a", "b", "c", "d"], "stars": [0, 1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"reviews.csv: missing column\(s\) \['y'\]; has \['review', 'stars'\]"):
        write_task_splits({"path": str(path), "text_column": "review", "label_column": "y", "classes": ["n", "p"],
                      "prompt": "{}"}, tmp_path / "out", tmp_path, n_train=2, n_pool=1, n_test=2, seed=0)
    assert not (tmp_path / "out").exists()


def test_label_outside_the_classes_is_named(tmp_path):
    from calm.data.task_splits import write_task_splits
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["a", "b", "c", "d"], "y": [0, 1, 2, 1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"reviews.csv: label 2 is not a class index \(0..1\)"):
        write_task_splits({"path": str(path), "text_column": "review", "label_column": "y", "classes": ["n", "p"],
                      "prompt": "{}"}, tmp_path / "out", tmp_path, n_train=2, n_pool=1, n_test=2, seed=0)


def test_sampler_that_keeps_nothing_stops_naming_the_scores(tmp_path):
    scores = tmp_path / "scores.parquet"
    write_parquet(pd.DataFrame({"idx": [0, 1], "label": [0, 1], "pseudo_label": [0, 1],
                                "entropy": [0.1, 0.2], "logits": [[1.0, 0.0], [0.0, 1.0]]}), scores)
    with pytest.raises(ValueError, match=r"scores.parquet: the cb_ems sampler at ratio 0.5 selected no sample "
                                         r"from a pool of 2"):
        select(scores, "cb_ems", 0.5, 0, tmp_path / "credible.parquet")
    assert not (tmp_path / "credible.parquet").exists()


def test_empty_or_out_of_range_credible_set_stops_the_step(family, toy, tmp_path):
    empty = credible(toy, "empty", [], [])
    with pytest.raises(ValueError, match=r"empty.parquet: the credible set of task toy is empty"):
        run_step(family, toy, empty, tmp_path / "out")
    wrong = credible(toy, "wrong", [12, 13], [0, 2])
    with pytest.raises(ValueError, match=r"wrong.parquet: target 2 is outside the 2 classes of the head"):
        run_step(family, toy, wrong, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_small_credible_set_and_missing_class_warn_and_continue(family, toy, tmp_path, caplog):
    small = credible(toy, "small", [12, 14, 16], [0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="calm"):
        run_step(family, toy, small, tmp_path / "out")
    messages = [r.getMessage() for r in caplog.records]
    assert "task toy: credible set has 3 samples, fewer than a batch of 4; using them all" in messages
    assert any(m.startswith(f"task toy: class 'bad' has no sample in the credible set {small}") for m in messages)
    assert (tmp_path / "out" / "tau.safetensors").exists()


# --- resume and determinism ------------------------------------------------------------------

class Killed(Exception):
    pass


def tiny_problem(seed: int = 0):
    """θ0, τ_prev, τ_new on two small tensors and a loss over random batches of fixed data."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (5, 3), "b": (3,)}
    theta0, prev, new = ({n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(3))
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)

    def loss_terms(generator):
        def terms(iteration):
            pick = torch.randperm(40, generator=generator)[:8]
            yield "t", lambda p: torch.nn.functional.cross_entropy(x[pick] @ p["w"] + p["b"], y[pick])
        return terms

    return theta0, prev, new, loss_terms


def test_mask_loop_resumed_from_a_checkpoint_is_bitwise_the_uninterrupted_one(tmp_path):
    from calm.merging.mask_optimisation import MaskSettings, optimise_mask
    theta0, prev, new, loss_terms = tiny_problem()
    cfg = MaskSettings(iterations=7, lr=50.0, alpha=0.01, init_fraction=0.3, init_value=5.0, checkpoint_every=3)
    full = optimise_mask(theta0, prev, new, loss_terms(torch.Generator().manual_seed(1)), cfg, progress=False)

    saved, path = [], tmp_path / "state.pt"
    generator = torch.Generator().manual_seed(1)

    def save_then_die(state):
        resume.save_state(path, state, generator, "key")
        saved.append(state.iteration)
        raise Killed

    with pytest.raises(Killed):
        optimise_mask(theta0, prev, new, loss_terms(generator), cfg, progress=False, on_checkpoint=save_then_die)
    fresh = torch.Generator().manual_seed(1)  # a new process starts from the seed again
    state = resume.load_state(path, fresh, "key")
    assert saved == [3] and state.iteration == 3 and len(state.trace) == 3
    later = []
    resumed = optimise_mask(theta0, prev, new, loss_terms(fresh), cfg, progress=False, resume=state,
                            on_checkpoint=lambda s: later.append(s.iteration))
    assert later == [6], "checkpoints every 3 iterations, none after the last"
    for n in theta0:
        assert torch.equal(resumed.logits[n], full.logits[n])
        assert torch.equal(resumed.mask[n], full.mask[n]) and torch.equal(resumed.tau[n], full.tau[n])
    assert [r["loss"] for r in resumed.trace] == [r["loss"] for r in full.trace]
    assert [r["iteration"] for r in resumed.trace] == list(range(1, 8))
    assert resume.load_state(path, fresh, "other settings") is None


def test_stale_resume_file_is_ignored_and_removed_after_success(family, toy, tmp_path, caplog):
    cred = credible(toy, "all", list(range(12, 18)), [0, 1, 0, 1, 0, 1])
    run_step(family, toy, cred, tmp_path / "plain")
    out = tmp_path / "resumable"
    stale = resume.resume_path(out)
    assert stale == tmp_path / "resumable.resume.pt"
    torch.save({"fingerprint": "from a run with other settings", "iteration": 2}, stale)
    with caplog.at_level(logging.WARNING, logger="calm"):
        run_step(family, toy, cred, out, checkpoint_every=1)
    assert any("ignoring the resume file" in r.getMessage() for r in caplog.records)
    assert not stale.exists()
    for name in ("tau.safetensors", "layers.csv"):
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert same_tensors(out / "mask.safetensors", tmp_path / "plain" / "mask.safetensors")


def test_same_seed_gives_bitwise_identical_finetune_mask_and_predictions_on_cpu(family, toy, tmp_path):
    cfg = FinetuneConfig(lr=1e-3, epochs=1, batch_size=4, seed=3)
    for run in ("a", "b"):
        finetune(family, toy / "inputs.safetensors", toy / "head.safetensors", cfg, tmp_path / run / "ft")
        evaluate(family, {"toy": tmp_path / run / "ft"}, {"toy": toy / "inputs.safetensors"},
                        {"toy": toy / "head.safetensors"}, 4, tmp_path / run / "eval.parquet")
    assert (tmp_path / "a/ft/model.safetensors").read_bytes() == (tmp_path / "b/ft/model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a/eval.parquet"),
                                  pd.read_parquet(tmp_path / "b/eval.parquet"))
    cred = credible(toy, "det", list(range(12, 18)), [0, 1, 1, 1, 0, 1])
    for run in ("a", "b"):
        run_step(family, toy, cred, tmp_path / run / "step")
    tau = "step/tau.safetensors"
    assert (tmp_path / "a" / tau).read_bytes() == (tmp_path / "b" / tau).read_bytes()
    assert same_tensors(tmp_path / "a/step/mask.safetensors", tmp_path / "b/step/mask.safetensors")


# --- atomic writes --------------------------------------------------------------------------

def test_a_failed_write_leaves_nothing_and_a_killed_writers_temporaries_are_cleared(tmp_path):
    from calm.io import atomic_dir, atomic_path, write_json
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    # what a SIGKILL leaves: temporaries under tempfile's names; the next write of the same
    # output clears its own, and no one else's
    (tmp_path / ".out.json.k1ll3d_x.tmp").write_text("half")
    (tmp_path / ".model.abcd1234.tmp").mkdir()
    (tmp_path / ".other.json.abcd1234.tmp").write_text("someone else's")
    write_json({"a": 1}, tmp_path / "out.json")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("w")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abcd1234.tmp", "model", "out.json"]
    # outputs get the usual permissions, not mkstemp's private 0600
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~umask


# --- outputs: a user's folder is never replaced; a refused write is one line ---------------

def calm_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calm", *args], capture_output=True, text=True)


def calm_main(capsys, *args: str) -> tuple[int, str]:
    """`python -m calm ARGS` called in this process, for a stage that loads the model (a new
    interpreter spends seconds importing it): its exit code and its last line on stderr."""
    from calm.cli import main
    environ, threads = dict(os.environ), torch.get_num_threads()
    try:
        code = main(list(args))
    finally:  # what main sets for its process (offline hub, --threads) stays with it
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def pico_flags(pico_model: Path) -> list[str]:
    return ["--pretrained", str(pico_model), "--model-max-length", "16", "--model-logit-scale", "10",
            "--device", "cpu", "--threads", "1"]


def users_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "important.txt").write_text("mine")
    (path / "sub" / "notes.md").write_text("also mine")
    return path


def untouched(path: Path) -> bool:
    return (sorted(str(p.relative_to(path)) for p in path.rglob("*")) == ["important.txt", "sub", "sub/notes.md"]
            and (path / "important.txt").read_text() == "mine")


def test_atomic_dir_replaces_only_its_own_output(tmp_path):
    from calm.io import OutputError, atomic_dir
    mine = users_folder(tmp_path / "mine")
    with pytest.raises(OutputError) as info:
        with atomic_dir(mine) as tmp:
            (tmp / "weights").write_text("w")
    assert str(info.value) == f"{mine}: exists and holds files this command did not write; give --out a new folder " \
                              "(or empty this one)"
    assert untouched(mine) and [p.name for p in tmp_path.iterdir()] == ["mine"]
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # an empty folder, then its own earlier output, are replaced
        with atomic_dir(tmp_path / "empty") as tmp:
            (tmp / "weights").write_text("w")
    assert (tmp_path / "empty" / "weights").read_text() == "w"
    (tmp_path / "file").write_text("a file")
    with pytest.raises(OutputError, match="file: exists and is not a folder this command wrote"):
        with atomic_dir(tmp_path / "file"):
            pass


# Every stage that writes a folder, with arguments that parse: the refusal comes before any work.
FOLDER_STAGES = {
    "fetch-model": ["--source", "hf:some/model"],
    "fetch-finetuned": ["--source", "hf:some/model", "--pretrained", "p"],
    "fetch-data": ["--task", "ng20", "--wheels", "w"],
    "fetch-val": ["--task", "ng20", "--wheels", "w", "--n-val", "5"],
    "finetune": ["--pretrained", "p", "--inputs", "i", "--head", "h"],
    "merge-baseline": ["--pretrained", "p", "--method", "task_arithmetic", "--models", "a", "b"],
    "calm-step": ["--pretrained", "p", "--tau-prev", "t", "--model", "m", "--visible", "t=a,b,c"],
    "calm-model": ["--pretrained", "p", "--tau", "t"],
}


@pytest.mark.parametrize("stage", FOLDER_STAGES)
def test_out_onto_a_users_folder_is_refused_in_one_line_and_keeps_it(stage, tmp_path):
    """Before: `calm-model --out DIR` replaced DIR (its important.txt and sub/notes.md gone), exit 0."""
    out = users_folder(tmp_path / "merged-model")
    proc = calm_cli(stage, *FOLDER_STAGES[stage], "--out", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {out}: exists and holds files this command did not write; give --out a new folder (or empty this one)"]
    assert untouched(out)


def test_mask_parts_refuses_a_users_part_folder_before_writing_any(pico_model, toy, tmp_path, capsys):
    from calm.merging.mask import pack
    from calm.io import write_tensors
    theta0 = load_file(str(pico_model / "model.safetensors"))
    packed, shapes = pack({n: torch.ones(t.shape, dtype=torch.bool) for n, t in theta0.items()})
    write_tensors(packed, tmp_path / "mask.safetensors", metadata=shapes)
    out = tmp_path / "analysis"
    users_folder(out / "not_m_tau1")
    code, last = calm_main(capsys, "mask-parts", *pico_flags(pico_model), "--tau-prev", str(toy / "prev.safetensors"),
                           "--model", str(toy / "ft"), "--mask", str(tmp_path / "mask.safetensors"), "--out", str(out))
    assert code == 1
    assert last == (f"error: {out / 'not_m_tau1'}: exists and holds files this command did not write; give --out a "
                    "new folder (or empty this one)")
    assert untouched(out / "not_m_tau1") and sorted(p.name for p in out.iterdir()) == ["not_m_tau1"]


def in_mount(folder: Path, options: str, command: list[str], fill: bool = False) -> subprocess.CompletedProcess:
    """`command` with a tmpfs mounted on `folder` (its own mount namespace: nothing else sees
    it); with `fill`, a file first takes all its space."""
    folder.mkdir(parents=True, exist_ok=True)
    filler = f"dd if=/dev/zero of={folder}/filler bs=4k 2>/dev/null; " if fill else ""
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o {options} none {folder} && {filler}"
                           'exec "$@"', "sh", *command], capture_output=True, text=True)


needs_mounts = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                  reason="mounts a small or read-only tmpfs (root, unshare)")


@needs_mounts
@pytest.mark.parametrize("mount, cause", [("size=1m", "no space left on the device"), ("ro", "read-only file system")])
def test_a_full_disk_or_an_unwritable_folder_is_one_line_naming_the_output(pico_model, toy, tmp_path, mount, cause):
    """Before: safetensors' errno 28 traceback (40 lines) naming no file; for a folder one may
    not write in, a 28-line PermissionError naming only the temporary file. (As root, whom
    file modes do not stop, that folder is a read-only mount.)"""
    disk = tmp_path / "disk"
    proc = in_mount(disk, mount, [sys.executable, "-m", "calm", "calm-model", *pico_flags(pico_model),
                                  "--tau", str(toy / "prev.safetensors"), "--out", str(disk / "model")])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: {disk / 'model'}: cannot write this folder: {cause}"
    assert "Traceback" not in proc.stderr


@needs_mounts
def test_a_full_disk_under_a_parquet_file_names_the_file(tmp_path):
    """Before: pyarrow's '[Errno 28] Error writing bytes to file', naming no file."""
    write = ("import pandas as pd, sys; from calm.io import write_parquet; "
             "write_parquet(pd.DataFrame({'a': range(100)}), sys.argv[1])")
    disk = tmp_path / "disk"
    proc = in_mount(disk, "size=64k", [sys.executable, "-c", write, str(disk / "scores.parquet")], fill=True)
    assert proc.stderr.strip().splitlines()[-1] == f"calm.io.OutputError: {disk / 'scores.parquet'}: cannot write " \
                                                   "this file: no space left on the device"


def test_a_task_vector_with_nan_stops_the_merge_stage_naming_its_file(pico_model, toy, tmp_path, capsys):
    """Before: NaN in base.safetensors reached the merged model and `evaluate` reported it there."""
    tau = artifacts.read_vector(toy / "prev.safetensors")
    name = sorted(tau)[3]
    tau[name].view(-1)[[0, 2]] = float("nan")
    artifacts.write_vector(tau, tmp_path / "base.safetensors")
    code, last = calm_main(capsys, "calm-model", *pico_flags(pico_model), "--tau", str(tmp_path / "base.safetensors"),
                           "--out", str(tmp_path / "model"))
    assert code == 1
    assert last == f"error: tensor '{name}' of the task vector {tmp_path / 'base.safetensors'} holds 2 NaN and 0 Inf values"
    assert not (tmp_path / "model").exists()
