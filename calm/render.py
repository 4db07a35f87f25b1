"""Rendering a table of numbers as Markdown, LaTeX (booktabs) and HTML, best cells in bold.

Used by the main results table (calm/results_table.py) and the paper's tables (calm/paper/tables.py).
"""
from __future__ import annotations

import math
import numbers
import re

import pandas as pd


def best_cells(table: pd.DataFrame, exclude: tuple[str, ...] = ("Individual",)) -> set[tuple]:
    """(row, column) of each numeric column's highest value among the rows not excluded (ties: all).

    A row is excluded when its label, or any level of a multi-level label, is in `exclude`."""
    def excluded(label) -> bool:
        return any(part in exclude for part in (label if isinstance(label, tuple) else (label,)))

    candidates = table.loc[[r for r in table.index if not excluded(r)]]
    out = set()
    for c in table.columns:
        values = pd.to_numeric(candidates[c], errors="coerce")
        if values.notna().any():
            out |= {(r, c) for r in values.index[values == values.max()]}
    return out


def _cell(value, digits: int) -> str:
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _rows(table: pd.DataFrame):
    """(label, [cell values]) per row, each cell keeping its column's type (iterrows would
    turn a row of ints and floats into floats)."""
    for i, name in enumerate(table.index):
        yield name, [table.iloc[i, j] for j in range(table.shape[1])]


def _header(names) -> list[str]:
    return [(n or "method")[0].upper() + (n or "method")[1:] for n in names]


def _labels(row) -> list[str]:
    return [str(x) for x in (row if isinstance(row, tuple) else (row,))]


def to_markdown(table: pd.DataFrame, digits: int = 1, bold_best: bool = True,
                exclude_from_best: tuple[str, ...] = ("Individual",)) -> str:
    """A GitHub Markdown table; the best row of each column (among those not excluded) is bold.

    The index names head the label columns ('Method' for an unnamed one); a multi-level index
    gives one label column per level."""
    cols = list(table.columns)
    best = best_cells(table, exclude_from_best) if bold_best else set()
    head = _header(table.index.names)
    lines = ["| " + " | ".join([x.replace("|", "\\|") for x in head + [str(c) for c in cols]]) + " |",
             "|" + "---|" * len(head) + "---:|" * len(cols)]
    for name, values in _rows(table):
        cells = [f"**{_cell(v, digits)}**" if (name, c) in best else _cell(v, digits) for v, c in zip(values, cols)]
        text = [x.replace("|", "\\|") for x in _labels(name)]
        lines.append("| " + " | ".join(text + cells) + " |")
    return "\n".join(lines) + "\n"


# Characters of row and column names and how LaTeX writes them.
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "λ": r"$\lambda$", "α": r"$\alpha$", "θ": r"$\theta$", "τ": r"$\tau$", "−": "$-$",
          "⊙": r"$\odot$", "|": "$|$", "S\u0304": r"$\bar{S}$", "–": "--", "≤": r"$\le$"}


def latex_escape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        for key, value in _LATEX.items():
            if text.startswith(key, i):
                out.append(value)
                i += len(key)
                break
        else:
            out.append(text[i])
            i += 1
    # "$|$$\bar{S}$$|$" -> "$|\bar{S}|$": adjacent formulas become one
    return re.sub(r"(?<!\\)\$\$", "", "".join(out))


def to_latex(table: pd.DataFrame, digits: int = 1, bold_best: bool = True,
             exclude_from_best: tuple[str, ...] = ("Individual",), labels: dict[str, str] | None = None) -> str:
    """A booktabs `tabular` (needs \\usepackage{booktabs}); best cells as in to_markdown, in bold.

    `labels` gives LaTeX for row labels that plain escaping renders badly (e.g. formulas)."""
    labels = labels or {}
    cols = list(table.columns)
    best = best_cells(table, exclude_from_best) if bold_best else set()
    head = _header(table.index.names)
    lines = [r"\begin{tabular}{" + "l" * len(head) + "r" * len(cols) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in head + [str(c) for c in cols]) + r" \\", r"\midrule"]
    for name, values in _rows(table):
        cells = [_cell(v, digits) for v in values]
        cells = [r"\textbf{" + v + "}" if (name, c) in best else v for v, c in zip(cells, cols)]
        cells = [v.replace("–", "--") for v in cells]
        text = [labels.get(x, latex_escape(x)) for x in _labels(name)]
        lines.append(" & ".join(text + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, digits: int = 1, bold_best: bool = True,
            exclude_from_best: tuple[str, ...] = ("Individual",), title: str = "") -> str:
    """A standalone HTML page holding the table (what the Snakemake report shows inline);
    best cells as in to_markdown, in bold."""
    from html import escape

    cols = list(table.columns)
    best = best_cells(table, exclude_from_best) if bold_best else set()
    head = _header(table.index.names)
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{escape(title)}</title>",
           "<style>body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse}"
           "th,td{padding:3px 9px}thead th{border-bottom:1px solid #333}tbody tr:last-child td{border-bottom:1px solid #333}"
           "table{border-top:1px solid #333}td.n{text-align:right}th.n{text-align:right}</style></head><body>",
           "<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head)
           + "".join(f'<th class="n">{escape(str(c))}</th>' for c in cols) + "</tr></thead><tbody>"]
    for name, values in _rows(table):
        cells = []
        for v, c in zip(values, cols):
            text = escape(_cell(v, digits))
            cells.append('<td class="n">' + (f"<b>{text}</b>" if (name, c) in best else text) + "</td>")
        out.append("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in _labels(name)) + "".join(cells) + "</tr>")
    out += ["</tbody></table></body></html>"]
    return "\n".join(out) + "\n"
