"""group_tasks and normalize_by_self_affinity (Fifty et al. 2021 §5.1, App. B; SPEC §4.6)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis import affinity_matrix
from mtlscope.analysis.grouping import (
    Grouping,
    group_tasks,
    nonpositive_self_affinities,
    normalize_by_self_affinity,
)

# Two blocks {a, b} and {c, d}: mutually helpful inside a block, harmful across (row = source, column =
# target; the diagonal is unused with singleton=0.0).
BLOCKS = pd.DataFrame(
    [
        [0.0, 0.6, -0.4, -0.2],
        [0.8, 0.0, -0.2, -0.6],
        [-0.5, -0.3, 0.0, 0.4],
        [-0.1, -0.7, 0.2, 0.0],
    ],
    index=list("abcd"),
    columns=list("abcd"),
)


def _value(matrix: np.ndarray, groups: list[list[int]], singleton: str | float) -> float:
    """The definition, written independently: mean over tasks of the best score over the groups that
    contain the task; a task's score is the mean affinity onto it from the other members."""
    best = []
    for target in range(len(matrix)):
        scores = []
        for group in groups:
            if target not in group:
                continue
            others = [source for source in group if source != target]
            if others:
                scores.append(float(np.mean([matrix[source, target] for source in others])))
            else:
                scores.append(float(matrix[target, target]) if singleton == "self" else float(singleton))
        best.append(max(scores))
    return float(np.mean(best))


def _indices(grouping: Grouping) -> list[list[int]]:
    return [[int(name) for name in group] for group in grouping.groups]


@pytest.mark.parametrize("method", ["exhaustive", "branch_and_bound"])
def test_two_blocks_with_two_or_more_splits(method: str) -> None:
    # Each task's best possible score is its best single source: a <- b 0.8, b <- a 0.6, c <- d 0.2,
    # d <- c 0.4 (adding any other member only adds a negative source). {a, b} and {c, d} give every task
    # exactly that, so they are optimal, with value (0.8 + 0.6 + 0.2 + 0.4) / 4 = 0.5; with 3 splits a third
    # group cannot do better and fewer groups win the tie.
    for splits in (2, 3):
        result = group_tasks(BLOCKS, splits, method=method, singleton=0.0)
        assert result.groups == (("a", "b"), ("c", "d"))
        assert result.score == pytest.approx(0.5)
        assert result.task_scores == pytest.approx({"a": 0.8, "b": 0.6, "c": 0.2, "d": 0.4})
        assert result.served_by == {"a": ("a", "b"), "b": ("a", "b"), "c": ("c", "d"), "d": ("c", "d")}
        assert result.method == method


@pytest.mark.parametrize("method", ["exhaustive", "branch_and_bound"])
def test_one_split_puts_everything_together(method: str) -> None:
    # One encoder: the only covering group is {a, b, c, d}. Column sums over the other members:
    # a: 0.8 - 0.5 - 0.1 = 0.2, b: 0.6 - 0.3 - 0.7 = -0.4, c: -0.4 - 0.2 + 0.2 = -0.4, d: -0.2 - 0.6 + 0.4 = -0.4;
    # each divided by 3, mean over 4 tasks: (0.2 - 1.2) / 12 = -1/12.
    result = group_tasks(BLOCKS, 1, method=method, singleton=0.0)
    assert result.groups == (("a", "b", "c", "d"),)
    assert result.score == pytest.approx(-1 / 12)
    assert result.task_scores["a"] == pytest.approx(0.2 / 3)


