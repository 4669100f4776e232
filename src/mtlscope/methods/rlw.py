"""RLW: random loss weighting (Lin, Ye, Xu, Shi, Zhang. *Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning*, TMLR 2022; arXiv:2111.10603, 2021, Algorithm 1).

At every step, fresh task weights ``lambda = softmax(z)`` with ``z ~ N(0, I_K)`` (the paper's default
distribution, also LibMTL's ``dist='Normal'`` and TorchJD's ``Random``) are drawn from the run's
generator, and the engine back-propagates the weighted loss sum. No gradients are needed.

Scale relative to the UMTG. lambda sums to 1, so the paper's update ``sum_k lambda_k grad L_k`` is, in
expectation over the draw (E lambda_k = 1/K), the *average* UMTG (C = K). To keep C meaning the same for
every method, mtlscope uses ``w_k = K lambda_k`` (mean 1, like the UMTG's ``w_k = 1``) and divides by C::

    loss weights = K softmax(z) / C

so with C = K the weights are exactly the paper's lambda, and for every C the expected update is the UMTG
``(1/C) sum_k grad L_k`` (heads get the same weighted gradients, as in the paper's single backward).
When all task gradients are equal to g the update is ``(K/C) g``: the UMTG, exactly, at every C.

Options: none. Needs: the losses only (one backward pass of the weighted loss; K Gaussian draws).

Diagnostics: ``weight/<task>`` (the loss weights, 1/C included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_jacobian, check_loss_scale
from mtlscope.methods.registry import METHODS


def sample_weights(
    num_tasks: int,
    generator: torch.Generator,
    loss_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """[K] random loss weights ``K softmax(z) / C``, ``z ~ N(0, I)`` drawn from ``generator`` (on its device,
    in ``dtype``), returned on ``device`` (default: the generator's)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"rlw: num_tasks must be an integer >= 1, got {num_tasks!r}")
    scale = check_loss_scale(loss_scale, "rlw")
    z = torch.randn(num_tasks, generator=generator, dtype=dtype, device=generator.device)
    w = torch.softmax(z, dim=0) * (num_tasks / scale)
    return w if device is None else w.to(device)


def weights(jacobian: Tensor, generator: torch.Generator, loss_scale: float = 1.0) -> Tensor:
    """RLW's weights [K] for a [K, P] Jacobian (they do not depend on its values), in its dtype and device."""
    check_jacobian(jacobian)
    return sample_weights(jacobian.shape[0], generator, loss_scale, jacobian.dtype, jacobian.device)


def aggregate(jacobian: Tensor, generator: torch.Generator, loss_scale: float = 1.0) -> Tensor:
    """RLW's update [P] for a [K, P] Jacobian: ``(K/C) sum_k softmax(z)_k g_k``."""
    return weights(jacobian, generator, loss_scale) @ jacobian


class RLW(Method):
    name = "rlw"

    def combine(self, step: StepInput) -> Combination:
        w = sample_weights(self.num_tasks, step.generator, step.loss_scale, step.losses.dtype)  # generator's device
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, w.tolist(), strict=True)}
        return Combination(loss_weights=w.to(step.losses.device), diagnostics=diagnostics)


@METHODS.register("rlw", "random loss weighting K softmax(z) / C, z ~ N(0, I) per step (Lin et al. 2021)")
def build() -> Method:
    return RLW()
