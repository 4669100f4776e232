"""Task metrics: registered components, plain callables, and exact over a whole set seen in batches.

A metric has a ``name`` (the metric name in the records) and a direction (``higher_is_better``). Called as
``metric(outputs, targets)`` it returns its value on those examples. Evaluation feeds a set batch by batch:
``metric.statistics(outputs, targets)`` gives a batch's sufficient statistics (counts, sums, a confusion matrix;
the values themselves where the metric needs all of them: Spearman, median), ``metric.merge(a, b)`` combines
two batches' and ``metric.compute(stats)`` the value, so the result is the metric on the whole set, never a mean
of per-batch values (``Accumulator`` does the bookkeeping). Centred sums are merged with Chan et al.'s pairwise
formulas (numerically stable).

A task lists its metrics (``mtlscope.settings.Task(metrics=...)``) as registered names, ``{"name": ...,
**options}`` mappings, ``Metric`` instances or plain functions wrapped by ``from_function`` (which keeps the
outputs and computes the function once on the whole set). Options are validated like every component's
(``mtlscope.registry``).

Outputs are decoded the same way by every label metric (``labels``): outputs with one more dimension than the
targets and more than one entry on dim 1 are class scores (``argmax`` over dim 1); outputs with one value per
target are logits of a binary label (``> 0``). Value metrics compare ``outputs`` reshaped to the targets.

Built in (``docs/metrics.md`` has the reference entry of each): ``accuracy``, ``balanced_accuracy``, ``f1``
(binary), ``macro_f1``, ``mcc`` (Matthews), ``auc``, ``mae``, ``rmse``, ``rounded_accuracy``, ``r2``, ``pearson``,
``spearman``, ``miou``, ``pixel_accuracy``, ``depth_abs_error``, ``depth_rel_error``, ``instance_offset_error``,
``normal_mean_angle``,
``normal_median_angle``, ``normal_within`` (fraction of angles below ``degrees``; named ``normal_within_11.25``, ...).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from mtlscope.losses import Loss, valid_mask
from mtlscope.options import PositiveFloat
from mtlscope.registry import Registry

Stats = dict[str, Tensor]

__all__ = [
    "METRICS",
    "Accumulator",
    "LossMetric",
    "Metric",
    "MetricLike",
    "from_function",
    "higher_is_better",
    "resolve_metric",
]


class Metric:
    """One metric: ``name``, ``higher_is_better``, and ``statistics`` / ``merge`` / ``compute`` (module docstring).

    ``merge`` adds the statistics by default; a statistic whose key starts with ``values`` is concatenated.
    """

    name: str = "metric"
    higher_is_better: bool = True

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        raise NotImplementedError

    def merge(self, first: Stats, second: Stats) -> Stats:
        return {
            key: torch.cat([value, second[key]]) if key.startswith("values") else value + second[key]
            for key, value in first.items()
        }

    def compute(self, stats: Stats) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, outputs: Tensor, targets: Tensor) -> float:
        return self.compute(self.statistics(outputs, targets))

    def __repr__(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        return f"{type(self).__name__}(name={self.name!r}, {direction} is better)"


class Accumulator:
    """The statistics of one metric over the batches of one set: ``update(outputs, targets)``, then ``compute()``."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.stats: Stats | None = None

    @torch.no_grad()
    def update(self, outputs: Tensor, targets: Tensor) -> None:
        batch = self.metric.statistics(outputs, targets)
        self.stats = batch if self.stats is None else self.metric.merge(self.stats, batch)

    def compute(self) -> float:
        if self.stats is None:
            raise ValueError(f"metric {self.metric.name!r}: no examples")
        return self.metric.compute(self.stats)


# -- decoding ----------------------------------------------------------------------------------------------


