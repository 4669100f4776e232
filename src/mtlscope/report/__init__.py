"""Figures, tables and the HTML report from stored results.

- ``figures``: generalization vs loss (main paper Fig. 1), factors vs loss (Fig. 3);
- ``plots``: SMTO quadrants (Fig. 4), similarity scatter (Figs. 5–6), temperature curves, affinity heatmap,
  grouping diagram;
- ``tables``: Markdown/CSV/LaTeX tables; ``summary``: the key tables with plain-language readings;
- ``html``: the self-contained HTML report (``mtlscope report``).
"""

from mtlscope.report.figures import binned_curves, factors_vs_loss, generalization_vs_loss
from mtlscope.report.html import write_report
from mtlscope.report.plots import (
    affinity_heatmap,
    grouping_diagram,
    similarity_scatter,
    smto_quadrants,
    temperature_curves,
)
from mtlscope.report.summary import key_tables
from mtlscope.report.tables import to_latex, to_markdown, write_table

__all__ = [
    "affinity_heatmap",
    "binned_curves",
    "factors_vs_loss",
    "generalization_vs_loss",
    "grouping_diagram",
    "key_tables",
    "similarity_scatter",
    "smto_quadrants",
    "temperature_curves",
    "to_latex",
    "to_markdown",
    "write_report",
    "write_table",
]