@pytest.mark.parametrize("method", ["exhaustive", "branch_and_bound"])
def test_three_tasks_with_self_affinity_for_a_task_alone(method: str) -> None:
    matrix = np.array([[0.5, 0.6, 0.1], [0.7, 0.5, -0.3], [0.2, 0.4, 0.3]])
    # Scores of task 0: alone 0.5, {0,1} 0.7, {0,2} 0.2, {0,1,2} (0.7 + 0.2) / 2 = 0.45 -> best 0.7 in {0,1}.
    # Task 1: alone 0.5, {0,1} 0.6, {1,2} 0.4, all (0.6 + 0.4) / 2 = 0.5 -> best 0.6 in {0,1}.
    # Task 2: alone 0.3, {0,2} 0.1, {1,2} -0.3, all (0.1 - 0.3) / 2 = -0.1 -> best 0.3 alone.
    # Two splits reach every task's best: {0,1} and {2}, value (0.7 + 0.6 + 0.3) / 3.
    two = group_tasks(matrix, 2, method=method, singleton="self")
    assert two.groups == (("0", "1"), ("2",))
    assert two.score == pytest.approx(1.6 / 3)
    assert two.served_by["2"] == ("2",)
    # One split: everything together, (0.45 + 0.5 - 0.1) / 3.
    one = group_tasks(matrix, 1, method=method, singleton="self")
    assert one.groups == (("0", "1", "2"),)
    assert one.score == pytest.approx(0.85 / 3)
    # The default, a task alone scores 0.0 < 0.1, so task 2 now prefers {0, 2}: {0,1} + {0,2} is worth
    # (0.7 + 0.6 + 0.1) / 3, more than {0,1} + {2} = (0.7 + 0.6 + 0.0) / 3.
    fixed = group_tasks(matrix, 2, method=method)
    assert fixed.groups == (("0", "1"), ("0", "2"))
    assert fixed.score == pytest.approx(1.4 / 3)


@pytest.mark.parametrize("method", ["exhaustive", "branch_and_bound"])
def test_ties_prefer_fewer_groups_then_lexicographic_order(method: str) -> None:
    # All scores 0: every covering grouping ties; one group (everything) is the fewest.
    zeros = group_tasks(np.zeros((4, 4)), 3, method=method)
    assert zeros.groups == (("0", "1", "2", "3"),) and zeros.score == 0.0
    # 0-1, 0-2, 1-3 and 2-3 help each other by 0.5 (exactly representable), 0-3 and 1-2 hurt: {0,1} + {2,3}
    # and {0,2} + {1,3} both give every task 0.5; (0, 1) < (0, 2) decides.
    matrix = np.full((4, 4), -1.0)
    for s, t in [(0, 1), (0, 2), (1, 3), (2, 3)]:
        matrix[s, t] = matrix[t, s] = 0.5
    np.fill_diagonal(matrix, 0.0)
    for splits in (2, 3, 4):
        tied = group_tasks(matrix, splits, method=method)
        assert tied.groups == (("0", "1"), ("2", "3")) and tied.score == 0.5


def test_value_recomputed_from_the_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        size = int(rng.integers(2, 7))
        matrix = rng.normal(size=(size, size))
        for singleton in ("self", 0.0):
            for splits in (1, 2, 3):
                result = group_tasks(matrix, splits, singleton=singleton)
                groups = _indices(result)
                assert len(groups) <= splits
                assert set().union(*groups) == set(range(size))
                assert result.score == pytest.approx(_value(matrix, groups, singleton), abs=1e-12)
                assert np.mean(list(result.task_scores.values())) == pytest.approx(result.score, abs=1e-12)


def _random_matrix(rng: np.random.Generator, size: int, case: int) -> np.ndarray:
    if case % 2:  # multiples of 1/4: exact ties between groupings happen, tie-breaking must agree too
        return rng.integers(-2, 3, size=(size, size)) / 4
    return rng.normal(size=(size, size))


