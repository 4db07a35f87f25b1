"""The ablations' stages and their tidy tables, from the files the merges and evaluations wrote.

Every table is long-format: the point's settings first, then one row per task, with a
row task="average" per point where the table has accuracies. Accuracies are in percent.
The sweep points themselves (which CALM variant each reads) are planned in calm/sweeps.py.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from calm import artifacts, vectors
from calm.families.base import Family
from calm.io import atomic_path, check_replaceable, write_text
from calm.metrics import accuracy, hierarchical_bootstrap, normalised
from calm.render import to_markdown
from calm.sweeps import AXES


def mask_parts(family: Family, tau_prev: str | Path, model_dir: str | Path, mask: str | Path,
               out_dir: str | Path) -> None:
    """Checkpoints θ0+τ1, θ0+(1−M)τ1 and θ0+Mτ2 of the mask analysis (paper Table 2), with τ1
    the merge before a step, τ2 its new task's vector and M its mask, in out_dir/<part>."""
    theta0 = family.pretrained_state()
    prev = artifacts.read_vector(tau_prev, family.device)
    tau_new = vectors.task_vector(family.load_state(Path(model_dir)), theta0)
    parts = analysis_vectors(prev, tau_new, artifacts.read_mask(mask))
    for part in parts:  # all before the first is written: a refusal leaves no part replaced
        check_replaceable(Path(out_dir) / part)
    for part, tau in parts.items():
        family.save(vectors.add(theta0, tau), Path(out_dir) / part)


def ablation_topk(family: Family, steps: list[dict], percents: list[float], out: str | Path) -> pd.DataFrame:
    """Per step (keys step, task, mask, model): the share of active mask entries within the top
    k % of the new task's |τ| (paper Table 7)."""
    theta0 = family.pretrained_state()
    frames = []
    for s in steps:
        tau = vectors.task_vector(family.load_state(Path(s["model"])), theta0)
        shares = topk_shares(artifacts.read_mask(s["mask"]), tau, percents)
        frames.append(with_settings({"step": s["step"], "task": s["task"]}, shares))
    frame = pd.concat(frames, ignore_index=True)
    _write_csv(frame, out)
    return frame


def ablation_table(kind: str, points: list[dict], out: str | Path, individual: str | Path | None = None
                   ) -> pd.DataFrame:
    """A tidy ablation table: each point's settings, then the rows its file gives.

    kind accuracy: path = predictions (normalised against `individual` when given), and where a
    point lists `benchmarks` (Snakemake benchmark files), their summed seconds as step_seconds;
    pseudo_labels: path = a credible set; layers: path = a step's layers.csv;
    trace: path = a traced step's trace.csv.
    """
    readers = {
        "accuracy": lambda path: accuracy_rows(
            pd.read_parquet(path), None if individual is None else pd.read_parquet(individual)),
        "pseudo_labels": lambda path: pd.DataFrame([pseudo_label_row(artifacts.read_credible(path))]),
        "layers": lambda path: layer_rows(pd.read_csv(path)),
        "trace": lambda path: trace_rows(pd.read_csv(path)),
    }
    if kind not in readers:
        raise ValueError(f"unknown ablation table kind '{kind}'; known: {sorted(readers)}")
    if not points:
        raise ValueError(f"the {kind} table has no points")
    frames = []
    for p in points:
        settings = {k: v for k, v in p.items() if k not in ("path", "benchmarks")}
        if "benchmarks" in p:
            # What the point cost: the wall seconds of its CALM steps (Snakemake benchmark files).
            settings["step_seconds"] = sum(float(pd.read_csv(b, sep="\t")["s"].iloc[-1]) for b in p["benchmarks"])
        frames.append(with_settings(settings, readers[kind](p["path"])))
    frame = pd.concat(frames, ignore_index=True)
    if kind == "pseudo_labels":
        frame = pseudo_label_averages(frame)
    _write_csv(frame, out)
    return frame


