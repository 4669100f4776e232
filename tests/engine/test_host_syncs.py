"""GPU readiness on CPU: the plain training step makes exactly one host round-trip (the finiteness check of the
losses), and the data of in-memory settings move to the run's device once, not per batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from mtlscope.engine.host_sync import HostSyncCounter
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.trainer import ListSink
from mtlscope.runs import validate_config
from mtlscope.runs.launch import _trainer, prepare
from mtlscope.settings import SPLITS

STEPS = 4
SETTINGS = {
    "shared-input": {"name": "synthetic", "options": {"num_tasks": 3, "train_size": 64, "layout": "shared-input"}},
    "multi-input": {"name": "digits-mtl"},
}


def config(setting: str, method: str = "umtg", optimizer: str = "adam", **training: Any) -> Any:
    return validate_config(
        {
            "setting": SETTINGS[setting],
            "method": {"name": method},
            "optimizer": {"name": optimizer, "lr": 0.01, **({"momentum": 0.9} if optimizer == "sgd" else {})},
            "training": {"batch_size": 16, "steps": 10, **training},
        }
    )


def count_steps(config: Any) -> HostSyncCounter:
    trainer = _trainer(prepare(config), ListSink(), None, None)
    trainer.model.train()
    counter = HostSyncCounter()
    for step in range(STEPS):
        batch = trainer.sampler.next()
        with counter:
            result = trainer.step_fn(batch, step)
        assert result.finite
    return counter


def test_the_counter_sees_every_kind_of_round_trip() -> None:
    x = torch.randn(5)
    with HostSyncCounter() as counter:
        x.sum().item()
        if x.max() > 0:  # control flow on a tensor: bool()
            pass
        float(x[0])
        x[x > 0]  # boolean mask: a data-dependent shape
        x.nonzero()
        x.tolist()
        x.abs().mul(2).sum(dim=0)  # none: stays on the device
    names = sorted(name for name, _ in counter.calls)
    assert names == ["__bool__", "__float__", "__getitem__", "item", "nonzero", "tolist"]
    assert counter.own == counter.total == 6
    assert all(where.startswith(__file__) for _, where in counter.calls)


@pytest.mark.parametrize("layout", ["shared-input", "multi-input"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_plain_step_makes_one_round_trip(layout: str, optimizer: str) -> None:
    counter = count_steps(config(layout, optimizer=optimizer))
    assert counter.own == STEPS, dict(counter.calls)
    assert {name for name, _ in counter.calls} == {"__bool__"}  # the finiteness check of the losses
    # Adam reads its step counters, which torch keeps on the host (no device sync); SGD reads nothing
    assert {name for name, _ in counter.from_torch} <= ({"item"} if optimizer == "adam" else set())


def test_diagnostic_steps_are_where_the_round_trips_are() -> None:
    counter = count_steps(config("multi-input", diagnostics_every=2))
    assert counter.own > STEPS  # the diagnostics are read to the host on their steps (2 of the 4)


class _Moves(TorchFunctionMode):
    """The ``Tensor.to`` calls made while active: (shape, dtype) of each tensor moved."""

    def __init__(self) -> None:
        super().__init__()
        self.moved: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") == "to":
            self.moved.append((tuple(args[0].shape), args[0].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout", ["shared-input", "multi-input"])
def test_in_memory_data_move_to_the_device_once(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # "meta" stands in for a GPU: prepare moves the setting's tensors there once ...
    monkeypatch.setattr("mtlscope.runs.launch.resolve_device", lambda name: torch.device("meta"))
    prepared = prepare(config(layout))
    for task in prepared.setting.tasks:
        for split in SPLITS:
            data = task.split(split)
            assert data.inputs.device.type == "meta" and data.targets.device.type == "meta"  # type: ignore[attr-defined]
    assert {p.device.type for p in prepared.model.parameters()} == {"meta"}
    # ... and every batch is read there: only the batch's indices (drawn on the host) are sent, never data
    sampler = BatchSampler(prepared.setting, 16, seed=0)
    moves = _Moves()
    with moves:
        batches = [sampler.next() for _ in range(3)]
    streams = 1 if layout == "shared-input" else len(prepared.setting.tasks)
    assert moves.moved == [((16,), torch.int64)] * (3 * streams)
    for batch in batches:
        assert batch.inputs.device.type == "meta"
        assert {target.device.type for target in batch.targets.values()} == {"meta"}