def labels(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(predicted labels, target labels, number of classes)``, flat (see the module docstring)."""
    if outputs.dim() == targets.dim() + 1 and outputs.shape[1] > 1:
        return outputs.argmax(dim=1).reshape(-1), targets.reshape(-1), int(outputs.shape[1])
    if outputs.numel() == targets.numel():
        return (outputs.reshape(-1) > 0).long(), targets.reshape(-1).long(), 2
    raise ValueError(f"outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}")


def _values(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if outputs.numel() != targets.numel():
        raise ValueError(
            f"outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}"
        )
    return outputs.reshape(targets.shape).to(torch.float64), targets.to(torch.float64)


def _count(value: Tensor | int) -> Tensor:
    return torch.as_tensor(value, dtype=torch.int64)


# -- label metrics -----------------------------------------------------------------------------------------


class ConfusionMetric(Metric):
    """A metric of the confusion matrix (rows: targets, columns: predictions); ``ignore_index`` targets left out."""

    def __init__(self, ignore_index: int | None = -100) -> None:
        self.ignore_index = ignore_index

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target, classes = labels(outputs, targets)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            predicted, target = predicted[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
            raise ValueError(f"{self.name}: targets must be class indices in 0..{classes - 1} (or ignore_index)")
        confusion = torch.bincount(target * classes + predicted, minlength=classes * classes)
        return {"confusion": confusion.reshape(classes, classes)}

    def compute(self, stats: Stats) -> float:
        return self.from_confusion(stats["confusion"])

    def from_confusion(self, confusion: Tensor) -> float:
        raise NotImplementedError


class Accuracy(ConfusionMetric):
    name = "accuracy"

    def from_confusion(self, confusion: Tensor) -> float:
        total = int(confusion.sum())
        return int(confusion.diagonal().sum()) / total if total else math.nan


class PixelAccuracy(Accuracy):
    name = "pixel_accuracy"


class BalancedAccuracy(ConfusionMetric):
    name = "balanced_accuracy"

    def from_confusion(self, confusion: Tensor) -> float:
        support = confusion.sum(dim=1).to(torch.float64)
        present = support > 0
        if not bool(present.any()):
            return math.nan
        return float((confusion.diagonal().to(torch.float64)[present] / support[present]).mean())


class BinaryF1(ConfusionMetric):
    name = "f1"

    def __init__(self, positive: int = 1, ignore_index: int | None = -100) -> None:
        super().__init__(ignore_index)
        self.positive = positive

    def from_confusion(self, confusion: Tensor) -> float:
        if self.positive >= confusion.shape[0]:
            raise ValueError(f"f1: positive class {self.positive} is not one of the {confusion.shape[0]} classes")
        true_positive = int(confusion[self.positive, self.positive])
        denominator = int(confusion[self.positive].sum()) + int(confusion[:, self.positive].sum())
        return 2 * true_positive / denominator if denominator else 0.0


class MacroF1(ConfusionMetric):
    """F1 averaged over the classes present in the targets (sklearn ``f1_score(average="macro",
    labels=<classes in the targets>)``)."""

    name = "macro_f1"

    def from_confusion(self, confusion: Tensor) -> float:
        true_positive = confusion.diagonal().to(torch.float64)
        support = confusion.sum(dim=1).to(torch.float64)
        predicted_count = confusion.sum(dim=0).to(torch.float64)
        denominator = support + predicted_count
        present = support > 0
        f1 = torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), 0.0)
        return float(f1[present].mean()) if bool(present.any()) else 0.0


class Matthews(ConfusionMetric):
    name = "mcc"

    def from_confusion(self, confusion: Tensor) -> float:
        matrix = confusion.to(torch.float64)
        true, predicted = matrix.sum(dim=1), matrix.sum(dim=0)
        correct, total = float(matrix.diagonal().sum()), float(matrix.sum())
        numerator = correct * total - float(true @ predicted)
        denominator = math.sqrt((total**2 - float(predicted @ predicted)) * (total**2 - float(true @ true)))
        return numerator / denominator if denominator else 0.0


class MeanIoU(ConfusionMetric):
    name = "miou"

    def from_confusion(self, confusion: Tensor) -> float:
        matrix = confusion.to(torch.float64)
        intersection = matrix.diagonal()
        union = matrix.sum(dim=1) + matrix.sum(dim=0) - intersection
        present = union > 0
        return float((intersection[present] / union[present]).mean()) if bool(present.any()) else math.nan


# -- value metrics -----------------------------------------------------------------------------------------


def _valid_values(outputs: Tensor, targets: Tensor, invalid: float | None) -> tuple[Tensor, Tensor]:
    """``_values`` of the targets not equal to ``invalid`` (``mtlscope.losses.valid_mask``), flat."""
    predicted, target = _values(outputs, targets)
    if invalid is None:
        return predicted.reshape(-1), target.reshape(-1)
    keep = valid_mask(target, invalid)
    return predicted[keep], target[keep]


class MeanAbsoluteError(Metric):
    name, higher_is_better = "mae", False

    def __init__(self, invalid: float | None = None) -> None:
        self.invalid = invalid

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _valid_values(outputs, targets, self.invalid)
        return {"abs": (predicted - target).abs().sum(), "count": _count(target.numel())}

    def compute(self, stats: Stats) -> float:
        return float(stats["abs"] / stats["count"])


class RootMeanSquaredError(Metric):
    name, higher_is_better = "rmse", False

    def __init__(self, invalid: float | None = None) -> None:
        self.invalid = invalid

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _valid_values(outputs, targets, self.invalid)
        return {"squares": ((predicted - target) ** 2).sum(), "count": _count(target.numel())}

    def compute(self, stats: Stats) -> float:
        return math.sqrt(float(stats["squares"] / stats["count"]))


class RoundedAccuracy(Metric):
    """Fraction of the valid targets equal to the output rounded to the nearest integer (halves to even)."""

    name, higher_is_better = "rounded_accuracy", True

    def __init__(self, invalid: float | None = None) -> None:
        self.invalid = invalid

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _valid_values(outputs, targets, self.invalid)
        return {"correct": _count(int((predicted.round() == target).sum())), "count": _count(target.numel())}

    def compute(self, stats: Stats) -> float:
        count = int(stats["count"])
        return float(stats["correct"]) / count if count else math.nan


class AreaUnderROC(Metric):
    """ROC AUC of a binary task: the probability that a random positive scores above a random negative (ties
    count one half), from the ranks of the scores (Mann-Whitney U); one score per target (a logit) or two class
    scores (their difference). Keeps every score: memory grows with the set."""

    name, higher_is_better = "auc", True

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        if outputs.dim() == targets.dim() + 1 and outputs.shape[1] == 2:
            scores = (outputs[:, 1] - outputs[:, 0]).reshape(-1)
        elif outputs.numel() == targets.numel():
            scores = outputs.reshape(-1)
        else:
            raise ValueError(
                f"auc: outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}"
            )
        labels = targets.reshape(-1)
        if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("auc: targets must be binary labels 0 or 1")
        return {"values_scores": scores.to(torch.float64), "values_labels": labels.to(torch.float64)}

    def compute(self, stats: Stats) -> float:
        labels = stats["values_labels"]
        positives = int(labels.sum())
        negatives = labels.numel() - positives
        if positives == 0 or negatives == 0:
            return math.nan
        ranks = average_ranks(stats["values_scores"])
        rank_sum = float(ranks[labels == 1].sum())
        return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _moments(values: Tensor) -> tuple[Tensor, Tensor]:
    mean = values.mean()
    return mean, values - mean


def _merge_centred(first: Stats, second: Stats, names: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> Stats:
    """Chan et al. (1979): means ``mean_<v>`` and centred sums ``m2_<v>`` (and co-moments ``c_<v><w>``) of two sets."""
    n1, n2 = first["count"].to(torch.float64), second["count"].to(torch.float64)
    n = n1 + n2
    merged: Stats = {"count": first["count"] + second["count"]}
    delta = {v: second[f"mean_{v}"] - first[f"mean_{v}"] for v in names}
    for v in names:
        merged[f"mean_{v}"] = first[f"mean_{v}"] + delta[v] * n2 / n
        merged[f"m2_{v}"] = first[f"m2_{v}"] + second[f"m2_{v}"] + delta[v] ** 2 * n1 * n2 / n
    for v, w in pairs:
        merged[f"c_{v}{w}"] = first[f"c_{v}{w}"] + second[f"c_{v}{w}"] + delta[v] * delta[w] * n1 * n2 / n
    for key in first:
        if key not in merged:
            merged[key] = first[key] + second[key]
    return merged


class RSquared(Metric):
    """Coefficient of determination ``1 - SS_res / SS_tot`` (over all target elements)."""

    name = "r2"

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _values(outputs, targets)
        mean, centred = _moments(target)
        return {
            "count": _count(target.numel()),
            "mean_y": mean,
            "m2_y": (centred**2).sum(),
            "residual": ((predicted - target) ** 2).sum(),
        }

    def merge(self, first: Stats, second: Stats) -> Stats:
        return _merge_centred(first, second, ("y",), ())

    def compute(self, stats: Stats) -> float:
        total, residual = stats["m2_y"], stats["residual"]
        if float(total) > 0:
            return 1.0 - float(residual / total)
        return 1.0 if float(residual) == 0 else 0.0  # constant targets (as sklearn's r2_score)


class Pearson(Metric):
    name = "pearson"

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _values(outputs, targets)
        mean_x, x = _moments(predicted.reshape(-1))
        mean_y, y = _moments(target.reshape(-1))
        return {
            "count": _count(x.numel()),
            "mean_x": mean_x,
            "mean_y": mean_y,
            "m2_x": (x**2).sum(),
            "m2_y": (y**2).sum(),
            "c_xy": (x * y).sum(),
        }

    def merge(self, first: Stats, second: Stats) -> Stats:
        return _merge_centred(first, second, ("x", "y"), (("x", "y"),))

    def compute(self, stats: Stats) -> float:
        denominator = math.sqrt(float(stats["m2_x"]) * float(stats["m2_y"]))
        return float(stats["c_xy"]) / denominator if denominator else math.nan


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of ``values`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = values.argsort(stable=True)
    ordered = values[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    group = first.cumsum(0) - 1
    position = torch.arange(1, len(values) + 1, dtype=torch.float64, device=values.device)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=values.device).index_add_(0, group, position)
    sizes = torch.bincount(group).to(torch.float64)
    ranks = torch.empty_like(position)
    ranks[order] = (sums / sizes)[group]
    return ranks


class Spearman(Metric):
    """Pearson correlation of the average ranks; keeps all values (ranks are global)."""

    name = "spearman"

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _values(outputs, targets)
        return {"values_x": predicted.reshape(-1), "values_y": target.reshape(-1)}

    def compute(self, stats: Stats) -> float:
        if stats["values_x"].numel() == 0:
            return math.nan
        return Pearson()(average_ranks(stats["values_x"]), average_ranks(stats["values_y"]))


# -- dense metrics -----------------------------------------------------------------------------------------


class DepthError(Metric):
    """Mean absolute (``relative=False``) or relative (``|d' - d| / d``) depth error over the valid pixels
    (target not equal to ``invalid``)."""

    higher_is_better = False

    def __init__(self, relative: bool, invalid: float | None = 0.0) -> None:
        self.relative, self.invalid = relative, invalid
        self.name = "depth_rel_error" if relative else "depth_abs_error"

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        predicted, target = _values(outputs, targets)
        mask = valid_mask(targets, self.invalid)
        error = (predicted[mask] - target[mask]).abs()
        if self.relative:
            error = error / target[mask]
        return {"sum": error.sum(), "count": _count(mask.sum())}

    def compute(self, stats: Stats) -> float:
        count = int(stats["count"])
        return float(stats["sum"]) / count if count else math.nan


class InstanceOffsetError(DepthError):
    """Mean absolute error of the instance-centre offsets (Sener & Koltun 2018's instance proxy task: each pixel
    of an instance regresses its ``(dy, dx)`` to the instance's centre of mass) over the valid values (target not
    equal to ``invalid``, 250 in their preprocessing: pixels outside every instance)."""

    def __init__(self, invalid: float | None = 250.0) -> None:
        super().__init__(relative=False, invalid=invalid)
        self.name = "instance_offset_error"


def normal_angles(outputs: Tensor, targets: Tensor) -> Tensor:
    """Angles in degrees between predicted and target normals (dim 1), at the positions with a non-zero target."""
    if outputs.shape != targets.shape or outputs.dim() < 2:
        raise ValueError(
            f"normal metrics need outputs and targets of one shape [N, 3, ...], got {tuple(outputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    predicted = torch.nn.functional.normalize(outputs.to(torch.float64), dim=1)
    target = torch.nn.functional.normalize(targets.to(torch.float64), dim=1)
    mask = targets.abs().sum(dim=1) > 0
    cosine = (predicted * target).sum(dim=1)[mask].clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


class NormalMeanAngle(Metric):
    name, higher_is_better = "normal_mean_angle", False

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        angles = normal_angles(outputs, targets)
        return {"sum": angles.sum(), "count": _count(angles.numel())}

    def compute(self, stats: Stats) -> float:
        count = int(stats["count"])
        return float(stats["sum"]) / count if count else math.nan


class NormalMedianAngle(Metric):
    """Median angle (the mean of the two middle values for an even count, as ``numpy.median``); keeps one float32
    per valid pixel."""

    name, higher_is_better = "normal_median_angle", False

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        return {"values": normal_angles(outputs, targets).to(torch.float32)}

    def compute(self, stats: Stats) -> float:
        ordered = stats["values"].to(torch.float64).sort().values
        n = ordered.numel()
        return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2) if n else math.nan


class NormalWithin(Metric):
    """Fraction of valid pixels whose angle error is below ``degrees``."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees
        self.name = f"normal_within_{degrees:g}"

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        angles = normal_angles(outputs, targets)
        return {"within": _count((angles < self.degrees).sum()), "count": _count(angles.numel())}

    def compute(self, stats: Stats) -> float:
        count = int(stats["count"])
        return int(stats["within"]) / count if count else math.nan


# -- the loss as a metric, and plain functions -------------------------------------------------------------


class LossMetric(Metric):
    """The task's loss on the whole set (record ``loss``): summed over the batches, divided by its number of terms,
    in the loss's dtype (float32 for a float32 model), as the loss itself reports it."""

    name, higher_is_better = "loss", False

    def __init__(self, loss: Loss) -> None:
        self.loss = loss

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        total, count = self.loss.sum_and_count(outputs, targets)
        total = total.detach()
        return {"sum": total.to(torch.float64), "count": _count(count), "dtype": torch.zeros((), dtype=total.dtype)}

    def merge(self, first: Stats, second: Stats) -> Stats:
        return {"sum": first["sum"] + second["sum"], "count": first["count"] + second["count"], "dtype": first["dtype"]}

    def compute(self, stats: Stats) -> float:
        return float(stats["sum"].to(stats["dtype"].dtype) / int(stats["count"]))


class FunctionMetric(Metric):
    """A plain function ``fn(outputs, targets) -> float`` computed once on the whole set (it keeps the outputs)."""

    def __init__(self, function: Callable[[Tensor, Tensor], Any], name: str, higher_is_better: bool) -> None:
        self.function, self.name, self.higher_is_better = function, name, higher_is_better

    def statistics(self, outputs: Tensor, targets: Tensor) -> Stats:
        return {"values_outputs": outputs.detach(), "values_targets": targets}

    def compute(self, stats: Stats) -> float:
        value = self.function(stats["values_outputs"], stats["values_targets"])
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            got = f"a tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"metric {self.name!r} must return one number, got {got}")
        return float(value)


def from_function(function: Callable[[Tensor, Tensor], Any], *, name: str, higher_is_better: bool) -> Metric:
    """``function(outputs, targets) -> number`` as a metric named ``name`` with its direction.

    The function sees the outputs and targets of a whole set at once (evaluation keeps them across batches) and
    returns one number (a float, or a one-element tensor). ``name`` is the metric's record name: a non-empty
    string other than ``loss``. A bad definition is one ``ValueError``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a metric name must be a non-empty string, got {name!r}")
    if name == LossMetric.name:
        raise ValueError("a metric cannot be named 'loss' (every task records its loss under that name)")
    if not callable(function) or isinstance(function, type):
        raise ValueError(
            f"metric {name!r}: expected a function (outputs, targets) -> number, got {type(function).__name__}"
        )
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"metric {name!r}: higher_is_better must be true or false")
    return FunctionMetric(function, name, higher_is_better)


# -- the registry ------------------------------------------------------------------------------------------

METRICS: Registry[Metric] = Registry("metric")


@METRICS.register("accuracy", "fraction of correct predictions (targets = ignore_index left out)")
def accuracy(*, ignore_index: int | None = -100) -> Metric:
    return Accuracy(ignore_index)


@METRICS.register("balanced_accuracy", "mean recall over the classes present in the targets")
def balanced_accuracy(*, ignore_index: int | None = -100) -> Metric:
    return BalancedAccuracy(ignore_index)


@METRICS.register("f1", "binary F1 of the class `positive`")
def f1(*, positive: int = 1, ignore_index: int | None = -100) -> Metric:
    return BinaryF1(positive, ignore_index)


@METRICS.register("macro_f1", "F1 averaged over the classes present in the targets")
def macro_f1(*, ignore_index: int | None = -100) -> Metric:
    return MacroF1(ignore_index)


@METRICS.register("mcc", "Matthews correlation coefficient (multi-class form)")
def mcc(*, ignore_index: int | None = -100) -> Metric:
    return Matthews(ignore_index)


@METRICS.register("miou", "mean intersection over union of the classes present in targets or predictions")
def miou(*, ignore_index: int | None = -100) -> Metric:
    return MeanIoU(ignore_index)


@METRICS.register("pixel_accuracy", "fraction of correctly labelled pixels (targets = ignore_index left out)")
def pixel_accuracy(*, ignore_index: int | None = -100) -> Metric:
    return PixelAccuracy(ignore_index)


@METRICS.register("mae", "mean absolute error (over the targets not equal to `invalid`)")
def mae(*, invalid: float | None = None) -> Metric:
    return MeanAbsoluteError(invalid)


@METRICS.register("rmse", "root mean squared error (over the targets not equal to `invalid`)")
def rmse(*, invalid: float | None = None) -> Metric:
    return RootMeanSquaredError(invalid)


@METRICS.register("rounded_accuracy", "fraction of outputs that round to their target (not equal to `invalid`)")
def rounded_accuracy(*, invalid: float | None = None) -> Metric:
    return RoundedAccuracy(invalid)


@METRICS.register("auc", "area under the ROC curve of a binary task (ties count one half)")
def auc() -> Metric:
    return AreaUnderROC()


@METRICS.register("r2", "coefficient of determination")
def r2() -> Metric:
    return RSquared()


@METRICS.register("pearson", "Pearson correlation of outputs and targets")
def pearson() -> Metric:
    return Pearson()


@METRICS.register("spearman", "Spearman rank correlation of outputs and targets")
def spearman() -> Metric:
    return Spearman()


@METRICS.register("depth_abs_error", "mean |predicted - true depth| over the valid pixels")
def depth_abs_error(*, invalid: float | None = 0.0) -> Metric:
    return DepthError(False, invalid)


@METRICS.register("depth_rel_error", "mean |predicted - true depth| / true depth over the valid pixels")
def depth_rel_error(*, invalid: float | None = 0.0) -> Metric:
    return DepthError(True, invalid)


@METRICS.register("instance_offset_error", "mean |predicted - true instance-centre offset| over instance pixels")
def instance_offset_error(*, invalid: float | None = 250.0) -> Metric:
    return InstanceOffsetError(invalid)


@METRICS.register("normal_mean_angle", "mean angle (degrees) between predicted and true surface normals")
def normal_mean_angle() -> Metric:
    return NormalMeanAngle()


@METRICS.register("normal_median_angle", "median angle (degrees) between predicted and true surface normals")
def normal_median_angle() -> Metric:
    return NormalMedianAngle()


@METRICS.register("normal_within", "fraction of normal angle errors below `degrees` (11.25, 22.5, 30 in papers)")
def normal_within(*, degrees: PositiveFloat = 11.25) -> Metric:
    return NormalWithin(degrees)


MetricLike = Metric | str | Mapping[str, Any]


def resolve_metric(spec: MetricLike) -> Metric:
    """A ``Metric`` from a registered name, a ``{"name": ..., **options}`` mapping or a ``Metric``."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str | Mapping):
        return METRICS.build_spec(spec)
    if callable(spec):
        raise ValueError("a plain function needs a name and a direction: use mtlscope.metrics.from_function")
    raise ValueError(f"a metric must be a name, a mapping with a name or a Metric, got {type(spec).__name__}")


def higher_is_better(name: str) -> bool:
    """The direction of a built-in metric by its record name (``loss`` included); ``KeyError`` for other names.

    For a task's own metrics use the task's declaration (``Task.directions``); this is for records alone."""
    if name == "loss":
        return False
    if name.startswith("normal_within_"):
        return True
    if name in METRICS.available():
        return METRICS.build(name).higher_is_better
    raise KeyError(f"metric {name!r} is not built in; its direction is declared by its task")