def grid(points: list[dict], keys: list[str], individual: str | Path, out_prefix: str | Path) -> pd.DataFrame:
    """A sweep grid's results: PREFIX.csv, one row per grid row and task (its swept `keys`, its
    variant, accuracy, normalised; task "average" their mean), and PREFIX.png / .pdf, the
    average accuracy against each swept key."""
    from calm.paper.figures import grid_accuracy
    from calm.paper.style import save_figure

    prefix = Path(out_prefix)
    frame = ablation_table("accuracy", points, prefix.with_name(prefix.name + ".csv"), individual=individual)
    save_figure(grid_accuracy(frame, keys), prefix)
    return frame


def seeds_ablations(sweeps: Mapping[str, list[dict]], out_prefix: str | Path, bootstrap: int, seed: int) -> str:
    """Sweeps rerun over fine-tuning seeds (replicates.ablations): per sweep, per seed, its tidy
    table (`table`, as ablation_table writes it) and, for the strategy sweep, each strategy's
    predictions (`predictions`: strategy -> file). Writes PREFIX_ablations.csv and .md (each
    setting's average accuracy, mean ± s.d. over seeds, and for the strategies other − both with
    its hierarchical-bootstrap interval) and, for n_seq, PREFIX_n_seq.png / .pdf (the |S̄| curve
    over seeds). The bases sweep's runs are bases_table's (PREFIX_bases.*). Returns the Markdown."""
    from calm.paper.figures import sequential_count
    from calm.paper.style import save_figure
    from calm.stages.bases import bases_table

    unknown = sorted(set(sweeps) - {"strategy", "n_seq", "bases"})
    if unknown or not sweeps:
        raise ValueError(f"seeds ablations: expected the sweeps strategy, n_seq and/or bases, got {sorted(sweeps)}")
    prefix = Path(out_prefix)
    parts, text, bases = [], [], ""
    for sweep, runs in sweeps.items():
        if sweep == "bases":
            bases = bases_table(runs, prefix.with_name(prefix.name + "_bases"), bootstrap, seed)
            continue
        per_seed = {int(r["seed"]): pd.read_csv(r["table"]) for r in runs}
        comparisons = {}
        if sweep == "strategy":
            preds = [{k: pd.read_parquet(v) for k, v in r["predictions"].items()} for r in runs]
            comparisons = strategy_intervals(preds, bootstrap, seed)
        frame = sweep_averages_per_seed(per_seed, sweep)
        parts.append(seed_summary(frame, sweep, comparisons))
        text.append(seed_summary_markdown(parts[-1], sweep))
        if sweep == "n_seq":
            runs_frame = frame.assign(task="average").rename(columns={"setting": "n_seq"})
            save_figure(sequential_count(runs_frame, over=("fine-tuning seed", "seed")),
                        prefix.with_name(prefix.name + "_n_seq"))
    if parts:
        _write_csv(pd.concat(parts, ignore_index=True), prefix.with_name(prefix.name + "_ablations.csv"))
        write_text("\n".join(text), prefix.with_name(prefix.name + "_ablations.md"))
    return "\n".join(text + [bases] if bases else text)


def sweep_averages_per_seed(tables: Mapping[int, pd.DataFrame], sweep: str) -> pd.DataFrame:
    """seed, setting, accuracy: each setting's average accuracy under each seed, from the seeds'
    tidy tables; an |S̄| is the mean over its task orders (as Fig. 6 averages them)."""
    rows = []
    for s, table in tables.items():
        averages = table[table["task"] == "average"].groupby(AXES[sweep][0], sort=False)["accuracy"].mean()
        rows += [{"seed": s, "setting": k, "accuracy": float(v)} for k, v in averages.items()]
    return pd.DataFrame(rows)


def strategy_intervals(preds: list[dict[str, pd.DataFrame]], bootstrap: int, seed: int) -> dict[str, dict]:
    """strategy -> its difference with `both` over the seeds (points), hierarchical bootstrap:
    Table 3's question, whether a strategy beats the paper's merge rule."""
    if not all("both" in p for p in preds):
        return {}
    from calm.results_table import in_points

    return {s: in_points(hierarchical_bootstrap([p[s] for p in preds], [p["both"] for p in preds], n=bootstrap,
                                                seed=seed))
            for s in preds[0] if s != "both"}


