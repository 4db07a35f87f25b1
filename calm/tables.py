"""The results table: per-task accuracy, average and normalised average of each method."""
from __future__ import annotations

import math

import pandas as pd

from calm.evaluate import accuracy, average, normalised, paired_bootstrap


def results_table(rows: dict[str, pd.DataFrame], individual: str = "Individual") -> pd.DataFrame:
    """One row per method (dict order) with accuracy in %, 'Avg' and 'Norm. avg' (% of individual)."""
    ind = accuracy(rows[individual])
    records = []
    for name, preds in rows.items():
        acc = accuracy(preds)
        missing = set(ind) - set(acc)
        if missing:
            raise ValueError(f"{name}: no predictions for tasks {sorted(missing)}")
        rec = {"method": name, **{t: 100 * acc[t] for t in ind}}
        rec["Avg"] = 100 * average({t: acc[t] for t in ind})
        rec["Norm. avg"] = 100 * average(normalised({t: acc[t] for t in ind}, ind))
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("method")


def best_of(rows: dict[str, pd.DataFrame]) -> str:
    """The name of the row with the highest average accuracy (ties: the first)."""
    scores = {name: average(accuracy(p)) for name, p in rows.items()}
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


def to_markdown(table: pd.DataFrame, digits: int = 1, bold_best: bool = True,
                exclude_from_best: tuple[str, ...] = ("Individual",)) -> str:
    """A GitHub Markdown table; the best merged method of each column is bold."""
    cols = list(table.columns)
    candidates = table.drop(index=[r for r in exclude_from_best if r in table.index])
    best = {c: candidates[c].max() for c in cols} if bold_best and len(candidates) else {}
    lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            text = "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
            if c in best and name in candidates.index and v == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparisons(rows: dict[str, pd.DataFrame], target: str, others: list[str], n: int, seed: int) -> list[dict]:
    """Paired-bootstrap intervals of target − other average accuracy, in points."""
    out = []
    for other in others:
        ci = paired_bootstrap(rows[target], rows[other], n=n, seed=seed)
        out.append({"comparison": f"{target} − {other}",
                    **{k: (100 * v if k != "resamples" else v) for k, v in ci.items()}})
    return out
