"""Fig. 3, the methods compared: each merged method's accuracy relative to the individual
models, grouped by the kind of method (calm.methods' registry says which), in the house style
of calm/paper/style.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from calm.methods import METHODS
from calm.paper.style import OURS_COLOUR, _nonempty, styled
from calm.paper.tables import REFERENCES

# The kinds Fig. 3 groups methods by, top to bottom, and their colours (CALM's red stands apart).
KINDS = {"CALM": OURS_COLOUR, "data-free": "#0072B2", "data-driven": "#E69F00", "a model per task": "#009E73",
         "other": "#7f7f7f"}


def method_kind(label: str) -> str:
    """A results-table row's kind, from the registry entry whose label starts it (the longest:
    'Iso-CTS' before 'Iso-C'): a model per task, data-driven (it reads per-task data), data-free."""
    if label.startswith("CALM"):
        return "CALM"
    matches = [spec for spec in METHODS.values() if label.startswith(spec.label)]
    if not matches:
        return "other"
    spec = max(matches, key=lambda m: len(m.label))
    return "a model per task" if spec.per_task else "data-driven" if spec.needs else "data-free"


@styled
def normalised_accuracy(main: pd.DataFrame) -> Figure:
    """Fig. 3: each merged method's accuracy relative to the individual fine-tuned models (%).
    (a) the average, methods grouped by kind (CALM, data-free, data-driven, a model per task) and
    sorted by it within each kind, with the s.d. over fine-tuning seeds as error bars where the
    frame also holds the seeds table (rows with source 'seeds', as the workflow stacks it);
    (b) the per-task detail as a heat map, rows as in (a)."""
    seeds = None
    if "source" in main.columns:
        seeds = main[main["source"] == "seeds"].set_index("method")
        main = main[main["source"] == "main"].dropna(axis=1, how="all").drop(columns=["source", "path"],
                                                                            errors="ignore")
    frame = main.set_index("method") if "method" in main.columns else main
    if "Individual" not in frame.index:
        raise ValueError("results table: no 'Individual' row to normalise by")
    tasks = [c for c in frame.columns if c not in ("Avg", "Norm. avg")]
    methods = [m for m in frame.index if m not in REFERENCES]
    _nonempty(frame.loc[methods], "results table without references")
    rel = frame.loc[methods, tasks].div(frame.loc["Individual", tasks]) * 100
    average = frame.loc[methods, "Norm. avg"] if "Norm. avg" in frame else rel.mean(axis=1)
    kinds = {m: method_kind(m) for m in methods}
    order = [m for kind in KINDS for m in average[[k == kind for k in kinds.values()]].sort_values(
        ascending=False).index]
    spread = None
    if seeds is not None and "Norm. avg s.d." in seeds.columns:
        spread = seeds["Norm. avg s.d."].reindex(order)

    height = max(3.0, 0.27 * len(order) + 1.3)
    fig = Figure(figsize=(11.0, height), layout="constrained")
    bars_ax, heat_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.25]})
    y = np.arange(len(order))
    values = average.loc[order].to_numpy(float)
    colours = [KINDS[kinds[m]] for m in order]
    bars_ax.barh(y, values, color=colours, edgecolor=["black" if kinds[m] == "CALM" else "white" for m in order],
                 linewidth=0.6, xerr=None if spread is None else spread.fillna(0).to_numpy(float),
                 error_kw={"elinewidth": 0.8, "capsize": 2})
    ends = values + (0 if spread is None else spread.fillna(0).to_numpy(float))
    for yi, v, end in zip(y, values, ends):
        bars_ax.text(end + 0.4, yi, f"{v:.1f}", va="center", fontsize=7)
    bars_ax.set_xlim(max(0.0, np.floor(np.nanmin(values) / 5) * 5 - 5), max(105.0, float(np.nanmax(ends)) + 4))
    bars_ax.axvline(100, color="black", linestyle="--", linewidth=0.9)
    ours = [v for m, v in zip(order, values) if kinds[m] == "CALM"]
    if ours:  # CALM's average across the panel, to read every method against it
        bars_ax.axvline(ours[0], color=OURS_COLOUR, linestyle=":", linewidth=1.0)
    bars_ax.set_yticks(y, order)
    bars_ax.set_ylim(len(order) - 0.5, -0.5)  # the heat map's rows
    bars_ax.set_xlabel("Average accuracy relative to individual models (%)")
    bars_ax.grid(axis="y", visible=False)
    title = "(a) Average" + ("" if spread is None or spread.isna().all() else ", ± s.d. over fine-tuning seeds")
    bars_ax.set_title(title, loc="left")
    present = [k for k in KINDS if k in kinds.values()]
    bars_ax.legend([Patch(color=KINDS[k]) for k in present], present, loc="upper center",
                   bbox_to_anchor=(0.45, -0.09), ncol=len(present), fontsize=7, handlelength=1.2)

    columns = tasks + ["Average"]
    grid = rel.loc[order, tasks].assign(Average=average.loc[order]).to_numpy(float)
    image = heat_ax.imshow(grid, aspect="auto", cmap="viridis", vmin=np.floor(np.nanmin(grid)), vmax=100.0)
    for (i, j), v in np.ndenumerate(grid):
        heat_ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                     color="black" if v > np.nanmin(grid) + 0.6 * (100 - np.nanmin(grid)) else "white")
    heat_ax.set_xticks(np.arange(len(columns)), columns, rotation=30, ha="right", rotation_mode="anchor")
    heat_ax.set_yticks(y, [])
    heat_ax.axvline(len(tasks) - 0.5, color="white", linewidth=2)
    heat_ax.grid(False)
    heat_ax.set_title("(b) Per task (% of the individual model)", loc="left")
    fig.colorbar(image, ax=heat_ax, shrink=0.8, label="% of individual", extend="max" if np.nanmax(grid) > 100 else "neither")
    for ax in (bars_ax, heat_ax):  # a line between kinds
        for i in range(1, len(order)):
            if kinds[order[i]] != kinds[order[i - 1]]:
                ax.axhline(i - 0.5, color="grey" if ax is bars_ax else "white", linewidth=1.2)
    return fig
