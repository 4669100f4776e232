"""Task losses: registered components that are also plain callables ``loss(outputs, targets) -> mean loss``.

A task carries one loss (``mtlscope.settings.Task(loss=...)``), given as a registered name, a mapping
``{"name": ..., **options}``, a ``Loss`` instance or a plain function ``fn(outputs, targets) -> Tensor`` (a mean
over the examples; see ``from_function``). Options are validated like every component's
(``mtlscope.registry``): ``LOSSES.build("cross_entropy", ignore_index=255)``.

Every loss states how the Fisher probe (``mtlscope.probes.fisher``) samples labels from the model
(``fisher``): ``"categorical"`` (``y ~ softmax(outputs, dim=1)``), ``"bernoulli"`` (``y ~ Bernoulli(sigmoid(
outputs))``), ``"gaussian"`` (``y ~ N(outputs, 1)``, unit variance) or ``"empirical"`` (no distribution to
sample from: only the empirical Fisher, with the true targets, applies).

Built in (``docs/losses.md`` has the reference entry of each):

- ``cross_entropy(ignore_index=-100)``: ``F.cross_entropy`` over the class dimension 1 (dense ``[N, C, ...]``
  outputs work), targets equal to ``ignore_index`` left out; categorical, one class drawn per position, and the
  positions whose true target is ``ignore_index`` left out of the sampled targets too (``mask_sampled``);
- ``binary_cross_entropy()``: ``F.binary_cross_entropy_with_logits`` on one logit per label (multi-label,
  attributes); Bernoulli;
- ``mse(fisher=None, invalid=None)``: ``F.mse_loss``; Gaussian with unit variance (or ``"empirical"``); with
  ``invalid`` the mean over the valid elements (as ``l1``), and the empirical Fisher;
- ``l1(invalid=None, mean_over="valid")``: mean absolute error over the valid elements (targets equal to
  ``invalid`` are masked out; NaN masks NaN targets); with ``mean_over="all"`` the masked elements count as zero
  terms of a mean over every element (``(|o - t| * mask).mean()``, Standley et al.'s Taskonomy losses); empirical;
- ``cosine()``: ``1 - cos(outputs, targets)`` along dim 1 (surface normals), over the positions whose target
  is not the zero vector; empirical.

``loss.sum_and_count(outputs, targets)`` gives the summed loss and how many terms it has, so evaluation
computes the mean over a whole set seen in batches (``mtlscope.metrics.LossMetric``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlscope.registry import Registry

FisherLabels = Literal["categorical", "bernoulli", "gaussian", "empirical"]
#: What the masked ``l1`` divides by: the number of valid elements, or of all elements (masked ones count as 0).
MeanOver = Literal["valid", "all"]
FISHER_LABELS: tuple[str, ...] = get_args(FisherLabels)

__all__ = [
    "FISHER_LABELS",
    "LOSSES",
    "FisherLabels",
    "Loss",
    "LossLike",
    "from_function",
    "resolve_loss",
]


class Loss:
    """A task loss: ``loss(outputs, targets)`` is the mean loss (a 0-dim tensor with its graph).

    Subclasses set ``name`` and ``fisher`` and implement ``__call__``; they override ``sum_and_count`` when their
    mean is not over the first (example) dimension, and ``sample_targets`` follows ``fisher``.
    """

    name: str = "loss"
    fisher: FisherLabels = "empirical"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def sum_and_count(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """The summed loss and its number of terms (mean = sum / count); by default a mean over the examples."""
        count = int(outputs.shape[0])
        return self(outputs, targets) * count, count

    def sample_targets(self, outputs: Tensor, generator: torch.Generator) -> Tensor:
        """Targets drawn from the model's own distribution given ``outputs`` (no grad), as ``fisher`` declares."""
        return sample_targets(self.fisher, outputs, generator)

    def mask_sampled(self, sampled: Tensor, targets: Tensor) -> Tensor:
        """``sampled`` targets with the positions this loss leaves out of ``targets`` left out the same way, so a
        loss on sampled targets covers what the loss on the true ones covers (default: nothing is left out)."""
        return sampled

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "fisher": self.fisher}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, fisher={self.fisher!r})"


