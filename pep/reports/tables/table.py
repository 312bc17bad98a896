"""The Table type and how it is written: the cell formatting every table shares, then Markdown
for reading and LaTeX (booktabs, through pandas' Styler) for papers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pep.reports.results import _is_number

HEADERS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL"}
MISSING = "–"


@dataclass
class Table:
    """One table: display strings, which cells are bold, the plain numbers for the CSV, and the
    words around it. `groups` maps a row position to the label of a block that starts there,
    set apart from the rows above by a rule."""
    name: str
    cells: pd.DataFrame
    bold: pd.DataFrame
    numbers: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)
    groups: dict[int, str] = field(default_factory=dict)
    text_columns: int = 1  # the leading columns of words (left-aligned), before the numbers
    follow: list["Table"] = field(default_factory=list)  # shown after it, in the same files


# ----------------------------------------------------------------------------- formatting

def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None or not math.isfinite(value) or (value < 0 and not signed):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _valid(value: Any) -> float | None:
    """A stat as a float, None for COCOeval's -1 (no ground truth in that range) or a gap."""
    return float(value) if _is_number(value) and value >= 0 else None


def _best(values: list[float | None], lower_is_better: bool = False, digits: int = 1) -> list[bool]:
    present = [v for v in values if v is not None]
    if len(present) < 2:  # nothing to rank against
        return [False] * len(values)
    target = min(present) if lower_is_better else max(present)
    # equal at the shown precision counts as a tie
    return [v is not None and round(v, digits) == round(target, digits) for v in values]


# ----------------------------------------------------------------------------- rendering

def to_markdown(table: Table) -> str:
    out = [f"**{table.caption}**", ""]
    starts = sorted({0, *table.groups})
    for start, end in zip(starts, starts[1:] + [len(table.cells)]):
        if start in table.groups:
            out += ["", f"*{table.groups[start]}:*", ""]
        out.append("| " + " | ".join(_md(c) for c in table.cells.columns) + " |")
        out.append("|" + "|".join(":---" if i < table.text_columns else "---:"
                                  for i in range(len(table.cells.columns))) + "|")
        for i in range(start, end):
            row = [(f"**{_md(v)}**" if table.bold.iat[i, j] and v != MISSING else _md(v))
                   for j, v in enumerate(table.cells.iloc[i])]
            out.append("| " + " | ".join(row) + " |")
    if table.notes:
        out += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n" + "".join("\n" + to_markdown(t) for t in table.follow)


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "−": "-"}


def latex_escape(text: Any) -> str:
    """Text as pdflatex reads it without extra packages: TeX's specials escaped, and the few
    non-ASCII signs the tables use written as TeX."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs table through pandas' Styler; bold through its CSS-to-LaTeX conversion."""
    cells = table.cells.map(latex_escape)
    cells.columns = [latex_escape(c) for c in cells.columns]
    bold = table.bold.copy()
    bold.columns = cells.columns
    styler = cells.style.hide(axis="index")
    styler = styler.apply(lambda _: np.where(bold.to_numpy(), "font-weight: bold;", ""), axis=None)
    body = styler.to_latex(hrules=True, convert_css=True, environment="table", position="htbp",
                           position_float="centering", label=f"tab:{table.name}",
                           caption=latex_escape(table.caption),
                           column_format="l" * table.text_columns + "r" * (len(cells.columns) - table.text_columns))
    lines = body.splitlines()
    if table.groups:
        # A rule and the block's label before each group (Styler writes one line per row).
        first_row = lines.index(r"\midrule") + 1
        for position in sorted(table.groups, reverse=True):
            label = latex_escape(table.groups[position])
            rule = [] if position == 0 else [r"\midrule"]  # the header's rule is there already
            lines[first_row + position:first_row + position] = [
                *rule, rf"\multicolumn{{{len(cells.columns)}}}{{l}}{{\emph{{{label}}}}} \\"]
    if table.notes:
        end = lines.index(r"\end{table}")
        notes = " ".join(latex_escape(n) for n in table.notes)
        lines[end:end] = [rf"\par\smallskip{{\footnotesize {notes}\par}}"]
    return "\n".join(lines) + "\n" + "".join("\n" + to_latex(t) for t in table.follow)