def test_exhaustive_and_branch_and_bound_agree_on_random_matrices() -> None:
    rng = np.random.default_rng(1)
    cases = 0
    for size in range(3, 7):
        for splits in (1, 2, 3):
            for case in range(9):
                matrix = _random_matrix(rng, size, case)
                singleton = ("self", 0.0, -0.25)[case % 3]
                exhaustive = group_tasks(matrix, splits, method="exhaustive", singleton=singleton)
                bnb = group_tasks(matrix, splits, method="branch_and_bound", singleton=singleton)
                assert (bnb.groups, bnb.score) == (exhaustive.groups, exhaustive.score), (size, splits, case)
                assert bnb.task_scores == exhaustive.task_scores
                cases += 1
    for case in range(4):
        matrix = _random_matrix(rng, 7, case)
        for splits in (2, 3):
            exhaustive = group_tasks(matrix, splits, method="exhaustive")
            bnb = group_tasks(matrix, splits, method="branch_and_bound")
            assert (bnb.groups, bnb.score) == (exhaustive.groups, exhaustive.score), (7, splits, case)
            cases += 1
    assert cases >= 100


def test_branch_and_bound_with_twelve_tasks_beats_random_groupings() -> None:
    rng = np.random.default_rng(2)
    size, splits = 12, 3
    matrix = rng.normal(size=(size, size))
    result = group_tasks(matrix, splits)
    assert result.method == "branch_and_bound"
    groups = _indices(result)
    assert len(groups) <= splits and set().union(*groups) == set(range(size))
    assert result.score == pytest.approx(_value(matrix, groups, "self"), abs=1e-12)
    best_random = -np.inf
    for _ in range(200):
        home = rng.integers(0, splits, size=size)  # every task in one group, plus random extra members
        extra = rng.random((splits, size)) < 0.2
        random_groups = [sorted(set(np.flatnonzero(home == g)) | set(np.flatnonzero(extra[g]))) for g in range(splits)]
        random_groups = [g for g in random_groups if g]
        best_random = max(best_random, _value(matrix, random_groups, "self"))
    assert result.score >= best_random - 1e-12


def test_more_splits_never_lower_the_score() -> None:
    rng = np.random.default_rng(3)
    for case in range(10):
        size = int(rng.integers(3, 7))
        matrix = _random_matrix(rng, size, case)
        scores = [group_tasks(matrix, splits).score for splits in range(1, size + 2)]
        assert all(later >= earlier for earlier, later in itertools.pairwise(scores))
        # splits > K behaves like splits = K: at most K groups are ever useful
        assert group_tasks(matrix, size + 3).groups == group_tasks(matrix, size).groups


def test_task_names_from_dataframe_labels_and_array_indices() -> None:
    named = group_tasks(BLOCKS, 2, singleton=0.0)
    assert set(named.task_scores) == set("abcd")
    unnamed = group_tasks(BLOCKS.to_numpy(), 2, singleton=0.0)
    assert unnamed.groups == (("0", "1"), ("2", "3"))
    assert list(unnamed.task_scores) == ["0", "1", "2", "3"]
    assert unnamed.score == named.score


def test_auto_picks_exhaustive_for_small_problems() -> None:
    assert group_tasks(np.eye(5), 2).method == "exhaustive"
    assert group_tasks(np.eye(10), 3).method == "branch_and_bound"


def test_matrix_from_affinity_records() -> None:
    values = {("x", "x"): 1.0, ("x", "y"): 0.3, ("y", "x"): 0.2, ("y", "y"): 1.0, ("z", "z"): 1.0}
    values |= {("x", "z"): -0.5, ("z", "x"): -0.4, ("y", "z"): -0.1, ("z", "y"): -0.2}
    records = pd.DataFrame(
        [
            {"run_id": "r", "step": 10, "epoch": 1.0, "task": target, "split": "probe"}
            | {"metric": f"affinity_overall/{source}", "value": value}
            for (source, target), value in values.items()
        ]
    )
    matrix = affinity_matrix(records)
    result = group_tasks(matrix, 2, singleton=0.0)
    # y -> x 0.2 and x -> y 0.3 are the only positive affinities; z does best alone (0.0 > -0.1, -0.5, -0.3).
    assert result.groups == (("x", "y"), ("z",))
    assert result.score == pytest.approx(0.5 / 3)


