"""Loss bins: comparing trajectories at comparable training loss (Mueller et al. 2025, §3).

Bins are geometrically spaced between a maximum and a minimum training loss and numbered from 1 (the
highest losses, early in training) to ``n`` (the lowest). A checkpoint falls in the bin containing its
training loss; values outside ``[low, high]`` fall in no bin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def geometric_edges(high: float, low: float, bins: int = 20) -> np.ndarray:
    """``bins + 1`` edges from ``high`` down to ``low``, equally spaced in log scale."""
    if not (high > 0 and low > 0):
        raise ValueError(f"loss bins need positive losses, got high={high}, low={low}")
    if high <= low:
        raise ValueError(f"loss bins need high > low, got high={high}, low={low}")
    return np.geomspace(high, low, bins + 1)


def assign_bins(losses: pd.Series | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """1-based bin number of each loss (0 where it lies outside the edges)."""
    values = np.asarray(losses, dtype=float)
    # edges descend; bin i holds edges[i] >= loss >= edges[i + 1] (the lowest edge closes the last bin)
    index = np.searchsorted(-edges, -values, side="right")
    index = np.where(values == edges[-1], len(edges) - 1, index)
    inside = (values <= edges[0]) & (values >= edges[-1]) & np.isfinite(values)
    return np.where(inside, np.clip(index, 1, len(edges) - 1), 0)


def bin_centers(edges: np.ndarray) -> np.ndarray:
    """Geometric centers of the bins."""
    return np.sqrt(edges[:-1] * edges[1:])
