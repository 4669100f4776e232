"""Properties every registered method must have (SPEC §5), checked over ``methods.available()``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlscope import methods
from mtlscope.runs import execute, validate_config
from mtlscope.runs.store import RECORDS_FILE
from tests.methods.helpers import step_input

ALL = methods.available()
EXPECTED = {
    "umtg",
    "pcgrad",
    "mgda",
    "mgda_ub",
    "gradnorm",
    "uw",
    "rlw",
    "dwa",
    "imtl_g",
    "imtl_l",
    "imtl",
    "gradvac",
    "graddrop",
    "cagrad",
    "nash_mtl",
    "aligned_mtl",
    "famo",
    "it_mtl",
}


def test_every_method_of_the_spec_is_registered() -> None:
    assert set(ALL) == EXPECTED


class Stop(BaseException):
    pass


def _config(method: str) -> dict:
    return {
        "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2", "noisy-digits"]},
        "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
        "method": {"name": method},
        "training": {"steps": 12, "eval_every": 4, "batch_size": 16, "diagnostics_every": 3},
    }


@pytest.mark.parametrize("method", ALL)
def test_resumed_run_equals_uninterrupted_run(method: str, tmp_path: Path) -> None:
    reference = execute(validate_config(_config(method)), tmp_path / "reference")
    assert reference.status == "completed", reference.message

    def stop(step: int) -> None:
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        execute(validate_config(_config(method)), tmp_path / "resumed", on_step=stop)
    resumed = execute(validate_config(_config(method)), tmp_path / "resumed")
    assert resumed.status == "completed"
    assert (resumed.path / RECORDS_FILE).read_text() == (reference.path / RECORDS_FILE).read_text()


class LinearLookahead:
    """Lookahead of SGD on losses that fall linearly along the gradient (for the equal-gradient check)."""

    def __init__(self, losses: torch.Tensor, gradient: torch.Tensor) -> None:
        self.base, self.gradient = losses, gradient

    def update(self, shared_gradient: torch.Tensor) -> torch.Tensor:
        return -0.01 * shared_gradient

    def losses(self, delta: torch.Tensor) -> torch.Tensor:
        return self.base + (self.gradient @ delta)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("num_tasks", [2, 4])
def test_equal_task_gradients_give_the_umtg_direction(method: str, num_tasks: int) -> None:
    generator = torch.Generator().manual_seed(3)
    gradient = torch.randn(12, generator=generator, dtype=torch.float64)
    jacobian = gradient.repeat(num_tasks, 1)
    losses = torch.full((num_tasks,), 0.7, dtype=torch.float64)
    instance = methods.get(method)
    instance.setup(tuple(f"task{k}" for k in range(num_tasks)))
    for step in range(3):  # a few steps, so stateful methods move away from their initial state
        combination = instance.combine(
            step_input(
                jacobian,
                losses,
                step=step,
                representation_jacobian=jacobian,
                last_shared_jacobian=jacobian,
                lookahead=LinearLookahead(losses, gradient),
            )
        )
        if "post_step_losses" in instance.needs:
            instance.after_step(losses * 0.99)
    if combination.loss_weights is not None:
        assert (combination.loss_weights >= 0).all()
        direction = combination.loss_weights.to(jacobian) @ jacobian
    else:
        assert combination.shared_gradient is not None
        direction = combination.shared_gradient
    cosine = torch.nn.functional.cosine_similarity(direction, gradient, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6), f"{method}: cosine {float(cosine)}"
