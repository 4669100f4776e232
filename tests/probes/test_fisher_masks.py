"""The Fisher probe on per-pixel cross-entropy with an ignore index: one class drawn per pixel from the model, the
ignored pixels left out of the sampled targets as the training loss leaves them out (checked against a direct
autograd computation of both traces)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.losses import cross_entropy, l1, sample_targets
from mtlscope.probes.fisher import fim_trace

IGNORE = -1


def _problem() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double()
    inputs = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    targets = torch.randint(0, 3, (4, 3, 5))
    targets[torch.rand(4, 3, 5) < 0.4] = IGNORE
    targets[:, 0, 0] = 0  # every image keeps a pixel
    return model, inputs, targets


def _squared_gradient(model: nn.Module, loss: Tensor) -> float:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(sum(g.pow(2).sum() for g in grads))


def _direct(model: nn.Module, inputs: Tensor, labels: Tensor, batch: int) -> tuple[float, float]:
    """(minibatch trace, per-example trace) of ``F.cross_entropy(..., ignore_index=-1)`` on ``labels``."""
    per_example = [
        _squared_gradient(model, F.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1], ignore_index=IGNORE))
        for i in range(len(inputs))
    ]
    minibatch = [
        _squared_gradient(
            model, F.cross_entropy(model(inputs[s : s + batch]), labels[s : s + batch], ignore_index=IGNORE)
        )
        for s in range(0, len(inputs), batch)
    ]
    return sum(minibatch) / len(minibatch), sum(per_example) / len(per_example)


def test_ignored_pixels_are_left_out_of_the_sampled_labels() -> None:
    model, inputs, targets = _problem()
    result = fim_trace(
        model, inputs, targets=targets, loss=cross_entropy(ignore_index=IGNORE), batch_size=2,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert not result.empirical and result.labels == "categorical"
    with torch.no_grad():
        sampled = sample_targets("categorical", model(inputs), torch.Generator().manual_seed(7))
    assert sampled.shape == targets.shape and (sampled >= 0).all()  # one class per pixel, ignored ones included
    masked = torch.where(targets == IGNORE, IGNORE, sampled)
    minibatch, per_example = _direct(model, inputs, masked, 2)
    assert result.fim_trace == pytest.approx(minibatch, rel=1e-9)
    assert result.fim_trace_per_example == pytest.approx(per_example, rel=1e-9)
    unmasked = _direct(model, inputs, sampled, 2)  # what sampling every pixel would give: another value
    assert abs(unmasked[0] - minibatch) > 1e-3 * minibatch and abs(unmasked[1] - per_example) > 1e-3 * per_example


def test_mask_sampled_keeps_draws_where_the_targets_count() -> None:
    targets = torch.tensor([[0, IGNORE], [2, 1]])
    sampled = torch.tensor([[1, 2], [0, 0]])
    assert cross_entropy(ignore_index=IGNORE).mask_sampled(sampled, targets).tolist() == [[1, IGNORE], [0, 0]]
    assert cross_entropy().mask_sampled(sampled, targets).tolist() == sampled.tolist()  # -100: nothing ignored
    assert l1(invalid=0.0).mask_sampled(sampled, targets) is sampled
    with pytest.raises(ValueError, match="do not match targets"):
        cross_entropy(ignore_index=IGNORE).mask_sampled(sampled, targets[:1])


def test_without_targets_every_pixel_is_sampled() -> None:
    """Called without targets (nothing to mask by), every pixel's draw counts: the unmasked direct value."""
    model, inputs, _ = _problem()
    result = fim_trace(model, inputs, loss=cross_entropy(ignore_index=IGNORE), batch_size=2,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    with torch.no_grad():
        sampled = sample_targets("categorical", model(inputs), torch.Generator().manual_seed(3))
    assert result.fim_trace == pytest.approx(_direct(model, inputs, sampled, 2)[0], rel=1e-9)
