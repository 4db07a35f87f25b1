"""The one house style of every figure (`STYLE`, `PALETTE`, `styled`), `save_figure` (PNG for
the report, PDF for papers), and the small frame helpers the figure builders share."""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib import cycler
from matplotlib.figure import Figure

from calm import sampling
from calm.io import atomic_path
from calm.paper.tables import AVERAGE

mpl.use("Agg")

# Okabe–Ito (colour-blind safe; its yellow and black left out), brown and grey, then Paul Tol's
# muted colours, none close to an earlier one: a 13-method bar chart stays readable.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8c564b", "#7f7f7f",
           "#332288", "#999933", "#882255", "#44AA99", "#DDCC77", "#117733", "#AA4499", "#88CCEE"]
# CALM's bars: red (no palette colour is), outlined in black.
OURS_COLOUR = "#d62728"
AVERAGE_COLOUR = "#C00000"
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "axes.prop_cycle": cycler(color=PALETTE),
    "pdf.fonttype": 42,  # embed TrueType, so the PDF's text stays text in a paper
}
SAMPLERS = {name: s.label for name, s in sampling.SAMPLERS.items()}


def styled(builder):
    """Build the figure under STYLE (rcParams are read when artists are made)."""
    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return builder(*args, **kwargs)
    return wrapper


def save_figure(fig: Figure, out_prefix: str | Path) -> dict[str, Path]:
    """PREFIX.png (200 dpi) and PREFIX.pdf; returns the paths."""
    prefix = Path(out_prefix)
    paths = {}
    for fmt in ("png", "pdf"):
        path = prefix.with_name(prefix.name + "." + fmt)
        with atomic_path(path) as tmp:
            # No creation date in the PDF: the same figure gives the same bytes.
            fig.savefig(tmp, format=fmt, dpi=200, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths[fmt] = path
    return paths


def _nonempty(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    if frame.empty:
        raise ValueError(f"{what}: no rows to plot")
    return frame


def _percent_axis(values: pd.Series) -> pd.Series:
    """Ratios stored as fractions are shown in percent."""
    return values * 100 if values.max() <= 1 else values


def _average_rows(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """One row per run (a setting plus whatever replicate columns the frame has) with the run's
    average over tasks: its "average" row if present, else the mean of its task rows."""
    if (frame["task"] == AVERAGE).any():
        return frame[frame["task"] == AVERAGE]
    replicate = [c for c in frame.columns if c not in ("task", value) and frame[c].dtype.kind not in "f"]
    return frame.groupby(sorted(set(keys) | set(replicate)), sort=False)[value].mean().reset_index()


def _mean_std(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation (0 for a single run) and number of runs per setting."""
    g = frame.groupby(keys, sort=True)[value]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()})
    return out.reset_index()


def _legend_right(ax, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)
