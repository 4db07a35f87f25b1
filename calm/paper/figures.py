"""The paper's figures: each builder takes a result frame and returns a matplotlib Figure in
the one house style (calm/paper/style.py), whose `save_figure` writes PNG and PDF.

Builders use `matplotlib.figure.Figure` directly, not pyplot, so they keep no global state.
Accuracies in the input frames are in percent; mask fractions are fractions (0–1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from calm.paper.style import (AVERAGE_COLOUR, OURS_COLOUR, PALETTE, SAMPLERS, _average_rows, _legend_right,
                              _mean_std, _nonempty, _percent_axis, styled)
from calm.paper.tables import AVERAGE, REFERENCES, step_labels

# --- Figs. 4 and 5 ---------------------------------------------------------------------------

@styled
def sampling_ratio(samplers: pd.DataFrame, sampler: str = "cb_ems") -> Figure:
    """Fig. 4: accuracy of CALM against the credible-set sampling ratio of one sampler (CB-EMS),
    per task and on average."""
    frame = _nonempty(samplers[samplers["sampler"] == sampler], f"sampler '{sampler}'")
    frame = frame.assign(ratio=_percent_axis(frame["ratio"]))
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for i, task in enumerate(t for t in pd.unique(frame["task"]) if t != AVERAGE):
        s = _mean_std(frame[frame["task"] == task], ["ratio"], "accuracy")
        ax.plot(s["ratio"], s["mean"], marker="o", linewidth=1, alpha=0.8, label=task, color=PALETTE[i % len(PALETTE)])
    avg = _mean_std(_average_rows(frame, ["ratio"], "accuracy"), ["ratio"], "accuracy")
    repeated = bool((avg["n"] > 1).any())
    ax.errorbar(avg["ratio"], avg["mean"], yerr=avg["std"] if repeated else None, marker="s", linewidth=2.2,
                capsize=3, color=AVERAGE_COLOUR, zorder=5,
                label="Average" + (" (mean ± s.d.\nwhere repeated)" if repeated else ""))
    ax.set_xlabel(f"Sampling ratio of {SAMPLERS.get(sampler, sampler)} (%)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_xticks(sorted(frame["ratio"].unique()))
    _legend_right(ax)
    return fig


@styled
def sampler_comparison(samplers: pd.DataFrame) -> Figure:
    """Fig. 5: (a) average accuracy of CALM with each sampler against the sampling ratio, error
    bars where a setting was run more than once; (b) where it was, the ratio with the most runs:
    mean ± standard deviation over the runs (seeds) per sampler, each run a dot."""
    frame = _nonempty(samplers, "samplers")
    frame = frame.assign(ratio=_percent_axis(frame["ratio"]))
    runs = _average_rows(frame, ["sampler", "ratio"], "accuracy")
    order = [s for s in SAMPLERS if s in set(runs["sampler"])] + sorted(set(runs["sampler"]) - set(SAMPLERS))
    stats = _mean_std(runs, ["sampler", "ratio"], "accuracy")
    repeated = stats[stats["n"] > 1]
    fig = Figure(figsize=(9.4 if len(repeated) else 6.0, 3.4), layout="constrained")
    if len(repeated):
        ax, seeds = fig.subplots(1, 2, width_ratios=[1.7, 1])
    else:
        ax, seeds = fig.add_subplot(), None
    for i, name in enumerate(order):
        s = stats[stats["sampler"] == name]
        ax.errorbar(s["ratio"], s["mean"], yerr=s["std"] if (s["n"] > 1).any() else None, marker="os^Dv"[i % 5],
                    capsize=3, label=SAMPLERS.get(name, name), color=PALETTE[i % len(PALETTE)])
    ax.set_xlabel("Sampling ratio (%)")
    ax.set_ylabel("Average test accuracy (%)" + (" (mean ± s.d.)" if len(repeated) else ""))
    ax.set_xticks(sorted(runs["ratio"].unique()))
    if seeds is None:
        _legend_right(ax)
        return fig
    ax.set_title("(a) Against the sampling ratio")
    ax.legend(loc="lower right")
    # the ratio where the most runs were repeated (ties: the highest ratio)
    ratio = repeated.sort_values(["n", "ratio"]).iloc[-1]["ratio"]
    at = stats[stats["ratio"] == ratio].set_index("sampler")
    at = at.loc[[s for s in order if s in at.index]]
    x = np.arange(len(at))
    colours = [PALETTE[order.index(s) % len(PALETTE)] for s in at.index]
    # points, not bars: the axis does not start at 0
    for j, name in enumerate(at.index):
        seeds.errorbar(x[j] + 0.12, at.loc[name, "mean"], yerr=at.loc[name, "std"], color=colours[j],
                       marker="os^Dv"[order.index(name) % 5], markersize=7, capsize=5, linewidth=1.8,
                       label="mean ± s.d." if j == 0 else None)
        one = runs[(runs["sampler"] == name) & (runs["ratio"] == ratio)]["accuracy"].to_numpy(float)
        seeds.scatter(np.full(len(one), x[j] - 0.12), one, s=14, color=colours[j], alpha=0.6, edgecolor="none",
                      label="one run" if j == 0 else None)
    short = {**SAMPLERS, "supervised": "Supervised"}  # the long name is in panel (a)'s legend
    seeds.set_xticks(x, [f"{short.get(s, s)}\n({int(n)} run{'s' * (n > 1)})" for s, n in zip(at.index, at["n"])])
    low = float(np.nanmin([runs[runs["ratio"] == ratio]["accuracy"].min(), (at["mean"] - at["std"]).min()]))
    high = float(np.nanmax([runs[runs["ratio"] == ratio]["accuracy"].max(), (at["mean"] + at["std"]).max()]))
    seeds.set_ylim(np.floor(low) - 1, np.ceil(high) + 1)
    seeds.set_xlim(-0.6, len(at) - 0.4)
    seeds.set_ylabel("Average test accuracy (%)")
    seeds.set_title(f"(b) At ratio {ratio:g} %: mean ± s.d. over seeds")
    seeds.grid(axis="x", visible=False)
    seeds.legend(loc="upper right")
    return fig


# --- Fig. 6 ----------------------------------------------------------------------------------

@styled
def sequential_count(n_seq: pd.DataFrame, over: tuple[str, str] = ("task order", "order")) -> Figure:
    """Fig. 6: average accuracy against the number of sequential tasks |S̄|, mean and standard
    deviation over task orders; each order's run is a faint dot. `over` names what the runs of
    one |S̄| differ in, in full and short ("fine-tuning seed", "seed" for the seeds' curve)."""
    runs = _average_rows(_nonempty(n_seq, "n_seq"), ["n_seq"], "accuracy")
    s = _mean_std(runs, ["n_seq"], "accuracy")
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    # the single runs sit just left of their mean, so the error bar does not hide them
    ax.scatter(runs["n_seq"] - 0.08, runs["accuracy"], s=14, color=PALETTE[0], alpha=0.5, label=f"one {over[0]}")
    ax.errorbar(s["n_seq"], s["mean"], yerr=s["std"], marker="o", capsize=4, linewidth=1.8,
                color=AVERAGE_COLOUR, label=f"mean ± s.d. over {over[1]}s")
    ax.set_xticks(s["n_seq"], [f"{int(k)}\n({int(n)} {over[1]}{'s' * (n > 1)})" for k, n in zip(s["n_seq"], s["n"])])
    ax.set_xlim(s["n_seq"].min() - 0.5, s["n_seq"].max() + 0.5)
    ax.set_xlabel("Sequential tasks |S̄|")
    ax.set_ylabel("Average test accuracy (%)")
    ax.legend(loc="best")
    return fig


# --- Fig. 7 ----------------------------------------------------------------------------------

@styled
def layer_heatmap(layers: pd.DataFrame) -> Figure:
    """Fig. 7: fraction (%) of active mask entries per layer (columns), one row per sequential
    task's mask."""
    frame = _nonempty(layers, "layers")
    labels = step_labels(frame)
    frame = frame.assign(row=[labels[(s, t)] for s, t in zip(frame["step"], frame["task"])])
    grid = frame.pivot_table(index="row", columns="layer", values="active_fraction", aggfunc="mean", sort=False)
    grid = grid.reindex(index=list(dict.fromkeys(labels.values())), columns=list(pd.unique(frame["layer"]))) * 100
    rows, cols = grid.shape
    fig = Figure(figsize=(max(4.5, 0.42 * cols + 2.5), max(2.0, 0.42 * rows + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid.to_numpy(float), aspect="auto", cmap="viridis", interpolation="nearest")
    crowded = cols > 6 and sum(len(str(c)) for c in grid.columns) > 4 * cols
    ax.set_xticks(range(cols), grid.columns, rotation=35 if crowded else 0, ha="right" if crowded else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(rows), grid.index)
    ax.grid(False)
    ax.set_xlabel("Layer")
    ax.set_ylabel("Sequential task")
    if rows * cols <= 150:
        top = np.nanmax(grid.to_numpy(float))
        for (r, c), v in np.ndenumerate(grid.to_numpy(float)):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 * top else "white")
    fig.colorbar(image, ax=ax, label="Active mask entries (%)", shrink=0.9)
    return fig


# --- Fig. 8 ----------------------------------------------------------------------------------

@styled
def pseudo_label_accuracy(pseudo_labels: pd.DataFrame) -> Figure:
    """Fig. 8: accuracy (%) of the selected pseudo-labels against the true labels, per task,
    against the sampling ratio; one panel for EMS, one for CB-EMS."""
    shown = [s for s in ("ems", "cb_ems") if s in set(pseudo_labels["sampler"])]
    if not shown:
        raise ValueError("pseudo_labels: no rows for sampler ems or cb_ems")
    frame = pseudo_labels.assign(ratio=_percent_axis(pseudo_labels["ratio"]))
    tasks = [t for t in pd.unique(frame["task"]) if t != AVERAGE]
    fig = Figure(figsize=(3.4 * len(shown) + 1.6, 3.2), layout="constrained")
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, sampler, letter in zip(axes, shown, "abc"):
        part = frame[frame["sampler"] == sampler]
        for i, task in enumerate(tasks):
            s = _mean_std(part[part["task"] == task], ["ratio"], "pl_accuracy")
            ax.plot(s["ratio"], s["mean"], marker="o", label=task, color=PALETTE[i % len(PALETTE)])
        if (part["task"] == AVERAGE).any():
            s = _mean_std(part[part["task"] == AVERAGE], ["ratio"], "pl_accuracy")
            ax.plot(s["ratio"], s["mean"], marker="s", linewidth=2.2, color=AVERAGE_COLOUR, label="Average")
        ax.set_title(f"({letter}) {SAMPLERS[sampler]}")
        ax.set_xlabel("Sampling ratio (%)")
        ax.set_xticks(sorted(part["ratio"].unique()))
    axes[0].set_ylabel("Pseudo-label accuracy (%)")
    _legend_right(axes[-1])
    return fig


# --- Fig. 9 ----------------------------------------------------------------------------------

@styled
def entropy_by_class(scores: pd.DataFrame, tasks: list[str] | None = None, n_tasks: int = 2) -> Figure:
    """Fig. 9: entropy of each fine-tuned model's predictions on its unlabeled pool, one box per
    pseudo-label class (the groups CB-EMS draws from), classes sorted by median entropy.
    Without `tasks`, the `n_tasks` tasks with the most classes are shown."""
    frame = _nonempty(scores, "scores")
    if tasks is None:
        classes = frame.groupby("task", sort=False)["pseudo_label"].nunique()
        tasks = list(classes.sort_values(ascending=False, kind="stable").index[:n_tasks])
    most = max(frame.loc[frame["task"].isin(tasks)].groupby("task")["pseudo_label"].nunique())
    fig = Figure(figsize=(max(5.0, 0.22 * most + 1.5), 2.6 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    for ax, task in zip(axes, tasks):
        part = _nonempty(frame[frame["task"] == task], f"scores of task '{task}'")
        groups = part.groupby("pseudo_label")["entropy"]
        order = groups.median().sort_values(kind="stable").index
        ax.boxplot([groups.get_group(c).to_numpy() for c in order], tick_labels=[str(c) for c in order],
                   widths=0.6, flierprops={"markersize": 2, "alpha": 0.5},
                   medianprops={"color": AVERAGE_COLOUR})
        ax.set_title(f"{task}: {len(order)} classes, {len(part)} pool samples")
        ax.set_ylabel("Entropy (nats)")
        ax.grid(axis="x", visible=False)
        if len(order) > 20:
            ax.tick_params(axis="x", labelrotation=90)
    axes[-1].set_xlabel("Pseudo-label class (sorted by median entropy)")
    return fig


# --- Figs. 11 and 12 ---------------------------------------------------------------------------

@styled
def trace_accuracy(trace: pd.DataFrame) -> Figure:
    """Fig. 11: test accuracy of every task and their average along CALM's mask optimisation,
    the sequential steps laid end to end; dotted lines mark where a sequential task is merged."""
    frame = _nonempty(trace, "trace accuracy").sort_values(["step", "iteration"], kind="stable")
    steps = frame.groupby("step", sort=True).agg(task=("task_merged", "first"), first=("iteration", "min"),
                                                 last=("iteration", "max"))
    # Step k's iteration i sits at i + the iterations of the steps before it.
    offsets = dict(zip(steps.index, steps["last"].cumsum().shift(fill_value=0)))
    frame = frame.assign(x=frame["iteration"] + frame["step"].map(offsets))
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    merged_at = {row["task"]: step for step, row in steps.iterrows()}
    for i, task in enumerate(t for t in pd.unique(frame["task"]) if t != AVERAGE):
        part = frame[frame["task"] == task]
        sequential = task in merged_at  # dashed: a task of S̄, merged at its step
        ax.plot(part["x"], part["accuracy"], marker="o", markersize=3, linewidth=1.2 if sequential else 1,
                linestyle="--" if sequential else "-", color=PALETTE[i % len(PALETTE)],
                label=f"{task} (S̄, step {merged_at[task]})" if sequential else task)
    avg = (frame[frame["task"] == AVERAGE] if (frame["task"] == AVERAGE).any()
           else frame.groupby(["step", "x"], as_index=False)["accuracy"].mean())
    ax.plot(avg["x"], avg["accuracy"], marker="s", markersize=3.5, linewidth=2.4, color=AVERAGE_COLOUR,
            label="Average", zorder=5)
    for step, row in steps.iterrows():
        start = offsets[step]  # where the step's mask optimisation begins (its iteration 0)
        ax.axvline(start, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(f"step {step}: merge {row['task']}", (start, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 3), textcoords="offset points", va="bottom", fontsize=7, color="0.3")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)
    ax.set_xlabel("Mask-optimisation iteration (sequential steps end to end)")
    ax.set_ylabel("Test accuracy (%)")
    _legend_right(ax)
    return fig


@styled
def active_fraction(traces: pd.DataFrame) -> Figure:
    """Fig. 12: fraction (%) of mask entries that are on (R > 0) over the iterations of each
    sequential step (`run` labels a step's trace)."""
    frame = _nonempty(traces, "traces")
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(pd.unique(frame["run"])):
        part = frame[frame["run"] == run].sort_values("iteration")
        ax.plot(part["iteration"], part["active_fraction"] * 100, marker="o", markersize=2.5, label=run,
                color=PALETTE[i % len(PALETTE)])
    # The mask starts at ~1e-5 of the entries and grows by orders of magnitude: a log axis.
    log = bool((frame["active_fraction"] > 0).all())
    if log:
        ax.set_yscale("log")
        # plain numbers (0.01, 0.5, 3); with few decades the minor ticks at 2 and 5 are labelled
        # too (all eight would run into each other and into the decade's label)
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        some = FuncFormatter(lambda v, _: f"{v:g}" if round(v / 10 ** np.floor(np.log10(v) + 1e-9)) in (2, 5) else "")
        decades = np.log10(frame["active_fraction"].max() / frame["active_fraction"].min())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(some if decades < 1.5 else NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Mask-optimisation iteration")
    ax.set_ylabel("Active mask entries (%" + (", log scale)" if log else ")"))
    _legend_right(ax, title="Sequential task")
    return fig


# --- fine-tuning seeds (not in the paper) ---------------------------------------------------

@styled
def seed_averages(per_seed: pd.DataFrame, target: str = "CALM") -> Figure:
    """Each method's average accuracy under each fine-tuning seed: a row per method, best mean
    on top, a marker per seed and a bar at the mean, so that 30 rows stay legible where a line
    per method would not. `target` is red, with a dotted line at its mean to read every row
    against; the individual models' mean is a dashed line. The pretrained model is left out:
    far below the merged methods, it would squeeze their differences into a sliver of the axis."""
    frame = _nonempty(per_seed[per_seed["method"] != "Pretrained"], "per-seed results")
    means = frame.groupby("method", sort=False)["Avg"].mean()
    references = [m for m in means.index if m in REFERENCES]
    rows = means.drop(references).sort_values(ascending=True, kind="stable")  # barh draws bottom up
    seeds = sorted(frame["seed"].unique())
    keyed = next((m for m in rows.index if m != target), target)  # the row whose markers the legend shows
    fig = Figure(figsize=(7.5, 1.2 + 0.26 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    for y, (m, mean) in enumerate(rows.items()):
        colour = OURS_COLOUR if m == target else "0.25"
        ax.plot([mean, mean], [y - 0.32, y + 0.32], color=colour, linewidth=2.4, zorder=4)
        for k, seed in enumerate(seeds):
            value = frame[(frame["method"] == m) & (frame["seed"] == seed)]["Avg"]
            ax.scatter(value, [y] * len(value), marker="os^Dv"[k % 5], s=18, facecolors="none",
                       edgecolors=OURS_COLOUR if m == target else PALETTE[k % len(PALETTE)], zorder=5,
                       label=f"seed {seed}" if m == keyed else None)
    if target in rows.index:
        ax.axvline(rows[target], color=OURS_COLOUR, linestyle=":", linewidth=1.0, zorder=1)
    for m in references:
        ax.axvline(means[m], color="black", linestyle="--", linewidth=1.0, zorder=1, label=f"{m} (mean)")
    ax.set_yticks(range(len(rows)), list(rows.index))
    for label in ax.get_yticklabels():
        if label.get_text() == target:
            label.set_color(OURS_COLOUR)
            label.set_fontweight("bold")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"Average test accuracy (%); bar: mean over {len(seeds)} fine-tuning seeds")
    ax.grid(axis="y", visible=False)
    _legend_right(ax)
    return fig


# --- a user's sweep grid (not in the paper) ----------------------------------------------------

@styled
def grid_accuracy(grid: pd.DataFrame, keys: list[str]) -> Figure:
    """Average accuracy of each grid row (a dot) against each swept key (a panel), with the mean
    over the rows sharing a value (the line); a key of text values is categorical."""
    runs = _nonempty(grid[grid["task"] == AVERAGE], "the grid")
    fig = Figure(figsize=(3.0 * len(keys), 3.0), layout="constrained")
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    for ax, key in zip(axes, keys):
        numeric = pd.api.types.is_numeric_dtype(runs[key])
        values = sorted(runs[key].unique()) if numeric else list(pd.unique(runs[key]))
        x = runs[key] if numeric else runs[key].map({v: i for i, v in enumerate(values)})
        ax.scatter(x, runs["accuracy"], color=PALETTE[0], alpha=0.6, zorder=3)
        mean = runs.assign(x=x).groupby("x", sort=True)["accuracy"].mean()
        ax.plot(mean.index, mean.values, color=AVERAGE_COLOUR, marker="s", zorder=4)
        if numeric and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=30, ha="right")
        ax.set_xlabel(key)
    axes[0].set_ylabel("Average test accuracy (%)")
    return fig


# --- the bases sweep (not in the paper) --------------------------------------------------------

@styled
def bases_accuracy(table: pd.DataFrame, best: str, best_accuracy: float) -> Figure:
    """CALM over each base merge (bases_table's rows): per base, a marker per strategy at its
    mean average accuracy with its fine-tuning seeds as faint dots and ± s.d. as a bar, the base
    method alone as a hollow square, and the best single-model method as a dashed line."""
    from calm.paper.tables import STRATEGIES

    rows = _nonempty(table, "the bases table")
    bases = list(pd.unique(rows["base_label"]))
    strategies = list(pd.unique(rows["strategy"]))
    width = 0.7 / max(len(strategies), 1)
    fig = Figure(figsize=(1.6 * len(bases) + 3.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    seed_columns = [c for c in rows.columns if c.startswith("accuracy (seed ")]
    for j, strategy in enumerate(strategies):
        part = rows[rows["strategy"] == strategy]
        x = np.array([bases.index(b) for b in part["base_label"]]) + (j - (len(strategies) - 1) / 2) * width
        colour = OURS_COLOUR if strategy == "both" else PALETTE[j % len(PALETTE)]
        for c in seed_columns:
            ax.scatter(x - 0.06, part[c], s=10, color=colour, alpha=0.35, zorder=2)
        ax.errorbar(x, part["accuracy"], yerr=part["accuracy s.d."].fillna(0), fmt="o", capsize=3,
                    color=colour, label=f"CALM, {STRATEGIES.get(strategy, strategy)}", zorder=3)
    alone = rows.drop_duplicates("base_label")
    ax.scatter([bases.index(b) for b in alone["base_label"]], alone["base accuracy"], marker="s", s=40,
               facecolors="none", edgecolors="black", label="the base alone (every task)", zorder=4)
    ax.axhline(best_accuracy, color="0.4", linestyle="--", linewidth=1.0, label=f"best single-model: {best}")
    ax.set_xticks(range(len(bases)), bases)
    ax.set_xlim(-0.6, len(bases) - 0.4)
    ax.set_xlabel("Base merge of S")
    ax.set_ylabel("Average test accuracy (%)")
    _legend_right(ax)
    return fig
