"""Tasks carry their loss and metrics as components, each metric with its direction."""

from __future__ import annotations

import pytest
import torch

from mtlscope import losses, metrics, settings
from mtlscope.settings import Split, Task


def _split(n: int = 6) -> Split:
    return Split(torch.randn(n, 2), torch.randint(0, 3, (n,)))


def _task(**components: object) -> Task:
    return Task("t", 3, _split(), _split(), _split(), **components)  # type: ignore[arg-type]


def test_components_by_name_spec_instance_or_function() -> None:
    task = _task(
        loss={"name": "cross_entropy", "ignore_index": 255},
        metrics=[
            "accuracy",
            {"name": "mcc"},
            metrics.from_function(lambda o, t: 0.5, name="half", higher_is_better=False),
        ],
    )
    assert isinstance(task.loss, losses.Loss) and task.loss.ignore_index == 255  # type: ignore[attr-defined]
    assert task.metric_names == ("loss", "accuracy", "mcc", "half")
    assert task.primary_metric == "accuracy"  # the first declared metric
    assert task.directions() == {"loss": False, "accuracy": True, "mcc": True, "half": False}
    assert task.declaration() == {
        "loss": "cross_entropy",
        "fisher": "categorical",
        "primary_metric": "accuracy",
        "higher_is_better": {"loss": False, "accuracy": True, "mcc": True, "half": False},
    }
    outputs = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 3).float() * 5
    scores = task.scores(outputs, torch.tensor([0, 1, 2, 1]))
    assert list(scores) == ["loss", "accuracy", "mcc", "half"] and scores["accuracy"] == 0.75


def test_primary_metric_direction_is_declared() -> None:
    task = _task(loss="mse", metrics=["mae", "r2"], primary_metric="mae")
    assert task.higher_is_better is False
    assert _task(loss="mse", metrics=["mae", "r2"], primary_metric="r2").higher_is_better is True


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ({"loss": "ce"}, "task 't': loss: unknown loss 'ce'"),
        ({"loss": {"name": "l1", "invalid": "zero"}}, "task 't': loss: loss.invalid: expected a number or null"),
        ({"loss": "mse", "metrics": ["accuracy", "accuracy"]}, "the name 'accuracy' is used twice"),
        ({"loss": "mse", "metrics": ["mae"], "primary_metric": "r2"}, "primary_metric 'r2' is not one of loss, mae"),
        ({"loss": "mse", "metrics": ["rmsee"]}, "task 't': metrics: unknown metric 'rmsee'"),
    ],
)
def test_bad_components_are_one_line_errors(components: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _task(**components)


def test_builtin_settings_declare_their_components() -> None:
    for task in settings.get("digits-mtl").tasks + settings.get("digits-attributes").tasks:
        assert task.declaration()["loss"] == "cross_entropy" and task.metric_names == ("loss", "accuracy", "macro_f1")
    synthetic = settings.get("synthetic")
    regression = synthetic.tasks[0]
    assert regression.metric_names == ("loss", "mae", "r2") and regression.primary_metric == "r2"
    assert regression.loss.fisher == "empirical"  # as regression tasks always had it
    moved = synthetic.to("cpu").tasks[0]  # dataclasses.replace re-resolves the components
    assert moved.metric_names == regression.metric_names and moved.loss is regression.loss
