"""Task grouping from inter-task affinities (Fifty et al., "Measuring and Harnessing Transference in
Multi-Task Learning", arXiv:2010.15413, 2020, §5.1 and App. B; as in the released code of their NeurIPS 2021
follow-up, "Efficiently Identifying Task Groupings for Multi-Task Learning").

Question answered: with a budget of ``splits`` shared encoders (networks), which tasks should be trained
together? Input: an affinity matrix ``A[source, target] = Z_{source -> target}`` (row = source, column =
target), e.g. ``mtlscope.analysis.affinity_matrix(records)`` averaged over training (``affinity_overall``).

Definitions (those of Fifty et al. §5.1, with the conventions below made explicit):

- Score of task ``t`` in a group ``G`` that contains it, ``|G| >= 2``: the mean affinity onto ``t`` from
  the other members, ``score(t, G) = mean_{s in G, s != t} A[s, t]`` (summed in task order, then divided).
- Score of a task alone, ``G = {t}``: there are no other members, so no affinity onto it. The default
  ``singleton=0.0`` is the rule of Fifty et al.: a task alone contributes 0 (no transfer, neither help nor
  harm), and the diagonal is not used; the authors' released network-selection code chooses the same
  groupings on its Taskonomy affinities (``{ss, depth, norm} + {key, edge2d}`` for 2 splits). Another number
  scores every task alone with that value. ``singleton="self"`` uses the self-affinity ``A[t, t]`` (what a
  step on the task's own gradient does for it); self-affinities are usually far larger than cross-task
  affinities, so this option tends to put the tasks with the largest self-affinities alone.
- A grouping is a list of at most ``splits`` distinct groups (non-empty task subsets; they may overlap)
  such that every task is in at least one group. Its value is the mean over tasks of the task's best score
  over the groups that contain it: ``value = mean_t max_{G contains t} score(t, G)``. Each task is served
  by (takes its prediction from) the encoder of its best group.
- The result maximizes the value. Ties are broken deterministically, the same way in both searches: larger
  total (the sum over tasks of the best scores, added in task order, compared exactly), then fewer groups,
  then the lexicographically smallest list of groups, each group being the tuple of its task indices in
  matrix order and the groups listed in lexicographic order (so ``(0, 1) < (0, 1, 2) < (0, 2) < (1,)``).
  A consequence: no returned group is redundant (each is the strictly best group of at least one task),
  so at most ``K`` groups are ever used, and ``splits > K`` behaves like ``splits = K``.

Searches (both exact; they return the same grouping, tested on random matrices with and without ties):

- ``exhaustive``: every combination of at most ``min(splits, K)`` of the ``2^K - 1`` candidate groups, in
  lexicographic order, vectorized. Cost ``sum_m C(2^K - 1, m)``.
- ``branch_and_bound``: a depth-first search over the same combinations in the same order, over
  non-redundant groupings only (the winner is one), pruned with bounds: an exact per-task bound (each task's
  best score among the groups still allowed), and a relaxation in which the tasks not yet served are split
  into at most ``r`` blocks, each block given its best superset (a dynamic programme over the ``3^K`` pairs
  ``subset of set``; its optimum is also the optimum value of the whole problem and is used as a bound from
  the start). Floating-point differences between the bounds and the exact totals are covered by a margin,
  so pruning never drops a grouping that could win or tie. Memory and time grow like ``3^K``: at most
  ``MAX_TASKS`` tasks.
- ``auto`` (default): ``exhaustive`` when it enumerates at most ``AUTO_EXHAUSTIVE_LIMIT`` combinations
  (3 million: e.g. K <= 8 with splits <= 3, about 0.3 s), else ``branch_and_bound`` (K = 12, splits = 3:
  about 0.1 s; K = 15: a few seconds and about 1 GB).

A NumPy array input gives task names ``"0" .. "K-1"`` (row/column indices as strings); a DataFrame input
(index = sources, columns = targets, the same labels in the same order) gives its labels as strings.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Matrix = TypeVar("Matrix", np.ndarray, pd.DataFrame)

METHODS: tuple[str, ...] = ("auto", "exhaustive", "branch_and_bound")
#: What ``normalize_by_self_affinity`` does with a self-affinity <= 0: refuse, or leave the column NaN.
NonPositiveRule = Literal["raise", "blank"]
NONPOSITIVE_RULES: tuple[str, ...] = ("raise", "blank")
MAX_TASKS = 15
AUTO_EXHAUSTIVE_LIMIT = 3_000_000
EXHAUSTIVE_LIMIT = 50_000_000
_CHUNK = 1 << 15


@dataclass(frozen=True)
class Grouping:
    """The chosen groups and how well each task is served.

    ``groups``: each group's task names in matrix order, groups in lexicographic order of their task
    indices. ``score``: the grouping's value (mean over tasks of ``task_scores``). ``task_scores``: each
    task's best score over the groups that contain it. ``served_by``: that best group (the first one in
    ``groups`` order where several tie). ``method``: ``"exhaustive"`` or ``"branch_and_bound"``.
    """

    groups: tuple[tuple[str, ...], ...]
    score: float
    task_scores: dict[str, float]
    served_by: dict[str, tuple[str, ...]]
    method: str


def group_tasks(
    affinity: np.ndarray | pd.DataFrame,
    splits: int,
    *,
    method: str = "auto",
    singleton: str | float = 0.0,
) -> Grouping:
    """Best grouping of the tasks of ``affinity`` (``A[source, target]``) into at most ``splits`` possibly
    overlapping groups (module docstring: definitions, tie-breaking, searches).

    ``method``: ``"auto"``, ``"exhaustive"`` or ``"branch_and_bound"``. ``singleton``: the score of a task
    alone, a number (default 0.0, the papers' rule) or ``"self"`` (its self-affinity ``A[t, t]``). Raises
    ``ValueError`` for ``splits < 1``, a non-square or mislabelled matrix, NaN or infinite entries, no tasks,
    more than ``MAX_TASKS`` tasks.
    """
    values, names = _square(affinity)
    if not np.isfinite(values).all():
        bad = [f"({names[s]}, {names[t]})" for s, t in zip(*np.nonzero(~np.isfinite(values)))]
        raise ValueError(f"affinity has NaN or infinite entries at (source, target) {', '.join(bad[:5])}")
    if isinstance(splits, bool) or not isinstance(splits, numbers.Integral) or splits < 1:
        raise ValueError(f"splits must be an integer >= 1 (the number of encoders), got {splits!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    alone = _singleton(singleton)
    count = len(names)
    if count > MAX_TASKS:
        raise ValueError(f"affinity has {count} tasks; group_tasks supports at most {MAX_TASKS} (exact search)")
    masks = _lex_masks(count)
    scores = _score_table(values, alone)[masks]
    limit = min(int(splits), count)
    combinations = sum(math.comb(len(masks), m) for m in range(1, limit + 1))
    if method == "auto":
        method = "exhaustive" if combinations <= AUTO_EXHAUSTIVE_LIMIT else "branch_and_bound"
    if method == "exhaustive":
        if combinations > EXHAUSTIVE_LIMIT:
            raise ValueError(
                f"method='exhaustive' would enumerate {combinations} groupings (limit {EXHAUSTIVE_LIMIT}); "
                "use method='branch_and_bound'"
            )
        chosen = _exhaustive(scores, limit)
    else:
        chosen = _BranchAndBound(scores, masks, limit).run()
    return _grouping(scores, masks, chosen, names, method)


def normalize_by_self_affinity(affinity: Matrix, *, nonpositive: NonPositiveRule = "raise") -> Matrix:
    """``A[s, t] / A[t, t]``: each target's column divided by its self-affinity (the diagonal), so that
    affinities onto different tasks are on a comparable scale (1 = as much as the task's own step).

    Same type out as in (array or DataFrame with the same labels). Raises ``ValueError`` for a non-square
    or mislabelled matrix, or a non-finite diagonal entry. A self-affinity <= 0 (the task's own step did not
    lower its loss, on average) is no scale: dividing by it would flip or blow up its column. ``nonpositive``
    says what happens then: ``"raise"`` (default), a ``ValueError`` naming the first such target task and its
    value; ``"blank"``, that target's column is NaN in the result (``nonpositive_self_affinities`` lists them).
    """
    if nonpositive not in NONPOSITIVE_RULES:
        raise ValueError(f"nonpositive must be one of {', '.join(NONPOSITIVE_RULES)}, got {nonpositive!r}")
    values, names = _square(affinity)
    diagonal = values.diagonal().copy()
    bad = [names[t] for t in range(len(names)) if not math.isfinite(diagonal[t])]
    if bad:
        raise ValueError(f"affinity has a non-finite self-affinity (diagonal) for task(s) {', '.join(bad)}")
    below = _nonpositive(diagonal, names)
    if below and nonpositive == "raise":
        name, value = next(iter(below.items()))
        raise ValueError(
            f"affinity: target task {name}'s self-affinity is {value:.4g} (<= 0), so normalizing by it would flip or "
            "blow up its column; use nonpositive='blank' to leave such columns NaN"
        )
    scale = np.where(diagonal > 0.0, diagonal, np.nan)
    normalized = values / scale[None, :]
    if isinstance(affinity, pd.DataFrame):
        return pd.DataFrame(normalized, index=affinity.index.copy(), columns=affinity.columns.copy())
    return normalized


def nonpositive_self_affinities(affinity: Matrix) -> dict[str, float]:
    """The target tasks whose self-affinity ``A[t, t]`` is <= 0, with that value, in matrix order (task names are
    the DataFrame's labels, or ``"0"``, ``"1"``, ... for an array): the columns ``normalize_by_self_affinity``
    refuses or blanks."""
    values, names = _square(affinity)
    return _nonpositive(values.diagonal(), names)


def _nonpositive(diagonal: FloatArray, names: tuple[str, ...]) -> dict[str, float]:
    return {names[t]: float(diagonal[t]) for t in range(len(names)) if diagonal[t] <= 0.0}


def _square(affinity: np.ndarray | pd.DataFrame) -> tuple[FloatArray, tuple[str, ...]]:
    """Values and task names of a square affinity matrix (``ValueError`` naming the problem otherwise)."""
    if isinstance(affinity, pd.DataFrame):
        if affinity.shape[0] != affinity.shape[1]:
            raise ValueError(f"affinity must be square (sources x targets), got shape {affinity.shape}")
        if list(affinity.index) != list(affinity.columns):
            raise ValueError("affinity must have the same task labels, in the same order, on its index and columns")
        names = tuple(str(label) for label in affinity.columns)
        if len(set(names)) != len(names):
            raise ValueError(f"affinity has duplicate task labels: {list(names)}")
        raw: object = affinity.to_numpy()
    else:
        raw = affinity
    try:
        values = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"affinity must hold numbers ({error})") from None
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"affinity must be a square matrix (sources x targets), got shape {values.shape}")
    if values.shape[0] == 0:
        raise ValueError("affinity has no tasks (0 x 0)")
    if not isinstance(affinity, pd.DataFrame):
        names = tuple(str(index) for index in range(values.shape[0]))
    return values, names


def _singleton(singleton: object) -> float | None:
    """``None`` for the self-affinity, else the fixed value."""
    if isinstance(singleton, str):
        if singleton == "self":
            return None
    elif isinstance(singleton, numbers.Real) and not isinstance(singleton, bool) and math.isfinite(singleton):
        return float(singleton)
    raise ValueError(f"singleton must be 'self' or a finite number, got {singleton!r}")


def _lex_masks(count: int) -> IntArray:
    """All non-empty task subsets as bit masks, in lexicographic order of their sorted index tuples."""
    order: list[int] = []

    def extend(prefix: int, start: int) -> None:
        for task in range(start, count):
            mask = prefix | (1 << task)
            order.append(mask)
            extend(mask, task + 1)

    extend(0, 0)
    return np.array(order, dtype=np.int64)


def _score_table(values: FloatArray, alone: float | None) -> FloatArray:
    """``[2^K, K]``: ``score(t, G)`` for the group with bit mask ``G``, ``-inf`` where ``t`` is not in ``G``."""
    count = len(values)
    others = values.copy()
    np.fill_diagonal(others, 0.0)
    sums = np.zeros((1, count))
    for source in range(count):  # sums[G, t] = sum over s in G of A[s, t] (s != t), added in task order
        sums = np.concatenate([sums, sums + others[source]])
    masks = np.arange(1 << count, dtype=np.int64)
    member = ((masks[:, None] >> np.arange(count)) & 1).astype(bool)
    size = member.sum(axis=1)
    table = np.full((1 << count, count), -np.inf)
    pairs = member & (size[:, None] >= 2)
    table[pairs] = (sums / np.maximum(size - 1, 1)[:, None])[pairs]
    single = np.flatnonzero(size == 1)
    task = np.log2(single).astype(np.int64)
    table[single, task] = values.diagonal()[task] if alone is None else alone
    return table


def _task_sum(best: FloatArray) -> FloatArray:
    """Sum over the last axis in task order: the one summation used for every grouping's total."""
    total = best[..., 0].copy()
    for task in range(1, best.shape[-1]):
        total += best[..., task]
    return total


def _exhaustive(scores: FloatArray, limit: int) -> tuple[int, ...]:
    """Every combination of at most ``limit`` candidates, fewest groups first, each size lexicographically."""
    candidates = len(scores)
    best_total = -np.inf
    best: tuple[int, ...] = ()
    for size in range(1, min(limit, candidates) + 1):
        combinations = itertools.combinations(range(candidates), size)
        while True:
            flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(combinations, _CHUNK)), dtype=np.int64)
            if flat.size == 0:
                break
            chunk = flat.reshape(-1, size)
            best_scores = scores[chunk[:, 0]]
            for column in range(1, size):
                np.maximum(best_scores, scores[chunk[:, column]], out=best_scores)
            totals = _task_sum(best_scores)
            first = int(np.argmax(totals))  # the first maximum: lexicographically smallest at this size
            if totals[first] > best_total:
                best_total, best = float(totals[first]), tuple(int(i) for i in chunk[first])
    return best


def _ternary_pairs(count: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """All pairs ``inner subset of outer`` of task bit masks, at flat index ``sum_t d_t 3^t`` with digit
    ``d_t`` = 0 (t not in outer), 1 (in outer only), 2 (in both)."""
    outer = np.zeros(1, dtype=np.int32)
    inner = np.zeros(1, dtype=np.int32)
    for task in range(count):
        bit = 1 << task
        outer = np.concatenate([outer, outer | bit, outer | bit])
        inner = np.concatenate([inner, inner, inner | bit])
    return outer, inner


def _max_per_inner(values: FloatArray, count: int) -> FloatArray:
    """``[2^K]``: for each inner mask, the max over the pairs with that inner mask (over its supersets)."""
    x = values
    for task in range(count):
        x = x.reshape(-1, 3, 1 << task)
        x = np.stack([np.maximum(x[:, 0], x[:, 1]), x[:, 2]], axis=1)
    return x.reshape(-1)


def _max_per_outer(values: FloatArray, count: int) -> FloatArray:
    """``[2^K]``: for each outer mask, the max over the pairs with that outer mask (over its subsets)."""
    x = values
    for task in range(count):
        x = x.reshape(-1, 3, 1 << task)
        x = np.stack([x[:, 0], np.maximum(x[:, 1], x[:, 2])], axis=1)
    return x.reshape(-1)


class _BranchAndBound:
    """Depth-first search over combinations of candidates in lexicographic order (as ``_exhaustive``), over
    non-redundant groupings (each group strictly best for one of its tasks), pruned by exact bounds."""

    def __init__(self, scores: FloatArray, masks: IntArray, limit: int) -> None:
        self.scores, self.masks, self.limit = scores, masks, limit
        self.candidates, self.count = scores.shape
        count = self.count
        finite = np.abs(scores[np.isfinite(scores)])
        # Margin for floating-point differences between bounds and exact totals (sums of <= K scores each:
        # error below K^2 * 1.2e-16 * max|score|).
        self.margin = 1e-9 * count * float(finite.max(initial=0.0))
        suffix = np.full((self.candidates + 1, count), -np.inf)
        suffix[:-1] = np.maximum.accumulate(scores[::-1], axis=0)[::-1]
        self.suffix = suffix  # suffix[i, t]: best score of t over candidates i, i + 1, ...
        self.outer, self.inner = _ternary_pairs(count)
        self.rest = self.outer ^ self.inner
        self.all_masks = np.arange(1 << count, dtype=np.int64)
        by_mask = np.full((count, 1 << count), -np.inf)
        by_mask[:, masks] = scores.T
        served = np.zeros(len(self.outer))  # sum over t in inner of score(t, outer)
        for task in range(count):
            pick = np.flatnonzero((self.inner >> task) & 1)
            served[pick] += by_mask[task][self.outer[pick]]
        self.served = served
        self.served[self.inner == 0] = -np.inf  # a new group must serve a task
        block = _max_per_inner(np.where(self.inner == 0, 0.0, served), count)  # best superset for each block
        block_inner = block[self.inner]
        empty_only = np.full(1 << count, -np.inf)
        empty_only[0] = 0.0
        # relaxed[r][U]: best split of the task set U into at most r blocks, each served by its best superset.
        self.relaxed = [empty_only, block]
        for _ in range(2, limit + 1):
            self.relaxed.append(_max_per_outer(block_inner + self.relaxed[-1][self.rest], count))
        self.floor = float(self.relaxed[limit][-1]) - self.margin  # the optimum is at least this
        self.best_total = -np.inf
        self.best: tuple[int, ...] = ()

    def run(self) -> tuple[int, ...]:
        self._expand((), np.full(self.count, -np.inf), (1 << self.count) - 1, [], self.limit)
        return self.best

    def _offer(self, total: float, chosen: tuple[int, ...]) -> None:
        if total > self.best_total or (
            total == self.best_total and (len(chosen), chosen) < (len(self.best), self.best)
        ):
            self.best_total, self.best = total, chosen

    def _beats_ties(self, prefix: tuple[int, ...]) -> bool:
        """Whether the incumbent beats, at an equal total, every strict extension of ``prefix``."""
        if not self.best:
            return False
        fewest = len(prefix) + 1
        return len(self.best) < fewest or (len(self.best) == fewest and self.best[: len(prefix)] < prefix)

    def _prunable(self, prefix: tuple[int, ...], relaxed: float, exact: float) -> bool:
        """``relaxed`` (up to the margin) and ``exact`` bound the totals of the extensions of ``prefix``."""
        bound = min(relaxed + self.margin, exact)
        if bound == -np.inf or bound < self.floor:
            return True
        return bound < self.best_total or (bound <= self.best_total and self._beats_ties(prefix))

    def _bounds(self, current: FloatArray, uncovered: int, private: list[int], remaining: int) -> FloatArray:
        """``[2^K]`` indexed by a new group's mask ``j``: an upper bound on the totals of the non-redundant
        groupings made of the current groups, ``j`` and at most ``remaining`` further groups.

        ``j`` serves a non-empty ``V`` (subset of ``j``), the further groups serve ``U`` (disjoint from
        ``V``) split into blocks, the other tasks keep ``current``; every current group keeps one of its
        private tasks out of ``W = U + V``, and the uncovered tasks lie in ``W``.
        """
        count = self.count
        kept = np.zeros(1)  # kept[W] = sum of current[t] over t not in W
        for task in range(count):
            value = current[task] if math.isfinite(current[task]) else 0.0
            kept = np.concatenate([kept + value, kept])
        allowed = (self.all_masks & uncovered) == uncovered
        for mask in private:
            allowed &= (self.all_masks & mask) != mask
        kept[~allowed] = -np.inf
        best_for_v = _max_per_inner(kept[self.outer] + self.relaxed[remaining][self.rest], count)
        return _max_per_outer(self.served + best_for_v[self.inner], count)

    def _expand(
        self, prefix: tuple[int, ...], current: FloatArray, uncovered: int, private: list[int], left: int
    ) -> None:
        start = prefix[-1] + 1 if prefix else 0
        if start >= self.candidates:
            return
        rows = self.scores[start:]
        masks = self.masks[start:]
        merged = np.maximum(current, rows)
        keep = (rows > current).any(axis=1)  # the new group is strictly best for one of its tasks
        weights = 1 << np.arange(self.count)
        for group, mask in zip(prefix, private):  # and every current group stays so
            tasks = np.flatnonzero(mask & weights)
            keep &= (self.scores[group, tasks] > rows[:, tasks]).any(axis=1)
        leaves = np.flatnonzero(keep & ((masks & uncovered) == uncovered))
        if leaves.size:
            totals = _task_sum(merged[leaves])
            first = int(np.argmax(totals))
            self._offer(float(totals[first]), (*prefix, start + int(leaves[first])))
        if left == 1:
            return
        relaxed = self._bounds(current, uncovered, private, left - 1)[masks]
        exact = _task_sum(np.maximum(merged, self.suffix[start + 1 :]))
        for index in np.flatnonzero(keep):
            child = (*prefix, start + int(index))
            if self._prunable(child, float(relaxed[index]), float(exact[index])):
                continue
            chosen = self.scores[list(child)]
            child_private = []
            for position in range(len(child)):
                others = np.delete(chosen, position, axis=0).max(axis=0, initial=-np.inf)
                child_private.append(int(weights[chosen[position] > others].sum()))
            self._expand(child, merged[index], uncovered & ~int(masks[index]), child_private, left - 1)


def _grouping(
    scores: FloatArray, masks: IntArray, chosen: tuple[int, ...], names: tuple[str, ...], method: str
) -> Grouping:
    rows = scores[list(chosen)]
    best = rows.max(axis=0)
    total = float(_task_sum(best))
    groups = tuple(tuple(names[t] for t in range(len(names)) if int(masks[i]) >> t & 1) for i in chosen)
    served_by = {name: groups[int(np.argmax(rows[:, t]))] for t, name in enumerate(names)}
    return Grouping(
        groups=groups,
        score=total / len(names),
        task_scores={name: float(best[t]) for t, name in enumerate(names)},
        served_by=served_by,
        method=method,
    )