def sample_targets(fisher: str, outputs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per output from the distribution ``fisher`` names (``ValueError`` for ``"empirical"``)."""
    outputs = outputs.detach()
    if fisher == "categorical":
        if outputs.dim() < 2:
            raise ValueError("categorical labels need outputs with a class dimension (dim 1)")
        probs = torch.softmax(outputs.double(), dim=1).movedim(1, -1).reshape(-1, outputs.shape[1])
        labels = torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1)
        return labels.to(outputs.device).reshape(outputs.shape[0], *outputs.shape[2:])
    if fisher == "bernoulli":
        probs = torch.sigmoid(outputs.double()).to(generator.device)
        return torch.bernoulli(probs, generator=generator).to(outputs.device, outputs.dtype)
    if fisher == "gaussian":
        noise = torch.randn(outputs.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return (outputs.double() + noise.to(outputs.device)).to(outputs.dtype)
    raise ValueError(f"a loss declared {fisher!r} has no distribution to sample labels from")


def _shaped(outputs: Tensor, targets: Tensor) -> Tensor:
    """``outputs`` in the shape of ``targets`` (one output per target element), or a one-line ``ValueError``."""
    if outputs.shape == targets.shape:
        return outputs
    if outputs.numel() != targets.numel():
        raise ValueError(
            f"outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}"
        )
    return outputs.reshape(targets.shape)


class CrossEntropy(Loss):
    name, fisher = "cross_entropy", "categorical"

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, ignore_index=self.ignore_index)

    def sum_and_count(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        total = F.cross_entropy(outputs, targets, ignore_index=self.ignore_index, reduction="sum")
        return total, int((targets != self.ignore_index).sum())

    def mask_sampled(self, sampled: Tensor, targets: Tensor) -> Tensor:
        """Sampled classes with ``ignore_index`` where the true targets have it (ignored pixels stay ignored)."""
        if sampled.shape != targets.shape:
            raise ValueError(
                f"sampled targets of shape {tuple(sampled.shape)} do not match targets of shape {tuple(targets.shape)}"
            )
        ignored = targets.to(sampled.device) == self.ignore_index
        return torch.where(ignored, torch.full_like(sampled, self.ignore_index), sampled)


class BinaryCrossEntropy(Loss):
    name, fisher = "binary_cross_entropy", "bernoulli"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(_shaped(outputs, targets), targets.to(outputs.dtype))

    def sum_and_count(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        shaped = _shaped(outputs, targets)
        total = F.binary_cross_entropy_with_logits(shaped, targets.to(outputs.dtype), reduction="sum")
        return total, targets.numel()


class MeanSquaredError(Loss):
    name = "mse"

    def __init__(self, fisher: FisherLabels = "gaussian", invalid: float | None = None) -> None:
        self.fisher, self.invalid = fisher, invalid

    def _terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        mask = valid_mask(targets, self.invalid)
        safe = torch.where(mask, targets, torch.zeros_like(targets))
        return ((_shaped(outputs, targets) - safe).square() * mask).sum(), mask.sum()

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.invalid is None:
            return F.mse_loss(_shaped(outputs, targets), targets)
        total, count = self._terms(outputs, targets)
        return total / count.clamp(min=1)

    def sum_and_count(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        if self.invalid is None:
            return F.mse_loss(_shaped(outputs, targets), targets, reduction="sum"), targets.numel()
        total, count = self._terms(outputs, targets)
        return total, int(count)


def valid_mask(targets: Tensor, invalid: float | None) -> Tensor:
    """True where a target is valid: not equal to ``invalid`` (NaN: not NaN); all valid when ``invalid`` is None."""
    if invalid is None:
        return torch.ones_like(targets, dtype=torch.bool)
    if math.isnan(invalid):
        return ~torch.isnan(targets)
    return targets != invalid


class _MaskedLoss(Loss):
    """A loss over the terms its mask keeps: ``_terms`` gives their sum and count; the loss is their mean."""

    def _terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        total, count = self._terms(outputs, targets)
        return total / count.clamp(min=1)

    def sum_and_count(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        total, count = self._terms(outputs, targets)
        return total, int(count)


class MaskedL1(_MaskedLoss):
    name, fisher = "l1", "empirical"

    def __init__(self, invalid: float | None = None, mean_over: MeanOver = "valid") -> None:
        self.invalid, self.mean_over = invalid, mean_over

    def _terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        mask = valid_mask(targets, self.invalid)
        safe = torch.where(mask, targets, torch.zeros_like(targets))
        total = ((_shaped(outputs, targets) - safe).abs() * mask).sum()
        if self.mean_over == "all":
            return total, torch.tensor(targets.numel())
        return total, mask.sum()


class Cosine(_MaskedLoss):
    name, fisher = "cosine", "empirical"

    def _terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if outputs.shape != targets.shape or outputs.dim() < 2:
            raise ValueError(
                f"cosine loss needs outputs and targets of one shape [N, D, ...], got {tuple(outputs.shape)} "
                f"and {tuple(targets.shape)}"
            )
        mask = targets.abs().sum(dim=1) > 0
        cosine = (F.normalize(outputs, dim=1) * F.normalize(targets, dim=1)).sum(dim=1)
        return ((1 - cosine) * mask).sum(), mask.sum()


class FunctionLoss(Loss):
    """A plain function ``fn(outputs, targets) -> mean loss`` as a ``Loss`` (see ``from_function``)."""

    def __init__(self, function: Callable[[Tensor, Tensor], Tensor], name: str, fisher: FisherLabels) -> None:
        self.function, self.name, self.fisher = function, name, fisher

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.function(outputs, targets)


def from_function(
    function: Callable[[Tensor, Tensor], Tensor], *, name: str | None = None, fisher: FisherLabels = "empirical"
) -> Loss:
    """``function`` (a mean over the examples) as a ``Loss``; by default only the empirical Fisher applies.

    ``fisher`` declares how the Fisher probe may sample labels from the model (module docstring): ``"empirical"``
    (the default: the true targets) unless ``function`` is the negative log-likelihood of one of the other
    distributions. A bad definition (not callable, an empty name, an unknown ``fisher``) is one ``ValueError``."""
    if not callable(function) or isinstance(function, type):
        raise ValueError(f"a loss must be a function (outputs, targets) -> mean loss, got {type(function).__name__}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"a loss name must be a non-empty string, got {name!r}")
    if fisher not in FISHER_LABELS:
        raise ValueError(f"fisher must be one of {', '.join(FISHER_LABELS)}, got {fisher!r}")
    return FunctionLoss(function, name or str(getattr(function, "__name__", "loss")), fisher)


LOSSES: Registry[Loss] = Registry("loss")


@LOSSES.register("cross_entropy", "softmax cross-entropy over dim 1, targets = ignore_index left out; categorical")
def cross_entropy(*, ignore_index: int = -100) -> Loss:
    return CrossEntropy(ignore_index)


@LOSSES.register("binary_cross_entropy", "sigmoid cross-entropy, one logit per label (multi-label); Bernoulli")
def binary_cross_entropy() -> Loss:
    return BinaryCrossEntropy()


@LOSSES.register("mse", "mean squared error (over the targets not equal to `invalid`); Gaussian (or empirical)")
def mse(*, fisher: Literal["gaussian", "empirical"] | None = None, invalid: float | None = None) -> Loss:
    """``fisher`` defaults to ``"gaussian"``, and to ``"empirical"`` with ``invalid``: labels sampled from the model
    cannot carry the mask, so the masked loss's Fisher is the empirical one (``"gaussian"`` with ``invalid`` is a
    ``ValueError``)."""
    if invalid is not None and fisher == "gaussian":
        raise ValueError(
            "loss mse: fisher 'gaussian' cannot be used with invalid (sampled labels carry no mask); "
            "leave fisher out (empirical)"
        )
    return MeanSquaredError(fisher or ("gaussian" if invalid is None else "empirical"), invalid)


@LOSSES.register("l1", "mean absolute error over the valid targets (not equal to `invalid`); empirical")
def l1(*, invalid: float | None = None, mean_over: MeanOver = "valid") -> Loss:
    """``mean_over="all"``: the masked elements are zero terms of a mean over every element, as Standley et
    al.'s Taskonomy losses ``(l1 * mask).mean()`` (the ``taskonomy`` setting's depth and normals)."""
    return MaskedL1(invalid, mean_over)


@LOSSES.register("cosine", "1 - cosine similarity along dim 1 (unit normals), zero targets left out; empirical")
def cosine() -> Loss:
    return Cosine()


LossLike = Loss | str | Mapping[str, Any] | Callable[[Tensor, Tensor], Tensor]


def resolve_loss(spec: LossLike) -> Loss:
    """A ``Loss`` from a registered name, a ``{"name": ..., **options}`` mapping, a ``Loss`` or a plain function."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str | Mapping):
        return LOSSES.build_spec(spec)
    if callable(spec):
        return from_function(spec)
    raise ValueError(f"a loss must be a name, a mapping with a name, a Loss or a function, got {type(spec).__name__}")
