"""Arrays given by a user, as the tensors a setting holds: converted by one rule and checked, one line per error.

- inputs: a numpy array or a tensor of real numbers (float of any width, integer or bool), at least 2-D
  (examples first), finite; stored as float32 (float64 becomes float32; uint8 images become floats 0..255: scale
  them yourself). A float32 tensor is kept as it is (the same object), a float32 numpy array shares its memory.
- targets of a categorical loss (``cross_entropy``, or any loss whose ``fisher`` is ``"categorical"``): integers
  (or bool) in ``[0, output_size)`` or equal to the loss's ``ignore_index``; stored as int64.
- targets of any other loss: real numbers, at least 1-D, stored as float32 (integer 0/1 labels of
  ``binary_cross_entropy`` become floats); finite unless the loss masks an ``invalid`` value.

Every error names where the array was given (``where``: e.g. ``task 'price', split 'train'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlscope.losses import Loss

_DEFAULT_IGNORE = -100  # cross_entropy's default ignore_index


def _tensor(value: object, where: str, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{where}: {what} must hold real numbers, got a numpy array of dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{where}: {what} must be a numpy array or a torch tensor, got {type(value).__name__}")


def as_inputs(value: object, where: str) -> Tensor:
    """``value`` as float32 inputs (module docstring), or ``ValueError`` naming ``where``."""
    tensor = _tensor(value, where, "inputs")
    if tensor.is_complex() or tensor.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no arithmetic on these
        raise ValueError(f"{where}: inputs must hold real numbers, got dtype {tensor.dtype}")
    if tensor.dim() < 2:
        raise ValueError(
            f"{where}: inputs must have an examples dimension and a feature dimension (at least 2-D), "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{where}: the split is empty (0 examples)")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).reshape(len(tensor), -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{where}: inputs must be finite, example {bad} has NaN or infinite values")
    return tensor


def categorical(loss: Loss) -> bool:
    """Whether ``loss`` takes class indices as targets (its Fisher labels are categorical)."""
    return loss.fisher == "categorical"


def as_targets(value: object, where: str, *, loss: Loss, output_size: int) -> Tensor:
    """``value`` as the targets of a task with ``loss`` and ``output_size`` outputs (module docstring)."""
    tensor = _tensor(value, where, "targets")
    if tensor.dim() < 1:
        raise ValueError(f"{where}: targets must have an examples dimension, got a scalar")
    if tensor.is_complex():
        raise ValueError(f"{where}: targets must hold real numbers, got dtype {tensor.dtype}")
    if categorical(loss):
        return _class_targets(tensor, where, loss, output_size)
    tensor = tensor.to(torch.float32)
    if getattr(loss, "invalid", None) is None and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{where}: targets must be finite for loss {loss.name!r}")
    return tensor


def _class_targets(tensor: Tensor, where: str, loss: Loss, output_size: int) -> Tensor:
    if tensor.is_floating_point():
        raise ValueError(
            f"{where}: class targets of loss {loss.name!r} must be integers, got dtype {tensor.dtype} "
            f"(cast the labels, e.g. y.astype(np.int64))"
        )
    tensor = tensor.to(torch.int64)
    ignore: Any = getattr(loss, "ignore_index", None)
    kept = tensor if ignore is None else tensor[tensor != int(ignore)]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= output_size):
        outside = int(kept.min()) if int(kept.min()) < 0 else int(kept.max())
        shown = ignore is not None and int(ignore) != _DEFAULT_IGNORE  # the default -100 is no news
        allowed = f"[0, {output_size})" + (f" or the ignore_index {int(ignore)}" if shown else "")
        raise ValueError(f"{where}: class target {outside} is outside {allowed} (the task has {output_size} outputs)")
    return tensor
