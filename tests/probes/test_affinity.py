"""Inter-task affinity (SPEC §4.5): the quadratic closed form, exact vs first-order as lr -> 0, agreement with
a real optimizer step, the probe's averages and records."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtlscope import settings
from mtlscope.engine.gradients import shared_jacobian
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import random_batch
from mtlscope.models import build_model
from mtlscope.models.encoders import Encoder
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes import PROBES, affinity


class LinearEncoder(Encoder):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim, width)
        self.output_dim = width

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.layer(inputs)
        return out


def _quadratic_problem(seed: int = 0):
    """Linear encoder + linear heads + MSE: each task loss is quadratic in the shared parameters."""
    setting = settings.get("synthetic", num_tasks=3, dim=5, train_size=40, relatedness=0.3).to(torch.device("cpu"))
    torch.manual_seed(seed)
    heads = {name: nn.Linear(4, 1) for name in setting.task_names}
    model = MultiTaskModel(LinearEncoder(5, 4), heads).double()
    setting = _double(setting)
    batch = random_batch(setting, 16, torch.Generator().manual_seed(seed))
    return setting, model, batch


def _double(setting):
    for task in setting.tasks:
        for split in (task.train, task.val, task.test):
            object.__setattr__(split, "inputs", split.inputs.double())
            object.__setattr__(split, "targets", split.targets.double())
    return setting


def test_quadratic_closed_form_with_sgd() -> None:
    setting, model, batch = _quadratic_problem()
    lr = 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result = affinity(model, setting, batch, optimizer)
    assert result.exact is not None and result.first_order is not None
    names = [name for name, _ in model.encoder.named_parameters()]
    shapes = [p.shape for p in model.encoder.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.encoder.parameters()])

    def loss_of(task_index: int):
        task = setting.tasks[task_index]

        def f(theta: Tensor) -> Tensor:
            pieces, offset = {}, 0
            for name, shape in zip(names, shapes):
                size = shape.numel()
                pieces[name] = theta[offset : offset + size].view(shape)
                offset += size
            representation = functional_call(model.encoder, pieces, (batch.inputs,))
            outputs = model.heads[task.name](representation[batch.rows[task.name]])
            return task.loss(outputs, batch.targets[task.name])

        return f

    gradients = torch.stack([torch.autograd.functional.jacobian(loss_of(k), flat) for k in range(3)])
    for j in range(3):
        hessian = torch.autograd.functional.hessian(loss_of(j), flat)
        loss_j = loss_of(j)(flat)
        for i in range(3):
            g_i, g_j = gradients[i], gradients[j]
            expected = (lr * g_i @ g_j - 0.5 * lr**2 * g_i @ hessian @ g_i) / loss_j
            first = lr * g_i @ g_j / loss_j
            assert float(result.exact[i, j]) == pytest.approx(float(expected.detach()), rel=1e-9, abs=1e-12)
            assert float(result.first_order[i, j]) == pytest.approx(float(first.detach()), rel=1e-9)


def _digits(lr: float, steps: int = 3, optimizer_name: str = "adam", activation: str = "relu"):
    setting = settings.get("digits-mtl", tasks=["digits1", "digits2", "noisy-digits"])
    model = build_model(setting, {"name": "mlp", "hidden": [32, 8], "activation": activation}, {"name": "linear"}, 0)
    optimizer = build_optimizer(model.parameters(), optimizer_name, lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):  # a few real steps so the Adam moments are not trivial
        optimizer.zero_grad()
        batch = random_batch(setting, 16, generator)
        total = sum(
            task.loss(model(batch.inputs[batch.rows[task.name]], task.name), batch.targets[task.name])
            for task in setting.tasks
        )
        total.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return setting, model.eval(), optimizer, random_batch(setting, 16, generator)


def test_exact_equals_a_real_optimizer_step_and_leaves_everything_untouched() -> None:
    setting, model, optimizer, batch = _digits(1e-2)
    model_before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    for update_heads in (False, True):
        result = affinity(model, setting, batch, optimizer, update_heads=update_heads)
        _, jacobian = shared_jacobian(model, setting, batch)
        for i in range(3):
            real = copy.deepcopy(model)
            real_optimizer = build_optimizer(real.parameters(), "adam", 1e-2)
            real_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict shares tensors
            shared = list(real.shared_parameters())
            offset = 0
            for p in shared:
                p.grad = jacobian[i, offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            if update_heads:
                for task in setting.tasks:
                    index = batch.rows[task.name]
                    loss = task.loss(real(batch.inputs[index], task.name), batch.targets[task.name])
                    head = list(real.task_parameters(task.name))
                    for p, g in zip(head, torch.autograd.grad(loss, head)):
                        p.grad = g
            real_optimizer.step()
            with torch.no_grad():
                for j, task in enumerate(setting.tasks):
                    index = batch.rows[task.name]
                    after = task.loss(real(batch.inputs[index], task.name), batch.targets[task.name])
                    expected = 1 - float(after) / float(result.losses[j])
                    assert float(result.exact[i, j]) == pytest.approx(expected, abs=2e-6)
    for key, value in model.state_dict().items():
        assert torch.equal(value, model_before[key])
    assert all(p.grad is None for p in model.parameters())
    assert str(optimizer.state_dict()) == str(optimizer_before)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_exact_and_first_order_agree_as_lr_goes_to_zero(optimizer_name: str) -> None:
    # a smooth activation: with ReLU, Adam's sign-like first step moves pre-activations across the kink and the
    # first-order error shrinks more slowly than lr
    errors = []
    for lr in (1e-2, 1e-3, 1e-4):
        setting, model, optimizer, batch = _digits(lr, steps=2, optimizer_name=optimizer_name, activation="tanh")
        model.double()
        batch = type(batch)(batch.inputs.double(), batch.targets, batch.rows)
        result = affinity(model, setting, batch, optimizer)
        assert result.exact is not None and result.first_order is not None
        errors.append(float((result.exact - result.first_order).abs().max() / result.first_order.abs().max()))
    # the gap is second order: relative to the first-order term it shrinks like lr
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]
    assert errors[2] < 2e-3


def test_modes_and_options() -> None:
    setting, model, optimizer, batch = _digits(1e-3)
    only_exact = affinity(model, setting, batch, optimizer, first_order=False)
    assert only_exact.first_order is None and only_exact.exact is not None
    both = affinity(model, setting, batch, optimizer)
    assert both.exact is not None and torch.equal(only_exact.exact, both.exact)
    with pytest.raises(ValueError, match="every_steps"):
        PROBES.build("affinity", every_steps=0)
    with pytest.raises(ValueError, match="mode"):
        PROBES.build("affinity", mode="second_order")
