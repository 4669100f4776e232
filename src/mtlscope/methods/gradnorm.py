"""GradNorm: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018 (PMLR 80:794-803).

Task weights ``w_k`` (initially 1) scale the task losses; the model is trained on ``(1/C) sum_k w_k L_k``.
At each step, with W the parameters of the last shared layer of weights (``Encoder.last_shared_layer()``: the
last Linear/Conv on the encoder's main path, e.g. an MLP's last Linear, a ResNet's last block's second
convolution; never a normalization layer or a shortcut projection):

    G_k = ||grad_W (w_k L_k)||_2 = w_k * ||grad_W L_k||        (the rows of ``last_shared_jacobian``)
    Lt_k = L_k(t) / L_k(0),   r_k = Lt_k / mean_j Lt_j           (inverse training rate)
    L_grad = sum_k | G_k - mean_j(G_j) * r_k^alpha |             (paper eq. 2)

The target ``mean(G) * r_k^alpha`` is a constant (paper §3.2). Because ``G_k`` is linear in ``w_k`` the
gradient of ``L_grad`` is closed-form, ``dL_grad/dw_k = sign(G_k - target_k) * ||grad_W L_k||`` (the
subgradient 0 at a kink, as autograd's ``abs``), so no second-order back-propagation is needed: the engine
supplies the task gradients on W, and this module never builds a graph. The weights (a ``LearnedVector``:
float64, CPU) take one step of their own ``torch.optim.Adam`` on that gradient, are floored at ``MIN_WEIGHT``
to stay positive, and are renormalized to sum to K (paper Algorithm 1, a tested invariant; the Adam moments
are kept across the renormalization). The model uses the weights from before
the update (as in Algorithm 1, where the network and the weights are updated from the same forward pass).
``L_k(0)`` are the losses of the first step after ``setup`` (paper: "t = 0"), floored at 1e-12.

Options:
    alpha: asymmetry, the strength of the restoring force (default 1.5, the paper's NYUv2 value; 0 equalizes
        the gradient norms, larger values pull harder towards equal training rates).
    lr: learning rate of the weights' Adam optimizer (default 0.025, betas (0.9, 0.999), eps 1e-8; the
        paper trains the weights with the network's optimizer and does not give a separate rate).

Loss scale C: the model's loss weights are ``w_k / C``; the weights sum to K, so with all task gradients
equal the update is exactly the UMTG's, ``(K/C) g``, at every step. ``G_k`` is computed from the unscaled
task gradients: 1/C would scale ``L_grad`` and its gradient by the same factor, which Adam ignores (up to eps).

Cost: needs ``"last_shared_jacobian"`` ([K, P_last]: K vector-Jacobian products from the losses back to the
last shared layer only, cheap next to a full backward); O(K P_last) for the norms.
Diagnostics: ``weight/<task>`` (``w_k``, before 1/C) and ``gradnorm_loss`` (``L_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_positive
from mtlscope.methods.learned import LearnedVector
from mtlscope.methods.registry import METHODS
from mtlscope.options import NonNegativeFloat, PositiveFloat

#: Floor of a weight after the Adam step, before renormalization (keeps every weight > 0).
MIN_WEIGHT: float = 1e-6
#: Floor of the initial losses L_k(0) in the loss ratios.
MIN_INITIAL_LOSS: float = 1e-12


def inverse_training_rates(losses: Tensor, initial_losses: Tensor) -> Tensor:
    """[K] ``r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0))``."""
    ratios = losses / initial_losses.clamp_min(MIN_INITIAL_LOSS)
    return ratios / ratios.mean()


def targets(weights: Tensor, norms: Tensor, rates: Tensor, alpha: float) -> Tensor:
    """[K] the constant targets ``mean_j(w_j ||grad L_j||) * r_k^alpha`` for the weighted gradient norms."""
    return (weights * norms).mean() * rates.pow(alpha)


def gradnorm_loss(weights: Tensor, norms: Tensor, rates: Tensor, alpha: float) -> Tensor:
    """``L_grad = sum_k |w_k ||grad L_k|| - target_k|`` (paper eq. 2), targets held constant."""
    return (weights * norms - targets(weights, norms, rates, alpha)).abs().sum()


def weight_gradient(weights: Tensor, norms: Tensor, rates: Tensor, alpha: float) -> Tensor:
    """[K] ``dL_grad/dw_k = sign(w_k ||grad L_k|| - target_k) * ||grad L_k||`` (targets constant)."""
    return torch.sign(weights * norms - targets(weights, norms, rates, alpha)) * norms


def renormalize(weights: Tensor) -> Tensor:
    """Floor at ``MIN_WEIGHT`` and rescale to sum to K."""
    floored = weights.clamp_min(MIN_WEIGHT)
    return floored * (weights.numel() / floored.sum())


class GradNorm(Method):
    name = "gradnorm"
    needs = frozenset({"last_shared_jacobian"})

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        try:
            self.alpha = float(alpha)
        except (TypeError, ValueError):
            raise ValueError(f"gradnorm: option alpha must be a number >= 0, got {alpha!r}") from None
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"gradnorm: option alpha must be a finite number >= 0, got {alpha!r}")
        self.lr = check_positive("lr", lr, self.name)
        self.weights = LearnedVector(torch.ones(0), lr=self.lr)
        #: L_k(0) (float64, CPU); None until the first step after ``setup``.
        self.initial_losses: Tensor | None = None

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.weights = LearnedVector(torch.ones(self.num_tasks), lr=self.lr)
        self.initial_losses = None

    def combine(self, step: StepInput) -> Combination:
        if step.last_shared_jacobian is None:
            raise ValueError("gradnorm needs the last shared layer's Jacobian (StepInput.last_shared_jacobian)")
        if step.losses.shape != (self.num_tasks,) or step.last_shared_jacobian.shape[0] != self.num_tasks:
            raise ValueError(
                f"gradnorm: expected {self.num_tasks} task losses and Jacobian rows, got shapes "
                f"{tuple(step.losses.shape)} and {tuple(step.last_shared_jacobian.shape)}"
            )
        losses = step.losses.detach().to(device="cpu", dtype=torch.float64)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        weights = self.weights.value
        norms = step.last_shared_jacobian.detach().norm(dim=1).to(losses)
        rates = inverse_training_rates(losses, self.initial_losses)
        self.weights.step(weight_gradient(weights, norms, rates, self.alpha))
        self.weights.assign(renormalize(self.weights.value))
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, weights.tolist())}
        diagnostics["gradnorm_loss"] = float(gradnorm_loss(weights, norms, rates, self.alpha))
        return Combination(loss_weights=weights.to(step.losses) / step.loss_scale, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.state_dict(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"weights", "initial_losses"}
        if set(state) != expected:
            raise ValueError(f"gradnorm: state keys {sorted(state)} do not match {sorted(expected)}")
        initial = state["initial_losses"]
        if initial is not None:
            initial = torch.as_tensor(initial).detach().to(device="cpu", dtype=torch.float64).clone()
            if initial.shape != (self.num_tasks,):
                raise ValueError(f"gradnorm: state has {initial.numel()} initial losses for {self.num_tasks} tasks")
        self.weights.load_state_dict(state["weights"])
        self.initial_losses = initial


@METHODS.register(
    "gradnorm",
    "GradNorm: task weights balancing last-shared-layer gradient norms and training rates (Chen et al. 2018)",
)
def build(*, alpha: NonNegativeFloat = 1.5, lr: PositiveFloat = 0.025) -> Method:
    return GradNorm(alpha=alpha, lr=lr)