def seed_summary(frame: pd.DataFrame, sweep: str, comparisons: Mapping[str, dict]) -> pd.DataFrame:
    """One row per setting: mean and s.d. (sample; NaN for one seed) of its average accuracy over
    the seeds, each seed's value, and the interval against `both` where there is one."""
    wide = frame.pivot(index="setting", columns="seed", values="accuracy")
    wide = wide.loc[sorted(wide.index) if sweep == "n_seq" else list(pd.unique(frame["setting"]))]
    out = pd.DataFrame({"sweep": sweep, "setting": wide.index, "seeds": wide.notna().sum(axis=1).to_numpy(),
                        "accuracy": wide.mean(axis=1).to_numpy(), "accuracy s.d.": wide.std(axis=1, ddof=1).to_numpy()})
    for s in wide.columns:
        out[f"accuracy (seed {s})"] = wide[s].to_numpy()
    out["comparison"] = [f"{k} − both" if k in comparisons else "" for k in wide.index]
    for key in ("difference", "low", "high"):
        out[key] = [comparisons[k][key] if k in comparisons else float("nan") for k in wide.index]
    return out


def seed_summary_markdown(summary: pd.DataFrame, sweep: str) -> str:
    from calm.paper.tables import STRATEGIES
    from calm.results_table import interval_text, mean_sd_cells

    title = {"strategy": "Merging strategy (Table 3)", "n_seq": "Sequential tasks |S̄| (Fig. 6; each seed: the mean "
             "over its task orders)"}[sweep]
    label = {"strategy": "Strategy", "n_seq": "|S̄|"}[sweep]
    names = [STRATEGIES.get(s, s) if sweep == "strategy" else str(s) for s in summary["setting"]]
    stats = summary.set_index(pd.Index(names, name=label))
    cells = mean_sd_cells(stats[["accuracy"]], stats[["accuracy s.d."]].set_axis(["accuracy"], axis=1),
                          exclude_from_best=())
    cells.columns = [f"Avg accuracy, mean ± s.d. over {int(summary['seeds'].max())} seeds"]
    for column in [c for c in summary.columns if c.startswith("accuracy (seed ")]:
        cells[column.removeprefix("accuracy (").removesuffix(")")] = [f"{v:.1f}" for v in stats[column]]
    if summary["difference"].notna().any():
        cells["− both (95 % CI)"] = [interval_text(r) if pd.notna(r["difference"]) else "–" for _, r in stats.iterrows()]
    return f"{title}\n\n" + to_markdown(cells, bold_best=False)


def _write_csv(frame: pd.DataFrame, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)


# --- rows of the tidy tables ------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(?:layers?|resblocks|blocks)\.(\d+)\.")


def accuracy_rows(predictions: pd.DataFrame, individual: pd.DataFrame | None = None) -> pd.DataFrame:
    """task, accuracy (and normalised: % of the individual model's accuracy) per task, then
    task="average": the mean of each column over tasks, as the main table's Avg and Norm. avg."""
    acc = accuracy(predictions)
    frame = pd.DataFrame({"task": list(acc), "accuracy": [100 * a for a in acc.values()]})
    if individual is not None:
        ind = accuracy(individual)
        missing = set(acc) - set(ind)
        if missing:
            raise ValueError(f"the individual predictions have no task {sorted(missing)}")
        frame["normalised"] = [100 * v for v in normalised(acc, ind).values()]
    average = frame.drop(columns="task").mean().to_dict()
    return pd.concat([frame, pd.DataFrame([{"task": "average", **average}])], ignore_index=True)


def pseudo_label_row(credible: pd.DataFrame) -> dict:
    """pl_accuracy: % of the selected samples whose training target equals the true label."""
    n = len(credible)
    hits = int((credible["target"] == credible["label"]).sum())
    return {"pl_accuracy": 100 * hits / n if n else float("nan"), "n_selected": n}


