from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis.phases import (
    MIN_CHECKPOINTS,
    PHASE_COLUMNS,
    SparsePhaseWarning,
    compare_at_loss,
    phase_bins,
    phase_edges,
    phase_notes,
    phase_table,
    trajectory_bins,
)
from mtlscope.analysis.trajectories import checkpoint_table
from mtlscope.runs.results import RunResults

RECORD_COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]


def grid(decades: int) -> np.ndarray:
    """Losses from 1 down to 10^-decades: the end points and one point in the middle of every tenth of a decade,
    so with 20 bins between them (10 per decade when decades = 2) no interior point lies on an edge."""
    middles = [10 ** (-(k + 0.5) / 10) for k in range(10 * decades)]
    return np.array([1.0, *middles, 10.0**-decades])


def table(losses: np.ndarray, **columns: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"step": np.arange(len(losses)), "train_loss": losses, **columns})


def records(run_id: str, task: str, losses: np.ndarray, **probes: np.ndarray) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for step, loss in enumerate(losses):
        rows += [
            (run_id, step, float(step), task, "train", "loss", float(loss)),
            (run_id, step, float(step), task, "val", "accuracy", step / len(losses)),
            (run_id, step, float(step), task, "test", "accuracy", 1.0 - float(loss)),
        ]
        rows += [(run_id, step, float(step), task, "probe", name, float(v[step])) for name, v in probes.items()]
    return rows


def run(run_id: str, variant: str, tasks: str, seed: int, method: str = "umtg") -> dict[str, object]:
    return {"run_id": run_id, "status": "completed", "variant": variant, "tasks": tasks, "method": method, "seed": seed}


def test_trajectory_bins_are_geometric_between_max_and_min() -> None:
    losses = pd.Series([*np.geomspace(1.0, 1e-4, 41)[::-1], np.nan])  # order and NaN do not matter
    edges = trajectory_bins(losses)
    assert len(edges) == 21
    assert np.allclose(edges, 10.0 ** (-np.arange(21) / 5))
    assert edges[0] == 1.0 and edges[-1] == 1e-4
    assert len(trajectory_bins(losses, bins=4)) == 5
    with pytest.raises(ValueError, match="train_loss: no finite"):
        trajectory_bins(pd.Series([np.nan, np.inf]))
    with pytest.raises(ValueError, match=r"train_loss: .*high > low"):
        trajectory_bins(pd.Series([0.5, 0.5]))
    with pytest.raises(ValueError, match="bins: expected a positive integer"):
        trajectory_bins(losses, bins=0)


def test_phase_bins() -> None:
    assert phase_bins("early") == (2, 5)
    assert phase_bins("end") == (18, 20)
    assert phase_bins("end", bins=10) == (8, 10)
    assert phase_bins((3, -1), bins=10) == (3, 10)
    with pytest.raises(ValueError, match="phase: unknown phase 'middle'"):
        phase_bins("middle")
    with pytest.raises(ValueError, match=r"phase: .*outside 1\.\.20"):
        phase_bins((0, 3))
    with pytest.raises(ValueError, match=r"phase: .*outside 1\.\.3"):
        phase_bins("early", bins=3)


def test_phase_edges_come_from_the_trajectory_with_the_highest_minimum_loss() -> None:
    single, multi = grid(4), grid(2)  # the multi-task trajectory stops at 1e-2, two decades above
    high, low = phase_edges(single, multi, "end")
    assert high == pytest.approx(10**-1.7) and low == 1e-2  # bins 18-20 of 20 bins from 1 to 1e-2
    assert phase_edges(multi, single, "end") == (high, low)  # whichever argument it is
    high, low = phase_edges(single, multi, "early")
    assert high == pytest.approx(10**-0.1) and low == pytest.approx(10**-0.5)  # bins 2-5
    alone = phase_edges(single, single, "end")
    assert alone[0] == pytest.approx(10**-3.4) and alone[1] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="other_losses: no finite"):
        phase_edges(single, np.array([np.nan]))


