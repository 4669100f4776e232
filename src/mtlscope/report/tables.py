"""Tables written as CSV with a Markdown copy beside them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def to_markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(frame: pd.DataFrame, path: str | Path, title: str = "") -> list[Path]:
    """Write ``frame`` to ``path`` (CSV) and ``path`` with suffix ``.md``; returns both paths."""
    csv_path = Path(path)
    frame.to_csv(csv_path, index=False)
    markdown = csv_path.with_suffix(".md")
    markdown.write_text((f"{title}\n\n" if title else "") + to_markdown(frame))
    return [csv_path, markdown]