def layer_group(name: str) -> str:
    """The encoder layer index of a tensor name, 'embeddings', or 'other'."""
    m = _LAYER.search(name)
    if m:
        return m.group(1)
    return "embeddings" if "embed" in name else "other"


def layer_rows(tensors: pd.DataFrame) -> pd.DataFrame:
    """Active fraction per layer group from a per-tensor layers.csv (tensor, numel, active)."""
    frame = tensors.assign(layer=tensors["tensor"].map(layer_group))
    grouped = frame.groupby("layer", sort=False)[["active", "numel"]].sum()
    order = sorted(grouped.index, key=lambda g: (g != "embeddings", g == "other", int(g) if g.isdigit() else 0))
    grouped = grouped.loc[order]
    return pd.DataFrame({"layer": grouped.index, "active_fraction": (grouped["active"] / grouped["numel"]).values})


def topk_shares(mask: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor],
                percents: list[float]) -> pd.DataFrame:
    """share: % of the active mask entries that rank in the top k % of |τ| over all tensors.

    Ranks are by |τ| descending, ties broken by position (tensor order, then row-major), so
    the top k % is exactly int(k/100 · N) entries.
    """
    names = list(tau)
    magnitude = torch.cat([tau[n].detach().abs().flatten().float().cpu() for n in names])
    active = torch.cat([mask[n].flatten().bool().cpu() for n in names])
    n_active = int(active.sum())
    order = torch.sort(magnitude, descending=True, stable=True).indices
    active_by_rank = active[order]
    rows = []
    for k in percents:
        top = int(k / 100 * magnitude.numel())
        inside = int(active_by_rank[:top].sum())
        rows.append({"top_percent": k, "share": 100 * inside / n_active if n_active else float("nan")})
    return pd.DataFrame(rows)


def trace_rows(trace: pd.DataFrame) -> pd.DataFrame:
    """iteration, task, accuracy (%) from the acc/<task> columns of a traced trace.csv, plus
    task="average" per iteration; iterations without an evaluation are left out."""
    columns = [c for c in trace.columns if c.startswith("acc/")]
    if not columns:
        raise ValueError("the trace has no acc/<task> columns: was calm.trace_eval_every 0?")
    evaluated = trace.dropna(subset=columns)
    rows = []
    for _, r in evaluated.iterrows():
        values = {c[len("acc/"):]: 100 * float(r[c]) for c in columns}
        for task, acc in values.items():
            rows.append({"iteration": int(r["iteration"]), "task": task, "accuracy": acc})
        rows.append({"iteration": int(r["iteration"]), "task": "average",
                     "accuracy": sum(values.values()) / len(values)})
    return pd.DataFrame(rows, columns=["iteration", "task", "accuracy"])


def analysis_vectors(tau_prev: Mapping[str, torch.Tensor], tau_new: Mapping[str, torch.Tensor],
                     mask: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The task vectors of the mask analysis that no other stage writes: τ1, (1−M)⊙τ1, M⊙τ2."""
    m = {n: mask[n].to(device=tau_prev[n].device, dtype=tau_prev[n].dtype) for n in tau_prev}
    return {
        "tau1": dict(tau_prev),
        "not_m_tau1": {n: (1 - m[n]) * tau_prev[n] for n in tau_prev},
        "m_tau2": {n: m[n] * tau_new[n] for n in tau_prev},
    }


def pseudo_label_averages(frame: pd.DataFrame) -> pd.DataFrame:
    """Append task="average" per point: the mean pl_accuracy over tasks, n_selected summed."""
    by = [c for c in frame.columns if c not in ("task", "pl_accuracy", "n_selected")]
    averages = (frame.groupby(by, sort=False, dropna=False)
                .agg(pl_accuracy=("pl_accuracy", "mean"), n_selected=("n_selected", "sum")).reset_index())
    averages.insert(len(by), "task", "average")
    return pd.concat([frame, averages[frame.columns]], ignore_index=True)


def with_settings(settings: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Prepend a point's settings as constant columns."""
    out = frame.copy()
    for i, (k, v) in enumerate(settings.items()):
        out.insert(i, k, [v] * len(out))
    return out
