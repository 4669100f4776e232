"""Gradient similarity to the UMTG (SPEC §4.4): the K = 2 closed form, weights, the probe's batch average."""

from __future__ import annotations

import math

import pytest
import torch

from mtlscope import settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import random_batch
from mtlscope.models import build_model
from mtlscope.probes import PROBES, ProbeContext, grad_similarity


def test_two_task_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        g1, g2 = torch.randn(2, 7, generator=generator, dtype=torch.float64)
        expected = (g1 @ g1 + g1 @ g2) / (g1.norm() * (g1 + g2).norm())
        cosines = grad_similarity(torch.stack([g1, g2]))
        assert float(cosines[0]) == pytest.approx(float(expected), abs=1e-12)
        expected2 = (g2 @ g2 + g1 @ g2) / (g2.norm() * (g1 + g2).norm())
        assert float(cosines[1]) == pytest.approx(float(expected2), abs=1e-12)


def test_invariants_and_weights() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    cosines = grad_similarity(g)
    assert cosines[:2].tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert math.isnan(float(cosines[2]))  # a zero task gradient has no direction
    equal = torch.ones(3, 4, dtype=torch.float64)
    assert grad_similarity(equal).tolist() == pytest.approx([1.0, 1.0, 1.0])
    weighted = grad_similarity(g[:2], torch.tensor([1.0, 0.0]))
    assert weighted.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    # a positive scale of the combined gradient (the loss scale C) does not change the cosines
    assert grad_similarity(g[:2], torch.tensor([0.5, 0.5])).tolist() == pytest.approx(grad_similarity(g[:2]).tolist())
    with pytest.raises(ValueError, match="jacobian"):
        grad_similarity(torch.ones(3))


def _context(setting_name: str, tasks: list[str] | None, seed: int = 3, **options: object) -> ProbeContext:
    setting = settings.get(setting_name, tasks=tasks, **options)
    model = build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, 0).eval()
    return ProbeContext(
        model=model,
        setting=setting,
        step=0,
        epoch=0.0,
        scores={},
        optimizer=build_optimizer(model.parameters(), "adam", 1e-3),
        loss_scale=1.0,
        batch_size=8,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize(
    ("setting_name", "tasks", "options"),
    [("digits-mtl", ["digits1", "digits2", "noisy-digits"], {}), ("digits-attributes", ["even", "large"], {})],
)
def test_probe_is_the_mean_cosine_over_batches_from_its_generator(setting_name, tasks, options) -> None:
    context = _context(setting_name, tasks, **options)
    values = PROBES.build("grad_similarity", batches=5)(context)
    # independent reference: the same batches, each task's gradient by its own backward of model(x, task)
    generator = torch.Generator().manual_seed(3)
    model, setting = context.model, context.setting
    shared = list(model.shared_parameters())
    cosines = []
    for _ in range(5):
        batch = random_batch(setting, 8, generator)
        rows = []
        for task in setting.tasks:
            index = batch.rows[task.name]
            loss = task.loss(model(batch.inputs[index], task.name), batch.targets[task.name])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared)]))
        jacobian = torch.stack(rows)
        total = jacobian.sum(0)
        cosines.append((jacobian @ total) / (jacobian.norm(dim=1) * total.norm()))
    expected = torch.stack(cosines).mean(0)
    assert list(values) == list(setting.task_names)
    for name, value in zip(setting.task_names, expected.tolist()):
        assert values[name]["grad_similarity"] == pytest.approx(value, abs=1e-5)
        assert -1 <= values[name]["grad_similarity"] <= 1
    assert all(p.grad is None for p in model.parameters())


def test_single_task_runs_have_no_similarity_and_bad_options_fail() -> None:
    assert PROBES.build("grad_similarity", batches=2)(_context("digits-mtl", ["digits1"])) == {}
    with pytest.raises(ValueError, match="batches"):
        PROBES.build("grad_similarity", batches=0)
