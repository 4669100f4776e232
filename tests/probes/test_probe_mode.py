"""Every probe runs the model in eval mode itself and restores the caller's mode: called on a model in train
mode, it moves no BatchNorm statistics, draws nothing from the global torch RNG and gives the values it gives on a
model in eval mode (the affinity lookahead with BatchNorm on the batch's statistics, its default: see
test_affinity_batchnorm.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlscope import settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import random_batch
from mtlscope.models.encoders import Encoder
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes import PROBES, affinity
from mtlscope.probes.base import ProbeContext, StepContext


class NormDropEncoder(Encoder):
    """Linear -> BatchNorm -> ReLU -> Dropout: train mode moves running statistics and draws dropout masks."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.output_dim = 16

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.layers(inputs)
        return out


def _problem() -> tuple[Any, MultiTaskModel, torch.optim.Optimizer]:
    setting = settings.get("digits-mtl", tasks=["digits1", "digits2", "noisy-digits"])
    torch.manual_seed(0)
    model = MultiTaskModel(NormDropEncoder(), {name: nn.Linear(16, 10) for name in setting.task_names})
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # real steps: non-trivial running statistics and Adam moments
        optimizer.zero_grad()
        batch = random_batch(setting, 16, generator)
        sum(
            task.loss(model(batch.inputs[batch.rows[task.name]], task.name), batch.targets[task.name])
            for task in setting.tasks
        ).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return setting, model, optimizer


def _context(setting: Any, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> ProbeContext:
    return ProbeContext(
        model=model,
        setting=setting,
        step=0,
        epoch=0.0,
        scores={},
        optimizer=optimizer,
        loss_scale=1.0,
        batch_size=8,
        generator=torch.Generator().manual_seed(5),
    )


def _affinity(setting: Any, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> Any:
    batch = random_batch(setting, 16, torch.Generator().manual_seed(1))
    result = affinity(model, setting, batch, optimizer, update_heads=True)
    return result.exact, result.first_order, result.losses


def _affinity_probe(setting: Any, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> Any:
    probe = PROBES.build("affinity", every_steps=1)
    batch = random_batch(setting, 16, torch.Generator().manual_seed(1))
    step = StepContext(model, setting, batch, 0, optimizer, 1.0, torch.Generator().manual_seed(2))
    probe.before_step(step)
    return probe(_context(setting, model, optimizer))


def _similarity_probe(setting: Any, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> Any:
    return PROBES.build("grad_similarity", batches=3)(_context(setting, model, optimizer))


def _checkpoint_probe(name: str, **options: Any) -> Callable[..., Any]:
    def measure(setting: Any, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> Any:
        return PROBES.build(name, **options)(_context(setting, model, optimizer))

    return measure


CALLS = {
    "affinity()": _affinity,
    "affinity probe": _affinity_probe,
    "grad_similarity probe": _similarity_probe,
    "sharpness probe": _checkpoint_probe("sharpness", subset=32, batch_size=16, iterations=2),
    "fim_trace probe": _checkpoint_probe("fim_trace", subset=32),
    "grad_cov_trace probe": _checkpoint_probe("grad_cov_trace", subset=32),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_probe_on_a_train_mode_model_uses_eval_mode_and_restores_it(call: str) -> None:
    setting, model, optimizer = _problem()
    model.train()
    model.heads["digits2"].eval()  # a mixed mode is restored module by module
    modes = [module.training for module in model.modules()]
    buffers = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    in_train_mode = CALLS[call](setting, model, optimizer)
    assert [module.training for module in model.modules()] == modes
    assert model.training is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key  # BatchNorm running statistics included
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout mask drawn from the global generator
    model.eval()
    in_eval_mode = CALLS[call](setting, model, optimizer)
    assert model.training is False
    assert str(in_train_mode) == str(in_eval_mode)
