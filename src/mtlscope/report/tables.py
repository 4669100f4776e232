"""Tables written as CSV with Markdown and LaTeX copies beside them.

Every table mtlscope writes — Markdown, LaTeX, the HTML report and a preset's ``summary.md`` — formats its
numbers with one function, ``format_number``: ``digits`` (4) significant digits, in plain notation from 0.001
to 100000 in magnitude (``0.9663``, ``0.007136``, ``-595.9``, ``12.50``) and in scientific notation outside
(``1.371e-05``, ``2.500e+06``), so a sharpness of 0.000674 reads ``6.740e-04``, not ``0.0007``; whole numbers
as integers (``3``, ``0``, ``1020``); NaN as ``nan``. Everything else is written with ``str``.
``to_latex`` writes booleans as ``yes``/``no`` (plain text, so
the table needs no package beyond ``booktabs``) and escapes LaTeX's special characters in cells, headers and
the caption. Neither needs jinja2 or pandas' Styler.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

#: LaTeX replacements of the characters that are special in text mode (applied in one pass).
LATEX_ESCAPES: dict[str, str] = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_TABLE = str.maketrans(LATEX_ESCAPES)


#: Magnitudes written in plain notation by ``format_number``: [SCIENTIFIC_BELOW, SCIENTIFIC_FROM).
SCIENTIFIC_BELOW = 1e-3
SCIENTIFIC_FROM = 1e5


def format_number(value: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, scientific outside [0.001, 100000) (module docstring)."""
    number = float(value)
    if not math.isfinite(number):
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    if number.is_integer() and abs(number) < SCIENTIFIC_FROM:
        return str(int(number))
    scientific = f"{number:.{digits - 1}e}"
    magnitude = abs(float(scientific))  # after rounding: 99999.5 is written as 1.000e+05
    if magnitude < SCIENTIFIC_BELOW or magnitude >= SCIENTIFIC_FROM:
        return scientific
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{float(scientific):.{decimals}f}"


def format_cell(value: object, digits: int = 4) -> str:
    """A table cell: floats (Python or NumPy) by ``format_number``, everything else with ``str``."""
    if isinstance(value, float | np.floating):
        return format_number(float(value), digits)
    return str(value)


def formatted(frame: pd.DataFrame, digits: int = 4, na: str = "nan") -> pd.DataFrame:
    """``frame`` with every cell written by ``format_cell`` and missing values (NaN, None) as ``na``: the text
    of a table rendered elsewhere (the HTML report)."""

    def cell(value: object) -> str:
        missing = value is None or (isinstance(value, float | np.floating) and math.isnan(value))
        return na if missing else format_cell(value, digits)

    if frame.empty:
        return frame.astype(object)
    return frame.astype(object).apply(lambda column: column.map(cell))


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(value: object) -> str:
        return format_cell(value, digits)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def escape_latex(text: object) -> str:
    """``str(text)`` with LaTeX's special characters escaped for text mode (newlines become spaces)."""
    return " ".join(str(text).splitlines()).translate(_LATEX_TABLE)


def _latex_cell(value: object, digits: int) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return format_number(float(value), digits)
    return escape_latex(value)


def _alignment(column: pd.Series) -> str:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    return "r" if numeric else "l"


def to_latex(frame: pd.DataFrame, digits: int = 4, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``; needs ``\\usepackage{booktabs}``).

    Numeric columns are right-aligned, the others left-aligned; cells are formatted as in ``to_markdown``,
    booleans as ``yes``/``no``; headers, text cells and ``caption`` are escaped (``escape_latex``), ``label`` is
    written as given. Without ``caption`` and ``label`` the result is a bare ``tabular`` environment; with
    either, it is wrapped in a ``table`` environment (``[htbp]``, centered, caption above the table).
    """
    columns = "".join(_alignment(frame.iloc[:, i]) for i in range(frame.shape[1]))
    header = " & ".join(escape_latex(name) for name in frame.columns) + r" \\"
    body = [" & ".join(_latex_cell(value, digits) for value in row) + r" \\" for row in frame.itertuples(index=False)]
    lines = [f"\\begin{{tabular}}{{{columns}}}", r"\toprule", header, r"\midrule", *body, r"\bottomrule"]
    lines.append(r"\end{tabular}")
    if caption is None and label is None:
        return "\n".join(lines) + "\n"
    wrapped = [r"\begin{table}[htbp]", r"\centering"]
    if caption is not None:
        wrapped.append(f"\\caption{{{escape_latex(caption)}}}")
    if label is not None:
        wrapped.append(f"\\label{{{label}}}")
    return "\n".join([*wrapped, *lines, r"\end{table}"]) + "\n"


def write_table(frame: pd.DataFrame, path: str | Path, title: str = "") -> list[Path]:
    """Write ``frame`` to ``path`` (CSV) and beside it with suffixes ``.md`` (Markdown, ``title`` as its first
    paragraph) and ``.tex`` (``to_latex``, ``title`` as the caption); returns the three paths in that order."""
    csv_path = Path(path)
    frame.to_csv(csv_path, index=False)
    markdown = csv_path.with_suffix(".md")
    markdown.write_text((f"{title}\n\n" if title else "") + to_markdown(frame))
    latex = csv_path.with_suffix(".tex")
    latex.write_text(to_latex(frame, caption=title or None))
    return [csv_path, markdown, latex]
