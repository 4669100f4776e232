"""Every built-in metric against a hand-computed value or an independent reference (sklearn, scipy), and batched
evaluation against the whole set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as sk

from mtlscope import metrics
from mtlscope.losses import cross_entropy
from mtlscope.metrics import METRICS, Accumulator, LossMetric, from_function, resolve_metric
from mtlscope.registry import OptionError


def _logits(predicted: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


# targets and predictions of 8 examples, 3 classes (worked out by hand below)
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
PREDICTED = [0, 1, 0, 1, 2, 2, 2, 0]
# confusion (rows target, columns predicted): [[2, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_accuracy_by_hand() -> None:
    assert metrics.accuracy()(_logits(PREDICTED, 3), TARGETS) == 5 / 8


def test_accuracy_ignores_ignore_index() -> None:
    targets = torch.tensor([0, 1, -100, 1])
    assert metrics.accuracy()(_logits([0, 0, 1, 1], 2), targets) == 2 / 3


def test_balanced_accuracy_by_hand() -> None:
    expected = (2 / 3 + 1 / 2 + 2 / 3) / 3  # recall per class
    value = metrics.balanced_accuracy()(_logits(PREDICTED, 3), TARGETS)
    assert value == pytest.approx(expected)
    assert value == pytest.approx(sk.balanced_accuracy_score(TARGETS.numpy(), PREDICTED))


def test_binary_f1_by_hand() -> None:
    targets = torch.tensor([1, 1, 1, 0, 0, 0])
    logits = torch.tensor([2.0, 1.0, -1.0, 3.0, -2.0, -0.5])  # one logit per label: predicted 1 1 0 1 0 0
    assert metrics.f1()(logits, targets) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1, FN 1
    two_class = _logits([1, 1, 0, 1, 0, 0], 2)
    assert metrics.f1()(two_class, targets) == pytest.approx(sk.f1_score(targets.numpy(), [1, 1, 0, 1, 0, 0]))


def test_macro_f1_by_hand() -> None:
    # F1 per class: 2*2/(3+3)=2/3, 2*1/(2+2)=1/2, 2*2/(3+3)=2/3
    value = metrics.macro_f1()(_logits(PREDICTED, 3), TARGETS)
    assert value == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert value == pytest.approx(sk.f1_score(TARGETS.numpy(), PREDICTED, average="macro"))


def test_matthews_by_hand() -> None:
    binary_targets = torch.tensor([1, 1, 0, 0])
    # predicted 1 0 0 0: TP 1, FN 1, TN 2, FP 0 -> (1*2 - 0*1) / sqrt(1 * 2 * 3 * 2) = 2 / sqrt(12)
    assert metrics.mcc()(_logits([1, 0, 0, 0], 2), binary_targets) == pytest.approx(2 / math.sqrt(12))
    value = metrics.mcc()(_logits(PREDICTED, 3), TARGETS)
    assert value == pytest.approx(sk.matthews_corrcoef(TARGETS.numpy(), PREDICTED))


def test_regression_metrics_by_hand() -> None:
    outputs = torch.tensor([[1.0], [2.0], [4.0], [3.0]])
    targets = torch.tensor([1.0, 3.0, 3.0, 5.0])  # residuals 0, -1, 1, -2; mean 3, SS_tot 8, SS_res 6
    assert metrics.mae()(outputs, targets) == pytest.approx(1.0)
    assert metrics.rmse()(outputs, targets) == pytest.approx(math.sqrt(6 / 4))
    assert metrics.r2()(outputs, targets) == pytest.approx(1 - 6 / 8)
    # outputs mean 2.5: centred -1.5 -0.5 1.5 0.5; targets centred -2 0 0 2 -> cov 3 - 1 = 2... by formula:
    x, y = np.array([1.0, 2.0, 4.0, 3.0]), np.array([1.0, 3.0, 3.0, 5.0])
    cov = ((x - x.mean()) * (y - y.mean())).sum()  # 3 + 0 + 0 + 1 = 4
    assert cov == 4.0
    assert metrics.pearson()(outputs, targets) == pytest.approx(4 / math.sqrt(5 * 8))
    assert metrics.pearson()(outputs, targets) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_spearman_with_ties_matches_scipy() -> None:
    outputs = torch.tensor([1.0, 2.0, 2.0, 5.0, 3.0])
    targets = torch.tensor([2.0, 1.0, 4.0, 4.0, 3.0])
    # ranks: outputs 1, 2.5, 2.5, 5, 4; targets 2, 1, 4.5, 4.5, 3
    assert metrics.average_ranks(outputs).tolist() == [1.0, 2.5, 2.5, 5.0, 4.0]
    expected = stats.spearmanr(outputs.numpy(), targets.numpy()).statistic
    assert metrics.spearman()(outputs, targets) == pytest.approx(expected)


def test_segmentation_metrics_by_hand() -> None:
    # one 2x3 image, 3 classes; one pixel ignored (255)
    targets = torch.tensor([[[0, 0, 1], [2, 2, 255]]])
    predicted = torch.tensor([[[0, 1, 1], [2, 0, 1]]])
    outputs = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    # valid pixels 5, correct 3; IoU: class 0: 1/(2+2-1)=1/3, class 1: 1/(1+2-1)=1/2, class 2: 1/(2+1-1)=1/2
    assert metrics.pixel_accuracy(ignore_index=255)(outputs, targets) == pytest.approx(3 / 5)
    assert metrics.miou(ignore_index=255)(outputs, targets) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    keep = targets.reshape(-1) != 255
    reference = sk.jaccard_score(targets.reshape(-1)[keep], predicted.reshape(-1)[keep], average="macro")
    assert metrics.miou(ignore_index=255)(outputs, targets) == pytest.approx(reference)


def test_depth_errors_by_hand() -> None:
    targets = torch.tensor([[[[2.0, 4.0], [0.0, 1.0]]]])  # one invalid pixel (0)
    outputs = torch.tensor([[[[3.0, 3.0], [9.0, 1.5]]]])
    # valid errors 1, 1, 0.5 -> abs 2.5/3; relative 1/2 + 1/4 + 0.5/1 = 1.25 -> 1.25/3
    assert metrics.depth_abs_error()(outputs, targets) == pytest.approx(2.5 / 3)
    assert metrics.depth_rel_error()(outputs, targets) == pytest.approx(1.25 / 3)


def test_instance_offset_error_by_hand() -> None:
    # two instance pixels with offsets (dy, dx) = (1, -2) and (0, 0.5); one pixel outside (250 on both channels)
    targets = torch.tensor([[[[1.0, 0.0, 250.0]], [[-2.0, 0.5, 250.0]]]])
    outputs = torch.tensor([[[[0.0, 0.0, 7.0]], [[-1.0, 1.5, -3.0]]]])
    # errors 1, 0 (dy) and 1, 1 (dx) over the 4 valid values
    assert metrics.instance_offset_error()(outputs, targets) == pytest.approx(3 / 4)
    assert metrics.instance_offset_error().name == "instance_offset_error"


def test_normal_angle_errors_by_hand() -> None:
    # four pixels of unit target (0, 0, 1); predictions at 0, 10, 20, 45 degrees; one pixel with no normal
    angles = [0.0, 10.0, 20.0, 45.0]
    predicted = [[math.sin(math.radians(a)), 0.0, math.cos(math.radians(a))] for a in angles] + [[1.0, 0.0, 0.0]]
    outputs = torch.tensor(predicted).T.reshape(1, 3, 1, 5) * 2.0  # not unit length: normalized by the metric
    targets = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    assert metrics.normal_mean_angle()(outputs, targets) == pytest.approx(75 / 4)
    assert metrics.normal_median_angle()(outputs, targets) == pytest.approx(15.0, abs=1e-4)
    assert metrics.normal_within(degrees=11.25)(outputs, targets) == pytest.approx(2 / 4)
    assert metrics.normal_within(degrees=22.5)(outputs, targets) == pytest.approx(3 / 4)
    assert metrics.normal_within(degrees=30)(outputs, targets) == pytest.approx(3 / 4)
    assert metrics.normal_within(degrees=30).name == "normal_within_30"


def test_loss_metric_is_the_mean_loss() -> None:
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, -100])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2  # ignored example left out
    assert LossMetric(cross_entropy())(outputs, targets) == pytest.approx(expected, rel=1e-6)


BATCHED = [
    ("accuracy", "classes"),
    ("balanced_accuracy", "classes"),
    ("macro_f1", "classes"),
    ("mcc", "classes"),
    ("miou", "classes"),
    ("f1", "binary"),
    ("auc", "binary"),
    ("mae", "values"),
    ("rounded_accuracy", "values"),
    ("rmse", "values"),
    ("r2", "values"),
    ("pearson", "values"),
    ("spearman", "values"),
    ("depth_abs_error", "depth"),
    ("depth_rel_error", "depth"),
    ("instance_offset_error", "instance"),
    ("normal_mean_angle", "normals"),
    ("normal_median_angle", "normals"),
    ("normal_within", "normals"),
]


def _data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if kind == "classes":
        return torch.randn(101, 4, generator=generator), torch.randint(0, 4, (101,), generator=generator)
    if kind == "binary":
        return torch.randn(101, generator=generator), torch.randint(0, 2, (101,), generator=generator)
    if kind == "values":
        targets = torch.randn(101, generator=generator) * 3 + 10
        return targets[:, None] + torch.randn(101, 1, generator=generator), targets
    if kind == "depth":
        targets = torch.rand(101, 1, 2, 2, generator=generator) + 0.5
        targets[targets < 0.7] = 0.0
        return torch.rand(101, 1, 2, 2, generator=generator) + 0.5, targets
    if kind == "instance":
        targets = torch.randn(101, 2, 2, 2, generator=generator) * 3
        targets[:, :, 0] = 250.0  # pixels outside every instance
        return torch.randn(101, 2, 2, 2, generator=generator), targets
    return torch.randn(101, 3, 2, 2, generator=generator), torch.randn(101, 3, 2, 2, generator=generator)


@pytest.mark.parametrize(("name", "kind"), BATCHED)
def test_batched_equals_whole_set(name: str, kind: str) -> None:
    """Batches of unequal sizes give the metric of the whole set (not a mean of per-batch values)."""
    metric = METRICS.build(name)
    outputs, targets = _data(kind)
    accumulator = Accumulator(metric)
    for start, stop in ((0, 7), (7, 50), (50, 51), (51, 101)):
        accumulator.update(outputs[start:stop], targets[start:stop])
    whole = metric(outputs, targets)
    assert accumulator.compute() == pytest.approx(whole, rel=1e-12, abs=1e-12)
    per_batch = [metric(outputs[a:b], targets[a:b]) for a, b in ((0, 7), (7, 50), (51, 101))]
    if name in ("r2", "pearson", "spearman", "macro_f1", "mcc", "miou", "normal_median_angle", "auc"):
        assert float(np.mean(per_batch)) != pytest.approx(whole, rel=1e-6)  # the naive mean would be wrong


def test_every_registered_metric_has_a_direction_and_is_tested() -> None:
    assert {name for name, _ in BATCHED} | {"pixel_accuracy"} == set(METRICS.available())
    lower = {
        "mae", "rmse", "depth_abs_error", "depth_rel_error", "instance_offset_error", "normal_mean_angle",
        "normal_median_angle",
    }  # fmt: skip
    for name in METRICS.available():
        assert METRICS.build(name).higher_is_better is (name not in lower), name
        assert metrics.higher_is_better(METRICS.build(name).name) is (name not in lower)
    assert metrics.higher_is_better("loss") is False
    with pytest.raises(KeyError, match="declared by its task"):
        metrics.higher_is_better("my_score")


def test_specs_and_options_are_checked() -> None:
    assert resolve_metric({"name": "miou", "ignore_index": 255}).ignore_index == 255  # type: ignore[attr-defined]
    with pytest.raises(OptionError, match=r"metric\.degrees: expected a number > 0"):
        resolve_metric({"name": "normal_within", "degrees": -1})
    with pytest.raises(KeyError, match="unknown metric 'acc'"):
        resolve_metric("acc")
    with pytest.raises(ValueError, match="from_function"):
        resolve_metric(lambda o, t: 0.0)  # type: ignore[arg-type]


def test_function_metric_is_computed_on_the_whole_set() -> None:
    median = from_function(lambda o, t: float((o - t).abs().median()), name="median_error", higher_is_better=False)
    outputs, targets = torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    accumulator = Accumulator(median)
    accumulator.update(outputs[:1], targets[:1])
    accumulator.update(outputs[1:], targets[1:])
    assert accumulator.compute() == 2.0 and median.name == "median_error" and not median.higher_is_better


def test_bad_function_metric_definitions_are_one_clear_line() -> None:
    def error(o: torch.Tensor, t: torch.Tensor) -> float:
        return float((o - t).abs().max())

    with pytest.raises(ValueError, match="a metric name must be a non-empty string"):
        from_function(error, name="", higher_is_better=False)
    with pytest.raises(ValueError, match="cannot be named 'loss'"):
        from_function(error, name="loss", higher_is_better=False)
    with pytest.raises(ValueError, match="metric 'worst': expected a function"):
        from_function("error", name="worst", higher_is_better=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="higher_is_better must be true or false"):
        from_function(error, name="worst", higher_is_better="no")  # type: ignore[arg-type]
    vector = from_function(lambda o, t: (o - t).abs(), name="per_example", higher_is_better=False)
    with pytest.raises(ValueError, match=r"metric 'per_example' must return one number, got a tensor of shape \[3\]"):
        vector(torch.zeros(3), torch.ones(3))
    worst = from_function(lambda o, t: (o - t).abs().max(), name="worst", higher_is_better=False)
    assert worst(torch.zeros(3), torch.tensor([1.0, -4.0, 2.0])) == 4.0  # a one-element tensor is a number


def test_auc_by_hand_and_against_pair_counting() -> None:
    # scores of positives 0.8, 0.4, 0.4; negatives 0.4, 0.1: of 6 pairs 4 ordered, 2 tied (one half each) -> 5/6
    scores, labels = torch.tensor([0.8, 0.4, 0.4, 0.4, 0.1]), torch.tensor([1, 1, 1, 0, 0])
    assert metrics.auc()(scores, labels) == pytest.approx(5 / 6)
    two_class = torch.stack([torch.zeros(5), scores], dim=1)  # class scores: their difference is the score
    assert metrics.auc()(two_class, labels) == pytest.approx(5 / 6)
    generator = torch.Generator().manual_seed(1)
    scores, labels = (
        torch.randn(60, generator=generator).round(decimals=1),
        torch.randint(0, 2, (60,), generator=generator),
    )
    positive, negative = scores[labels == 1], scores[labels == 0]
    pairs = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
    assert metrics.auc()(scores, labels) == pytest.approx(float(pairs.mean()))
    assert math.isnan(metrics.auc()(scores, torch.ones(60)))  # one class only: undefined
    with pytest.raises(ValueError, match="auc: targets must be binary labels 0 or 1"):
        metrics.auc()(scores, labels * 2)


def test_value_metrics_leave_out_invalid_targets() -> None:
    outputs = torch.tensor([[1.0], [2.6], [9.0], [3.4]])
    targets = torch.tensor([2.0, 3.0, 0.0, 3.0])  # 0 = invalid
    assert metrics.rmse(invalid=0.0)(outputs, targets) == pytest.approx(math.sqrt((1 + 0.16 + 0.16) / 3))
    assert metrics.mae(invalid=0.0)(outputs, targets) == pytest.approx((1 + 0.4 + 0.4) / 3)
    assert metrics.rounded_accuracy(invalid=0.0)(outputs, targets) == pytest.approx(2 / 3)  # 1 -> 1 != 2
    assert metrics.rmse()(outputs, targets) == pytest.approx(math.sqrt((1 + 0.16 + 81 + 0.16) / 4))
    nan_targets = torch.tensor([2.0, 3.0, math.nan, 3.0])
    assert metrics.mae(invalid=math.nan)(outputs, nan_targets) == pytest.approx((1 + 0.4 + 0.4) / 3)
