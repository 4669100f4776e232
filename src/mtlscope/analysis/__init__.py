"""Analyses of stored results, as pure functions of the results DataFrames (SPEC §6)."""

from mtlscope.analysis.affinity import AFFINITY_KINDS, affinity_matrix
from mtlscope.analysis.binning import assign_bins, bin_centers, geometric_edges
from mtlscope.analysis.grouping import Grouping, group_tasks, normalize_by_self_affinity
from mtlscope.analysis.trajectories import checkpoint_table, generalization
from mtlscope.analysis.transfer import TRANSFER_COLUMNS, generalization_by_run, significant, transfer_table

__all__ = [
    "AFFINITY_KINDS",
    "TRANSFER_COLUMNS",
    "Grouping",
    "affinity_matrix",
    "assign_bins",
    "bin_centers",
    "checkpoint_table",
    "generalization",
    "generalization_by_run",
    "geometric_edges",
    "group_tasks",
    "normalize_by_self_affinity",
    "significant",
    "transfer_table",
]
