"""Analyses of stored results, as pure functions of the results DataFrames (Mueller et al. 2025, §3–5).

- trajectories: ``checkpoint_table``, ``generalization``; binning: ``geometric_edges``, ``assign_bins``;
- phases (comparable training loss): ``compare_at_loss``, ``phase_table``, ``phase_notes`` (too few checkpoints);
- transfer (Table 1): ``transfer_table``; factors: ``factor_values``, ``factor_transfer_table``,
  ``method_changes`` (SMTOs vs UMTG, Fig. 4);
- conflict (Figs. 5–6): ``conflict_table``, ``conflict_correlations``, ``correlation``;
- temperature: ``temperature_table``, ``best_temperatures``, ``method_vs_baseline_by_temperature``;
- affinity and grouping: ``affinity_matrix``, ``normalize_by_self_affinity``,
  ``nonpositive_self_affinities``, ``group_tasks``;
- IT-MTL: ``candidate_wins``.
"""

from mtlscope.analysis.affinity import AFFINITY_KINDS, affinity_matrix
from mtlscope.analysis.binning import assign_bins, bin_centers, geometric_edges
from mtlscope.analysis.conflict import Correlation, conflict_correlations, conflict_table, correlation
from mtlscope.analysis.factors import (
    AGGREGATIONS,
    aggregate,
    check_rule,
    factor_transfer_table,
    factor_values,
    method_changes,
)
from mtlscope.analysis.grouping import (
    Grouping,
    group_tasks,
    nonpositive_self_affinities,
    normalize_by_self_affinity,
)
from mtlscope.analysis.itmtl import candidate_wins
from mtlscope.analysis.phases import (
    PhaseComparison,
    SparsePhaseWarning,
    compare_at_loss,
    phase_edges,
    phase_notes,
    phase_table,
    trajectory_bins,
)
from mtlscope.analysis.temperature import best_temperatures, method_vs_baseline_by_temperature, temperature_table
from mtlscope.analysis.trajectories import checkpoint_table, generalization
from mtlscope.analysis.transfer import TRANSFER_COLUMNS, generalization_by_run, significant, transfer_table

__all__ = [
    "AFFINITY_KINDS",
    "AGGREGATIONS",
    "TRANSFER_COLUMNS",
    "Correlation",
    "Grouping",
    "PhaseComparison",
    "SparsePhaseWarning",
    "affinity_matrix",
    "aggregate",
    "assign_bins",
    "best_temperatures",
    "bin_centers",
    "candidate_wins",
    "check_rule",
    "checkpoint_table",
    "compare_at_loss",
    "conflict_correlations",
    "conflict_table",
    "correlation",
    "factor_transfer_table",
    "factor_values",
    "generalization",
    "generalization_by_run",
    "geometric_edges",
    "group_tasks",
    "method_changes",
    "method_vs_baseline_by_temperature",
    "nonpositive_self_affinities",
    "normalize_by_self_affinity",
    "phase_edges",
    "phase_notes",
    "phase_table",
    "significant",
    "temperature_table",
    "trajectory_bins",
    "transfer_table",
]
