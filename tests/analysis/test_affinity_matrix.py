"""affinity_matrix: the probe's long records back to A[source, target]."""

from __future__ import annotations

import pandas as pd
import pytest

from mtlscope.analysis import affinity_matrix


def _records(values: dict[tuple[str, str], float], step: int, run: str, kind: str = "affinity_overall") -> list[dict]:
    return [
        {
            "run_id": run,
            "step": step,
            "epoch": 1.0,
            "task": target,
            "split": "probe",
            "metric": f"{kind}/{source}",
            "value": value,
        }
        for (source, target), value in values.items()
    ]


def test_matrix_orientation_last_step_and_mean_over_runs() -> None:
    early = {("a", "a"): 9.0, ("a", "b"): 9.0, ("b", "a"): 9.0, ("b", "b"): 9.0}
    run1 = {("a", "a"): 1.0, ("a", "b"): 0.5, ("b", "a"): -0.2, ("b", "b"): 2.0}
    run2 = {("a", "a"): 3.0, ("a", "b"): 1.5, ("b", "a"): -0.4, ("b", "b"): 4.0}
    frame = pd.DataFrame(
        _records(early, 5, "r1")
        + _records(run1, 10, "r1")
        + _records(run2, 12, "r2")
        + _records({("a", "b"): 100.0}, 10, "r1", kind="affinity")
    )
    matrix = affinity_matrix(frame)
    assert matrix.index.name == "source" and matrix.columns.name == "target"
    assert matrix.loc["a", "b"] == pytest.approx(1.0)  # Z_{a -> b}, mean over the two runs' last steps
    assert matrix.loc["b", "a"] == pytest.approx(-0.3)
    assert matrix.loc["b", "b"] == pytest.approx(3.0)
    assert affinity_matrix(frame, step=5).loc["a", "b"] == 9.0
    assert affinity_matrix(frame, kind="affinity").loc["a", "b"] == 100.0
    with pytest.raises(ValueError, match="no affinity_first_order records"):
        affinity_matrix(frame, kind="affinity_first_order")
    with pytest.raises(ValueError, match="kind"):
        affinity_matrix(frame, kind="transference")