def test_compare_at_loss_means_and_counts() -> None:
    single, multi = grid(4), grid(2)
    a = table(single, sharpness=np.arange(len(single), dtype=float))  # value = position
    b = table(multi, sharpness=100.0 + np.arange(len(multi)))
    end = compare_at_loss(a, b, "sharpness", "end")
    assert end.set_by == "b" and (end.first_bin, end.last_bin) == (18, 20)
    assert end.high == pytest.approx(10**-1.7) and end.low == 1e-2
    # a: the middles of tenths 17, 18, 19 (positions 18-20); b: the same three and its last point 1e-2
    assert (end.count_a, end.mean_a) == (3, pytest.approx(19.0))
    assert (end.count_b, end.mean_b) == (4, pytest.approx(119.5))
    swapped = compare_at_loss(b, a, "sharpness", "end")
    assert swapped.set_by == "a" and (swapped.mean_a, swapped.mean_b) == (end.mean_b, end.mean_a)
    early = compare_at_loss(a, b, "sharpness", "early")  # tenths 1..4: positions 2-5 in both
    assert (early.count_a, early.mean_a, early.count_b, early.mean_b) == (4, 3.5, 4, 103.5)


def test_compare_at_loss_skips_unmeasured_checkpoints_and_empty_intervals() -> None:
    single, multi = grid(4), grid(2)
    sparse = np.arange(len(single), dtype=float)
    sparse[19] = np.nan  # the probe skipped one checkpoint in the interval
    a = table(single, sharpness=sparse, test=np.ones(len(single)))
    b = table(multi, test=np.zeros(len(multi)))  # no sharpness column: that probe did not run
    result = compare_at_loss(a, b, "sharpness")
    assert (result.count_a, result.mean_a) == (2, 19.0)
    assert result.count_b == 0 and math.isnan(result.mean_b)
    assert compare_at_loss(a, b, "test").mean_b == 0.0
    high = table(np.geomspace(1.0, 0.1, 11), test=np.ones(11))  # sets the end interval [0.1, 10^-0.85]
    low = table(np.geomspace(0.05, 0.001, 11), test=np.ones(11))  # never there
    empty = compare_at_loss(high, low, "test")
    assert empty.set_by == "a" and empty.count_a == 2 and empty.count_b == 0 and math.isnan(empty.mean_b)
    with pytest.raises(ValueError, match="column: 'fim_trace' is in neither table"):
        compare_at_loss(a, b, "fim_trace")
    with pytest.raises(ValueError, match="table_b: no train_loss"):
        compare_at_loss(a, b.drop(columns="train_loss"), "test")
    with pytest.raises(ValueError, match="phase: unknown phase"):
        compare_at_loss(a, b, "test", phase="late")


def _results(single_seeds: list[int], multi_seeds: list[int]) -> RunResults:
    runs, rows = [], []
    single, multi = grid(4), grid(2)
    for seed in single_seeds:
        runs.append(run(f"a-{seed}", "a", "a", seed))
        rows += records(f"a-{seed}", "a", single, sharpness=seed + np.arange(len(single), dtype=float))
    for seed in multi_seeds:
        runs.append(run(f"ab-{seed}", "a+b", "a+b", seed))
        rows += records(f"ab-{seed}", "a", multi, sharpness=100.0 + seed + np.arange(len(multi)))
        rows += records(f"ab-{seed}", "b", multi)
        runs.append(run(f"pc-{seed}", "a+b:pcgrad", "a+b", seed, "pcgrad"))
        rows += records(f"pc-{seed}", "a", single, sharpness=200.0 + seed + np.arange(len(single)))
        rows += records(f"pc-{seed}", "b", single)
    runs.append({**run("ab-killed", "a+b", "a+b", 0), "status": "killed"})
    return RunResults(pd.DataFrame(runs), pd.DataFrame(rows, columns=RECORD_COLUMNS))


