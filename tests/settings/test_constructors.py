"""Settings from arrays: numpy converted by one rule, both layouts, every bad input one line naming task and split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mtlscope.settings import Setting, Split, Task, TaskSpec, from_arrays


def _xy(n: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, classes, n)


def _tasks() -> list[TaskSpec]:
    return [
        TaskSpec("kind", 3, loss="cross_entropy", metrics=["accuracy"]),
        TaskSpec("size", 1, loss="mse", metrics=["mae"]),
    ]


def _multi() -> dict[str, Any]:
    return {
        "kind": {"train": _xy(20), "val": _xy(8, 1), "test": _xy(8, 2)},
        "size": {"train": (_xy(30, 3)[0], np.arange(30) / 30), "val": (_xy(8, 4)[0], np.ones(8)), "test": _xy(8, 5)},
    }


def _shared() -> dict[str, Any]:
    def split(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x, y = _xy(n, seed)
        return x, {"kind": y, "size": x[:, 0] * 2}

    return {"train": split(20, 0), "val": split(8, 1), "test": split(8, 2)}


def test_multi_input_from_numpy_converts_by_one_rule() -> None:
    data = _multi()
    setting = from_arrays("tab", _tasks(), data)
    kind, size = setting.tasks
    assert setting.layout == "multi-input" and setting.input_shape == (4,) and setting.epoch_examples == 30
    assert kind.train.inputs.dtype == torch.float32 and kind.train.targets.dtype == torch.int64
    assert size.train.targets.dtype == torch.float32 and size.test.targets.dtype == torch.float32  # ints -> float
    np.testing.assert_allclose(kind.train.inputs.numpy(), data["kind"]["train"][0].astype(np.float32))
    assert kind.train.targets.tolist() == data["kind"]["train"][1].tolist()
    assert setting.default_model["encoder"]["name"] == "mlp"


def test_float32_tensors_are_kept_as_they_are() -> None:
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    setting = from_arrays("t", _tasks()[:1], {"kind": {"train": (x, y), "val": (x, y), "test": (x, y)}})
    assert setting.tasks[0].train.inputs is x and setting.tasks[0].train.targets is y


def test_shared_input_from_one_array_per_split() -> None:
    data = _shared()
    setting = from_arrays("tab", _tasks(), data, layout="shared-input")
    kind, size = setting.tasks
    assert setting.layout == "shared-input"
    assert kind.train.inputs is size.train.inputs and kind.test.inputs is size.test.inputs
    np.testing.assert_allclose(size.val.targets.numpy(), (data["val"][0][:, 0] * 2).astype(np.float32))


def _replace(data: dict[str, Any], task: str, split: str, value: Any) -> dict[str, Any]:
    data[task] = {**data[task], split: value}
    return data


X, Y = _xy(20)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_replace(_multi(), "kind", "train", (X, Y[:19])), "task 'kind', split 'train': 20 inputs but 19 targets"),
        (_replace(_multi(), "kind", "val", (X[:, 0], Y)), "task 'kind', split 'val': inputs must have an examples"),
        (
            _replace(_multi(), "kind", "test", (X[:, :3], Y)),
            "task 'kind', split 'test': inputs have example shape (3,)",
        ),
        (
            _replace(_multi(), "kind", "train", (np.where(np.arange(20)[:, None] == 7, np.nan, X), Y)),
            "example 7 has NaN",
        ),
        (
            _replace(_multi(), "kind", "train", (X, Y + 1)),
            "task 'kind', split 'train': class target 3 is outside [0, 3)",
        ),
        (_replace(_multi(), "kind", "train", (X, Y - 1)), "class target -1 is outside [0, 3)"),
        (_replace(_multi(), "kind", "train", (X, Y * 1.0)), "class targets of loss 'cross_entropy' must be integers"),
        (_replace(_multi(), "kind", "train", (X[:0], Y[:0])), "task 'kind', split 'train': the split is empty"),
        (
            _replace(_multi(), "kind", "train", (X.tolist(), Y)),
            "inputs must be a numpy array or a torch tensor, got list",
        ),
        (
            _replace(_multi(), "kind", "train", (X.astype(str), Y)),
            "inputs must hold real numbers, got a numpy array of dtype <U",
        ),
        (_replace(_multi(), "kind", "train", X), "task 'kind', split 'train': expected (inputs, targets), got ndarray"),
        (
            _replace(_multi(), "size", "train", (X, np.full(20, np.inf))),
            "task 'size', split 'train': targets must be finite",
        ),
        ({"kind": {"train": _xy(5), "test": _xy(5)}, "size": _multi()["size"]}, "task 'kind': missing split 'val'"),
        (
            {"kind": {**_multi()["kind"], "valid": _xy(5)}, "size": _multi()["size"]},
            "task 'kind': unknown split 'valid'",
        ),
        ({"kind": _multi()["kind"]}, "data has no splits for task 'size'"),
        ({**_multi(), "other": {}}, "data has task 'other', which is not in tasks"),
        (
            _shared(),
            "data has task 'train', which is not in tasks ['kind', 'size'] (a split name: is this shared-input",
        ),
    ],
)
def test_bad_multi_input_arrays_are_one_line_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as error:
        from_arrays("tab", _tasks(), data)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("setting 'tab'")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["val"][1].pop("size"), "split 'val': no targets for task 'size'"),
        (lambda d: d["val"][1].update(extra=np.zeros(8)), "split 'val': targets for task 'extra'"),
        (
            lambda d: d["test"][1].update(kind=np.arange(8)),
            "task 'kind', split 'test': class target 7 is outside [0, 3)",
        ),
        (lambda d: d["test"][1].update(size=np.zeros(7)), "task 'size', split 'test': 8 inputs but 7 targets"),
        (lambda d: d.pop("test"), "missing split 'test'"),
    ],
)
def test_bad_shared_input_arrays_are_one_line_errors(change: Any, message: str) -> None:
    data = _shared()
    change(data)
    with pytest.raises(ValueError, match=None) as error:
        from_arrays("tab", _tasks(), data, layout="shared-input")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_ignore_index_targets_are_accepted() -> None:
    x, y = _xy(10)
    y[3] = 255
    spec = TaskSpec("seg", 3, loss={"name": "cross_entropy", "ignore_index": 255})
    setting = from_arrays("t", [spec], {"seg": {"train": (x, y), "val": (x, y), "test": (x, y)}})
    assert int(setting.tasks[0].train.targets[3]) == 255
    with pytest.raises(ValueError, match=r"class target 256 is outside \[0, 3\) or the ignore_index 255"):
        from_arrays("t", [spec], {"seg": {"train": (x, y + 1), "val": (x, y), "test": (x, y)}})


def test_bad_task_specs() -> None:
    with pytest.raises(ValueError, match="task 'a': output_size must be an integer >= 1, got 0"):
        TaskSpec("a", 0, loss="mse")
    with pytest.raises(ValueError, match="task 'a': loss: unknown loss 'msee'"):
        TaskSpec("a", 1, loss="msee")
    with pytest.raises(ValueError, match="layout must be one of"):
        from_arrays("t", _tasks(), _multi(), layout="shared")


def test_a_numpy_array_in_a_split_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"Split inputs must be a torch\.Tensor, got a numpy array; .*from_arrays"):
        Split(np.zeros((3, 2)), torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Split targets must be a torch\.Tensor, got a list"):
        Split(torch.zeros(3, 2), [0, 1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task 't': train must be a Split or a DatasetSplit, got tuple"):
        split = Split(torch.zeros(3, 2), torch.zeros(3))
        Task("t", 1, (split.inputs, split.targets), split, split, loss="mse")  # type: ignore[arg-type]


def _shared_setting(train_inputs: list[torch.Tensor]) -> Setting:
    targets = torch.zeros(600, dtype=torch.long)
    val = Split(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    tasks = tuple(
        Task(f"t{k}", 2, Split(inputs, targets[: len(inputs)]), val, val, loss="cross_entropy")
        for k, inputs in enumerate(train_inputs)
    )
    return Setting("s", tasks, "shared-input", (2,), {"encoder": {"name": "mlp"}, "head": {"name": "linear"}})


def test_shared_input_tasks_holding_views_or_equal_tensors_are_unified() -> None:
    X = torch.randn(1000, 2)
    setting = _shared_setting([X[:600], X[:600], X[:600].clone()])  # three different objects: two views, a copy
    first = setting.tasks[0].train.inputs
    assert all(task.train.inputs is first for task in setting.tasks)
    assert torch.equal(first, X[:600])


def test_shared_input_tasks_with_other_inputs_are_refused_with_the_constructor_named() -> None:
    X = torch.randn(1000, 2)
    with pytest.raises(ValueError) as error:
        _shared_setting([X[:600], X[1:601]])
    assert str(error.value) == (
        "setting 's' is shared-input but task 't1' has other train inputs than task 't0'; build shared-input "
        "settings with mtlscope.settings.from_arrays(..., layout='shared-input') (one input array per split)"
    )
