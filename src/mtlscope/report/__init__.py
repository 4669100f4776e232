"""Figures and tables from stored results."""

from mtlscope.report.figures import binned_curves, generalization_vs_loss
from mtlscope.report.tables import to_markdown, write_table

__all__ = ["binned_curves", "generalization_vs_loss", "to_markdown", "write_table"]