def test_phase_table_pairs_runs_with_the_reference_of_the_same_seed() -> None:
    results = _results([0, 1], [0, 1, 2])
    with pytest.warns(SparsePhaseWarning, match="2 of 6 comparisons of a in the end phase"):  # the seedless ones
        frame = phase_table(results, "a", "sharpness", "end")
    assert list(frame.columns) == list(PHASE_COLUMNS)
    assert list(frame["run_id"]) == ["ab-0", "pc-0", "ab-1", "pc-1", "ab-2", "pc-2"]  # no killed, no reference
    rows = frame.set_index("run_id")
    assert rows.loc["ab-1", "reference_run_id"] == "a-1" and rows.loc["ab-1", "set_by"] == "run"
    assert rows.loc["ab-1", "value"] == pytest.approx(120.5) and rows.loc["ab-1", "count"] == 4
    assert rows.loc["ab-1", "reference_value"] == pytest.approx(20.0) and rows.loc["ab-1", "reference_count"] == 3
    assert rows.loc["ab-1", "low"] == 1e-2
    # pcgrad reaches the single-task loss: the interval [1e-4, 10^-3.4] is the end of both (a tie: set by the run),
    # positions 35-41 of both trajectories
    assert rows.loc["pc-0", "value"] == pytest.approx(200 + 38) and rows.loc["pc-0", "reference_value"] == 38
    assert rows.loc["pc-0", "low"] == 1e-4
    for seedless in ("ab-2", "pc-2"):  # no single-task run with seed 2
        assert math.isnan(rows.loc[seedless, "value"]) and rows.loc[seedless, "count"] == 0
        assert pd.isna(rows.loc[seedless, "reference_run_id"]) and pd.isna(rows.loc[seedless, "set_by"])
        assert rows.loc[seedless, "note"] == "no reference run with seed 2: nothing to compare with"
    assert (rows.drop(index=["ab-2", "pc-2"])["note"] == "").all()  # 3 or more checkpoints on both sides
    # the same numbers as compare_at_loss on the checkpoint tables
    own = checkpoint_table(results.records, "ab-0", "a", "accuracy")
    reference = checkpoint_table(results.records, "a-0", "a", "accuracy")
    direct = compare_at_loss(own, reference, "test", "early")
    with pytest.warns(SparsePhaseWarning):
        test = phase_table(results, "a", "test", "early").set_index("run_id")
    assert test.loc["ab-0", "value"] == direct.mean_a and test.loc["ab-0", "reference_value"] == direct.mean_b


def test_phase_table_with_a_reference_variant() -> None:
    results = _results([0, 1], [0, 1])
    frame = phase_table(results, "a", "sharpness", "end", reference_variant="a+b").set_index("run_id")
    assert list(frame.index) == ["a-0", "a-1", "pc-0", "pc-1"]
    assert frame.loc["a-0", "reference_run_id"] == "ab-0" and frame.loc["a-0", "set_by"] == "reference"
    assert frame.loc["a-0", "value"] == pytest.approx(19.0) and frame.loc["a-0", "reference_value"] == 119.5


def test_phase_table_errors() -> None:
    results = _results([0], [0])
    with pytest.raises(ValueError, match="reference_variant: no completed run of 'c'"):
        phase_table(results, "a", "sharpness", reference_variant="c")
    with pytest.raises(ValueError, match="task: no completed run trains 'c'"):
        phase_table(results, "c", "sharpness")
    with pytest.raises(ValueError, match="task: no completed single-task run of 'b'"):
        phase_table(results, "b", "test")
    with pytest.raises(ValueError, match="column: 'fim_trace' is not recorded"):
        phase_table(results, "a", "fim_trace")
    with pytest.raises(ValueError, match="phase: unknown phase"):
        phase_table(results, "a", "sharpness", phase="middle")
    doubled = RunResults(
        pd.concat([results.runs, pd.DataFrame([run("a-0-again", "a", "a", 0)])], ignore_index=True), results.records
    )
    with pytest.raises(ValueError, match="several reference runs of 'a' with seed 0"):
        phase_table(doubled, "a", "sharpness")


# The trajectory of the issue: the loss falls from 2.3 to 0.15 before the first checkpoint after step 0 (checkpoints
# every epoch), so the early bins 2-5 (losses 1.39 to 0.19 between 2.3 and 1e-4) hold no checkpoint at all.
EPOCHS = np.array([2.3, *np.geomspace(0.15, 1e-4, 30)])
# The same loss curve with log-spaced checkpoints: several in every early bin.
LOGGED = np.geomspace(2.3, 1e-4, 60)


