"""One trainer step against a hand computation (closed-form gradients in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtlscope import methods, settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.models.encoders import Encoder
from mtlscope.models.multitask import MultiTaskModel


class LinearEncoder(Encoder):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)
        self.output_dim = weight.shape[0]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(inputs)
        return out


def _tiny(seed: int = 0) -> tuple[settings.Setting, MultiTaskModel, np.ndarray, list[np.ndarray]]:
    # 8 training examples and B = 8: every step's batch is the whole training set (order does not matter)
    setting = settings.get("synthetic", num_tasks=2, dim=3, train_size=8, val_size=4, test_size=4, noise=0.3)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((2, 3))
    heads_w = [rng.standard_normal((1, 2)) for _ in range(2)]
    heads = {}
    for name, w in zip(setting.task_names, heads_w):
        head = nn.Linear(2, 1, bias=False)
        head.weight.data.copy_(torch.tensor(w, dtype=torch.float32))
        heads[name] = head
    model = MultiTaskModel(LinearEncoder(torch.tensor(weight, dtype=torch.float32)), heads)
    return setting, model, weight, heads_w


def _hand_step(setting: settings.Setting, weight: np.ndarray, heads_w: list[np.ndarray], lr: float, c: float):
    grad_w = np.zeros_like(weight)
    new_heads = []
    for task, a in zip(setting.tasks, heads_w):
        x = task.train.inputs.numpy().astype(np.float64)
        y = task.train.targets.numpy().astype(np.float64)
        z = x @ weight.T  # [n, 2]
        residual = z @ a[0] - y  # [n]
        # L = mean(residual^2): dL/da = 2 mean(residual z), dL/dW = 2 mean(residual a^T x)
        grad_a = 2 * (residual[:, None] * z).mean(0)
        grad_w += 2 * np.einsum("n,k,nd->kd", residual, a[0], x) / len(x)
        new_heads.append(a[0] - lr * grad_a / c)
    return weight - lr * grad_w / c, new_heads


@pytest.mark.parametrize("loss_scale", [1.0, 2.0])  # C = 1 and C = K
def test_one_sgd_step_equals_hand_computation(loss_scale: float) -> None:
    setting, model, weight, heads_w = _tiny()
    lr = 0.05
    optimizer = build_optimizer(model.parameters(), "sgd", lr)
    trainer = Trainer(
        setting,
        model,
        methods.get("umtg"),
        optimizer,
        schedule=Schedule(steps=1, steps_per_epoch=1, eval_every=1),
        batch_size=8,
        loss_scale=loss_scale,
        seed=0,
        sink=ListSink(),
    )
    assert trainer.run().status == "completed"
    expected_w, expected_heads = _hand_step(setting, weight, heads_w, lr, loss_scale)
    assert np.allclose(model.encoder.linear.weight.detach().numpy(), expected_w, atol=1e-5)
    for name, expected in zip(setting.task_names, expected_heads):
        assert np.allclose(model.heads[name].weight.detach().numpy()[0], expected, atol=1e-5)


class JacobianSum(Method):
    """A gradient-combination method written against the extension point: sum of Jacobian rows / C."""

    name = "jacobian-sum"
    needs = frozenset({"jacobian"})

    def combine(self, step: StepInput) -> Combination:
        assert step.jacobian is not None
        return Combination(shared_gradient=step.jacobian.sum(0) / step.loss_scale, diagnostics={"k": 2.0})


@pytest.mark.parametrize("loss_scale", [1.0, 2.0])
def test_shared_gradient_path_equals_loss_weight_path(loss_scale: float) -> None:
    finals = []
    for method in (lambda: methods.get("umtg"), JacobianSum):
        setting, model, _, _ = _tiny()
        optimizer = build_optimizer(model.parameters(), "adam", 0.01)
        Trainer(
            setting,
            model,
            method(),
            optimizer,
            schedule=Schedule(steps=5, steps_per_epoch=5, eval_every=5),
            batch_size=4,
            loss_scale=loss_scale,
            seed=0,
            sink=ListSink(),
        ).run()
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_umtg_task_weights_scale_the_gradient() -> None:
    setting, model, weight, heads_w = _tiny()
    method = methods.get("umtg", weights={"task1": 0.0})
    optimizer = build_optimizer(model.parameters(), "sgd", 0.05)
    Trainer(
        setting,
        model,
        method,
        optimizer,
        schedule=Schedule(1, 1, 1),
        batch_size=8,
        loss_scale=1.0,
        seed=0,
        sink=ListSink(),
    ).run()
    only_first = setting.subset(["task0"])
    expected_w, _ = _hand_step(only_first, weight, heads_w[:1], 0.05, 1.0)
    assert np.allclose(model.encoder.linear.weight.detach().numpy(), expected_w, atol=1e-5)
    assert np.allclose(model.heads["task1"].weight.detach().numpy()[0], heads_w[1][0])
    with pytest.raises(ValueError, match="not in this run"):
        methods.get("umtg", weights={"task7": 1.0}).setup(setting.task_names)