def test_normalize_by_self_affinity() -> None:
    matrix = np.array([[2.0, 0.5], [1.0, 0.25]])
    expected = np.array([[1.0, 2.0], [0.5, 1.0]])  # column t divided by A[t, t]
    np.testing.assert_allclose(normalize_by_self_affinity(matrix), expected)
    frame = pd.DataFrame(matrix, index=pd.Index(["a", "b"], name="source"), columns=pd.Index(["a", "b"], name="target"))
    normalized = normalize_by_self_affinity(frame)
    assert isinstance(normalized, pd.DataFrame)
    assert normalized.index.name == "source" and normalized.columns.name == "target"
    np.testing.assert_allclose(normalized.to_numpy(), expected)
    assert np.diag(normalized.to_numpy()).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[0.0, 1.0], [1.0, 0.0]]), "target task 0's self-affinity is 0 \\(<= 0\\)"),
        (np.array([[np.nan, 1.0], [1.0, 2.0]]), "non-finite self-affinity \\(diagonal\\) for task\\(s\\) 0$"),
        (np.array([[1.0, 1.0], [1.0, np.inf]]), "task\\(s\\) 1$"),
        (np.ones((2, 3)), "square"),
    ],
)
def test_normalize_by_self_affinity_errors(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        normalize_by_self_affinity(matrix)
    assert "\n" not in str(error.value)


def test_a_negative_self_affinity_is_refused_or_left_blank_never_sign_flipped() -> None:
    """A task whose own step raises its loss (Z[t, t] < 0, as on a TD critic loss with Adam's momentum) gives no
    scale: dividing by it would turn the sources that hurt it least into the most negative entries."""
    tasks = ["reach", "push", "window"]
    frame = pd.DataFrame(
        [[0.2, -0.03, 0.1], [0.05, -0.01, 0.1], [0.1, -0.02, 0.4]], index=tasks, columns=tasks
    )  # push's self-affinity -0.01 is its column's largest: push's own step hurts it least
    with pytest.raises(ValueError, match=r"^affinity: target task push's self-affinity is -0\.01 \(<= 0\)"):
        normalize_by_self_affinity(frame)
    assert nonpositive_self_affinities(frame) == {"push": -0.01}
    assert nonpositive_self_affinities(frame.to_numpy()) == {"1": -0.01}
    blank = normalize_by_self_affinity(frame, nonpositive="blank")
    assert blank["push"].isna().all()
    np.testing.assert_allclose(blank[["reach", "window"]].to_numpy(), [[1.0, 0.25], [0.25, 0.25], [0.5, 1.0]])
    array = normalize_by_self_affinity(frame.to_numpy(), nonpositive="blank")
    assert np.isnan(array[:, 1]).all() and array[0, 0] == 1.0
    with pytest.raises(ValueError, match="nonpositive must be one of raise, blank, got 'flip'"):
        normalize_by_self_affinity(frame, nonpositive="flip")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("affinity", "kwargs", "message"),
    [
        (np.eye(3), {"splits": 0}, "splits must be an integer >= 1"),
        (np.eye(3), {"splits": -2}, "splits must be an integer >= 1"),
        (np.eye(3), {"splits": 1.5}, "splits must be an integer >= 1"),
        (np.ones((2, 3)), {"splits": 1}, "affinity must be a square matrix"),
        (np.ones(3), {"splits": 1}, "affinity must be a square matrix"),
        (pd.DataFrame(np.ones((2, 3))), {"splits": 1}, "affinity must be square"),
        (pd.DataFrame(np.eye(2), index=["a", "b"], columns=["b", "a"]), {"splits": 1}, "same task labels"),
        (
            np.array([[1.0, np.nan], [0.0, 1.0]]),
            {"splits": 1},
            r"NaN or infinite entries at .* \(0, 1\)",
        ),
        (np.zeros((0, 0)), {"splits": 1}, "no tasks"),
        (np.eye(3), {"splits": 1, "method": "greedy"}, "method must be one of"),
        (np.eye(3), {"splits": 1, "singleton": "none"}, "singleton must be 'self' or a finite number"),
        (np.eye(3), {"splits": 1, "singleton": float("nan")}, "singleton must be"),
        (np.eye(16), {"splits": 1}, "at most 15"),
        (np.eye(10), {"splits": 4, "method": "exhaustive"}, "use method='branch_and_bound'"),
    ],
)
def test_errors(affinity: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        group_tasks(affinity, **kwargs)  # type: ignore[arg-type]


# The Taskonomy "TAG average inter-task affinities" of the authors' released network-selection notebook
# (google-research/google-research, tag/network_selection/TAG_network_selection.ipynb). The notebook adds
# ``revised_integrals[t][s]`` to task t's score in a group with s: entry [t][s] is the affinity onto t from s.
TAG_TASKONOMY = {
    "ss_l": {"ss_l": 11.999321423965947, "norm_l": 0.04891036220837213, "depth_l": 0.11537429894122785,
             "key_l": 0.00454724706606927, "edge2d_l": 0.008776140044461892},
    "depth_l": {"ss_l": 0.41355850961858076, "norm_l": 0.2914147606289435, "depth_l": 7.3276368896443556,
                "key_l": 0.01353652075974951, "edge2d_l": 0.07395688217092156},
    "norm_l": {"ss_l": 0.13982367687578146, "norm_l": 1.070989344832557, "depth_l": 0.22096194178241185,
               "key_l": 0.010493772045577332, "edge2d_l": 0.07645966827511533},
    "key_l": {"ss_l": 0.021098526716001414, "norm_l": 0.010729013557423, "depth_l": 0.013365983131803236,
              "key_l": 0.7338844180545812, "edge2d_l": 0.6897358940641894},
    "edge2d_l": {"ss_l": 0.056692022190245474, "norm_l": 0.03600666458561003, "depth_l": 0.03668338077695892,
                 "key_l": 0.30372134710544996, "edge2d_l": 5.9661909882444615},
}  # fmt: skip


def _tag_value(groups: list[tuple[str, ...]]) -> float:
    """The notebook's value of a grouping: mean over tasks of the best mean ``revised_integrals[t][s]``
    over the groups of 2 or more that contain t."""
    best = {}
    for group in groups:
        for t in group:
            score = sum(TAG_TASKONOMY[t][s] for s in group if s != t) / (len(group) - 1)
            best[t] = max(best.get(t, -np.inf), score)
    return float(np.mean([best[t] for t in TAG_TASKONOMY]))


@pytest.mark.parametrize(
    ("splits", "expected", "score"),
    [
        (2, (("ss_l", "depth_l", "norm_l"), ("key_l", "edge2d_l")), 0.3217),
        (3, (("ss_l", "depth_l"), ("depth_l", "norm_l"), ("key_l", "edge2d_l")), 0.3487),
    ],
)
def test_default_reproduces_the_tag_reference_choice_on_taskonomy(
    splits: int, expected: tuple[tuple[str, ...], ...], score: float
) -> None:
    tasks = list(TAG_TASKONOMY)
    # A[source, target] = affinity onto target from source = revised_integrals[target][source]
    affinity = pd.DataFrame([[TAG_TASKONOMY[t][s] for t in tasks] for s in tasks], index=tasks, columns=tasks)
    result = group_tasks(affinity, splits)  # the default: a task alone contributes 0
    assert result.groups == expected
    assert result.score == pytest.approx(_tag_value(list(expected)), rel=1e-12)
    assert round(result.score, 4) == score
    # The self-affinity option puts semantic segmentation (largest self-affinity, 12.0) alone instead.
    with_self = group_tasks(affinity, splits, singleton="self")
    assert ("ss_l",) in with_self.groups and with_self.groups != expected