def test_a_phase_without_enough_checkpoints_carries_a_note() -> None:
    sparse = compare_at_loss(table(EPOCHS, test=1 - EPOCHS), table(EPOCHS, test=1 - EPOCHS), "test", "early")
    assert (sparse.count_a, sparse.count_b) == (0, 0) and math.isnan(sparse.mean_a)
    assert sparse.note.startswith(
        "early phase: 0 checkpoints of table_a and 0 of table_b in loss bins 2–5 (training loss 1.39 to"
    )
    assert f"fewer than {MIN_CHECKPOINTS} to compare; train with training.eval_every: log" in sparse.note
    dense = compare_at_loss(table(LOGGED, test=1 - LOGGED), table(LOGGED, test=1 - LOGGED), "test", "early")
    assert min(dense.count_a, dense.count_b) >= MIN_CHECKPOINTS and dense.note == ""
    one_side = compare_at_loss(table(LOGGED, test=1 - LOGGED), table(EPOCHS, test=1 - EPOCHS), "test", "early")
    assert one_side.count_a >= MIN_CHECKPOINTS and one_side.note.startswith(
        "early phase: 12 checkpoints of table_a and 0 of table_b"
    )
    end = compare_at_loss(table(EPOCHS[:3], test=EPOCHS[:3]), table(EPOCHS[:3], test=EPOCHS[:3]), "test", "end")
    assert end.count_a == 2 and "end phase: 2 checkpoints of table_a and 2 of table_b in loss bins 18–20" in end.note
    assert "train longer, or take checkpoints more often near convergence" in end.note


def _two_runs(single: np.ndarray, multi: np.ndarray) -> RunResults:
    runs = [run("a-0", "a", "a", 0), run("ab-0", "a+b", "a+b", 0)]
    rows = records("a-0", "a", single) + records("ab-0", "a", multi) + records("ab-0", "b", multi)
    return RunResults(pd.DataFrame(runs), pd.DataFrame(rows, columns=RECORD_COLUMNS))


def test_phase_table_and_phase_notes_warn_of_an_empty_early_phase() -> None:
    results = _two_runs(EPOCHS, EPOCHS)
    with pytest.warns(SparsePhaseWarning, match=r"1 of 1 comparisons of a in the early phase \(loss bins 2–5\)"):
        early = phase_table(results, "a", "test", "early")
    assert early.loc[0, "count"] == 0 and early.loc[0, "note"].startswith(
        "early phase: 0 checkpoints of the run and 0 of its reference in loss bins 2–5"
    )
    notes = phase_notes(results, "a")  # the end phase has enough checkpoints: one line, for the early phase
    assert notes == [
        "early phase: 0 checkpoints in loss bins 2–5 in 1 of 1 comparisons of a with the reference run (fewer than "
        f"{MIN_CHECKPOINTS} to compare); train with training.eval_every: log (checkpoints dense where the loss falls "
        "fast)"
    ]
    logged = _two_runs(LOGGED, LOGGED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough checkpoints: no warning
        assert (phase_table(logged, "a", "test", "early")["note"] == "").all()
        assert phase_notes(logged, "a") == []
        assert phase_notes(logged, "b") == []  # no single-task run of b: nothing to compare, no note
    seedless = RunResults(  # a multi-task run whose seed the single-task runs lack compares nothing: no note
        pd.concat([logged.runs, pd.DataFrame([run("ab-1", "a+b", "a+b", 1)])], ignore_index=True),
        pd.concat([logged.records, pd.DataFrame(records("ab-1", "a", LOGGED), columns=RECORD_COLUMNS)]),
    )
    assert phase_notes(seedless, "a") == []


def test_a_factor_the_reference_does_not_record_is_not_a_sparse_phase() -> None:
    # grad_similarity (to the multi-task gradient) exists for the multi-task run only: the single-task reference
    # has no value at all, which is not a phase with too few checkpoints — no warning, no sparse note
    runs = [run("a-0", "a", "a", 0), run("ab-0", "a+b", "a+b", 0)]
    similarity = np.linspace(0.9, 0.1, len(LOGGED))
    rows = records("a-0", "a", LOGGED) + records("ab-0", "a", LOGGED, grad_similarity=similarity)
    results = RunResults(pd.DataFrame(runs), pd.DataFrame(rows, columns=RECORD_COLUMNS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = phase_table(results, "a", "grad_similarity", "early")
        assert phase_notes(results, "a", "grad_similarity") == []
    assert table.loc[0, "reference_count"] == 0 and table.attrs["unmeasured"] == ("ab-0",)
    assert table.loc[0, "note"] == "grad_similarity is not recorded by its reference: nothing to compare"
    # a factor both record, in a phase without enough checkpoints, still gets its note
    sparse = RunResults(
        pd.DataFrame(runs),
        pd.DataFrame(
            records("a-0", "a", EPOCHS, grad_similarity=np.ones(len(EPOCHS)))
            + records("ab-0", "a", EPOCHS, grad_similarity=np.ones(len(EPOCHS))),
            columns=RECORD_COLUMNS,
        ),
    )
    assert len(phase_notes(sparse, "a", "grad_similarity")) == 1
