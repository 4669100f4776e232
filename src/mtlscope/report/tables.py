"""Tables written as CSV with Markdown and LaTeX copies beside them.

``to_markdown`` and ``to_latex`` format cells the same way (``format_number``): floats (Python or NumPy) with
``digits`` decimals, or in scientific notation with ``digits`` significant digits when they are smaller than
0.01 in magnitude (so a sharpness of 0.000674 reads ``6.740e-04``, not ``0.0007``); NaN as ``nan``;
everything else with ``str``. ``to_latex`` writes booleans as ``yes``/``no`` (plain text, so
the table needs no package beyond ``booktabs``) and escapes LaTeX's special characters in cells, headers and
the caption. Neither needs jinja2 or pandas' Styler.
"""

from __future__ import annotations

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


def format_number(value: float, digits: int = 4) -> str:
    """``digits`` decimals, or scientific notation for nonzero magnitudes below 0.01 (module docstring)."""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return format_number(value, digits)
        return str(value)

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
    if isinstance(value, float):
        return format_number(value, digits)
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
