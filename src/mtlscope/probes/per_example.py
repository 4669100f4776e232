"""Per-example gradients for the trajectory probes (Mueller et al., TMLR 2025, §4 and App. B), on any ``nn.Module``.

``per_example_gradients`` returns the ``[N, P]`` matrix of the gradients of ``loss_fn`` on each single-example
batch, flattened in parameter order. It uses ``torch.func`` (``functional_call`` + ``vmap(grad)``) in chunks and
falls back to a Python loop of ``torch.autograd.grad`` for models ``vmap`` cannot handle.

Shared rules of the probes (Mueller et al. 2025, App. B), implemented by ``probe_mode`` (``mtlscope.probes.base``) and
``selected_parameters``:

- the model is put in eval mode (BatchNorm running statistics, no dropout) and every submodule's mode is restored
  afterwards;
- gradients are taken with respect to detached aliases of the selected parameters (no copies, no
  ``state_dict``), so parameters, buffers and ``.grad`` are exactly as before on return;
- ``parameters=`` chooses which parameters count (default: all that require grad, in ``model.parameters()``
  order); the flattened layout follows that order.

The standalone probes take any ``nn.Module`` and a loss given as a plain function ``fn(outputs, targets) -> mean
loss`` (a 0-dim tensor), a registered loss name, a ``{"name": ..., **options}`` mapping or an ``mtlscope.losses``
``Loss``; ``loss_function`` resolves it and checks every value it returns, and ``check_examples`` the inputs, so
bad input is one ``ValueError`` line naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mtlscope.losses import LOSSES, Loss, resolve_loss
from mtlscope.probes.base import probe_mode

LossFn = Callable[[Tensor, Tensor], Tensor]
Method = Literal["auto", "vmap", "loop"]

__all__ = [
    "CheckedLoss",
    "LossFn",
    "auto_chunk_size",
    "batch_gradient",
    "check_examples",
    "check_model",
    "iter_per_example_gradients",
    "loss_function",
    "per_example_gradients",
    "probe_mode",
    "selected_parameters",
]


class CheckedLoss:
    """A loss function whose every value is checked to be a 0-dim tensor (the batch's mean loss); an error the
    function raises becomes one ``ValueError`` line with the shapes it was given."""

    def __init__(self, function: LossFn, name: str) -> None:
        self.function, self.name = function, name

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        try:
            value = self.function(outputs, targets)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"the loss {self.name} failed on model outputs of shape {list(outputs.shape)} and targets of shape "
                f"{list(targets.shape)}: {first}"
            ) from None
        if not isinstance(value, Tensor) or value.dim() != 0:
            got = f"shape {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"the loss {self.name} must return a 0-dim tensor (the mean over the batch), got {got} (a reduction "
                "'none' loss? take its mean)"
            )
        return value


def loss_function(loss: Any, what: str = "loss") -> CheckedLoss:
    """``loss`` (a function ``fn(outputs, targets) -> mean loss``, a registered loss name, a ``{"name": ...}``
    mapping or a ``Loss``) as a checked function; anything else is one ``ValueError`` line naming ``what``."""
    if isinstance(loss, CheckedLoss):
        return loss
    if isinstance(loss, str | Mapping):
        name = loss if isinstance(loss, str) else loss.get("name")
        if name not in LOSSES.available():
            raise ValueError(f"{what}: unknown loss {name!r}; available: {', '.join(LOSSES.available())}")
        component = resolve_loss(loss)
        return CheckedLoss(component, repr(component.name))
    if isinstance(loss, Loss):
        return CheckedLoss(loss, repr(loss.name))
    if callable(loss):
        return CheckedLoss(loss, repr(getattr(loss, "__name__", type(loss).__name__)))
    raise ValueError(
        f"{what} must be a function (outputs, targets) -> mean loss, a loss name or a mtlscope Loss, got "
        f"{type(loss).__name__}"
    )


def check_model(model: Any) -> None:
    """``ValueError`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_examples(inputs: Any, targets: Any = None, *, need_targets: bool = True) -> None:
    """``ValueError`` unless ``inputs`` (and ``targets``) are tensors with the same, non-zero number of examples."""
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a tensor with the examples along dim 0, got {type(inputs).__name__}")
    if inputs.dim() == 0 or len(inputs) == 0:
        raise ValueError("inputs hold no examples")
    if targets is None:
        if need_targets:
            raise ValueError("targets are required")
        return
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a tensor with the examples along dim 0, got {type(targets).__name__}")
    if targets.dim() == 0 or len(targets) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(targets) if targets.dim() else 0} targets")


def selected_parameters(model: nn.Module, parameters: Iterable[Tensor] | None = None) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` pairs that count: ``parameters`` in the given order, or all requiring grad."""
    named: list[tuple[str, Tensor]] = list(model.named_parameters())
    chosen: list[tuple[str, Tensor]]
    if parameters is None:
        chosen = [(name, p) for name, p in named if p.requires_grad]
    else:
        names = {id(p): name for name, p in named}
        chosen = []
        seen: set[int] = set()
        for p in parameters:
            if id(p) not in names:
                raise ValueError("every entry of `parameters` must be a parameter of the model")
            if id(p) not in seen:
                seen.add(id(p))
                chosen.append((names[id(p)], p))
    if not chosen:
        raise ValueError("no parameters selected")
    return chosen


def _leaves(chosen: Sequence[tuple[str, Tensor]], requires_grad: bool) -> dict[str, Tensor]:
    """Detached aliases (shared storage, no copy) of the chosen parameters."""
    return {name: p.detach().requires_grad_(requires_grad) for name, p in chosen}


def _flatten(grads: Sequence[Tensor], batch_dims: int) -> Tensor:
    return torch.cat([g.reshape(*g.shape[:batch_dims], -1) for g in grads], dim=-1)


def batch_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    chosen: Sequence[tuple[str, Tensor]],
) -> Tensor:
    """Flattened gradient ``[P]`` of ``loss_fn(model(inputs), targets)`` w.r.t. ``chosen`` (model untouched).

    The caller sets the mode (see ``probe_mode``); ``.grad`` of the model's parameters is never written.
    """
    leaves = _leaves(chosen, requires_grad=True)
    with torch.enable_grad():
        loss = loss_fn(functional_call(model, leaves, (inputs,)), targets)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return _flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves.values())], 0)


def _vmap_chunk(
    model: nn.Module, loss_fn: LossFn, leaves: dict[str, Tensor], inputs: Tensor, targets: Tensor
) -> Tensor:
    def single_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    grads = vmap(grad(single_loss), in_dims=(None, 0, 0))(leaves, inputs, targets)
    return _flatten([grads[name] for name in leaves], 1)


def _loop_chunk(
    model: nn.Module, loss_fn: LossFn, chosen: Sequence[tuple[str, Tensor]], inputs: Tensor, targets: Tensor
) -> Tensor:
    return torch.stack(
        [batch_gradient(model, loss_fn, inputs[i : i + 1], targets[i : i + 1], chosen) for i in range(len(inputs))]
    )


CHUNK_MEMORY_BYTES = 256 * 2**20
MAX_CHUNK = 256


def auto_chunk_size(chosen: Sequence[tuple[str, Tensor]]) -> int:
    """Examples per chunk: ``MAX_CHUNK``, or fewer so a chunk of per-example gradients fits in
    ``CHUNK_MEMORY_BYTES``."""
    size = sum(p.numel() * p.element_size() for _, p in chosen)
    return max(1, min(MAX_CHUNK, CHUNK_MEMORY_BYTES // max(size, 1)))


def iter_per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    parameters: Iterable[Tensor] | None = None,
    chunk_size: int | None = None,
    method: Method = "auto",
) -> Iterator[Tensor]:
    """Per-example gradients chunk by chunk (``[<= chunk_size, P]`` each), to keep memory at ``chunk_size * P``.

    ``chunk_size=None`` (default) picks ``auto_chunk_size``: 256 examples, fewer for large models so that a
    chunk of gradients stays within ``CHUNK_MEMORY_BYTES`` (e.g. 5 examples for an 11M-parameter ResNet-18).

    The caller is responsible for eval mode (``probe_mode``); ``per_example_gradients`` does it for you.
    ``method``: ``"vmap"`` (torch.func), ``"loop"`` (autograd per example) or ``"auto"`` (vmap, falling back to
    the loop for the rest of the data the first time vmap fails).
    """
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    chosen = selected_parameters(model, parameters)
    if chunk_size is None:
        chunk_size = auto_chunk_size(chosen)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    leaves = _leaves(chosen, requires_grad=False)
    use_vmap = method != "loop"
    for start in range(0, len(inputs), chunk_size):
        x, y = inputs[start : start + chunk_size], targets[start : start + chunk_size]
        if use_vmap:
            try:
                yield _vmap_chunk(model, loss_fn, leaves, x, y)
                continue
            except Exception:  # vmap does not support every model (data-dependent control flow, .item(), ...)
                if method == "vmap":
                    raise
                use_vmap = False
        yield _loop_chunk(model, loss_fn, chosen, x, y)


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    parameters: Iterable[Tensor] | None = None,
    chunk_size: int | None = None,
    method: Method = "auto",
) -> Tensor:
    """Gradients of ``loss_fn(model(x_n[None]), y_n[None])`` for every example n, as an ``[N, P]`` tensor.

    ``loss_fn(outputs, targets)`` is a mean loss applied to single-example batches. Columns follow the order of
    ``parameters`` (default: the model's parameters that require grad), each flattened. The model runs in eval
    mode and is left exactly as it was (modes, parameters, buffers, ``.grad``). ``loss_fn`` may also be a loss
    name or an ``mtlscope.losses.Loss`` (``loss_function``).
    """
    check_model(model)
    check_examples(inputs, targets)
    loss_fn = loss_function(loss_fn, "loss_fn")
    with probe_mode(model):
        chunks = list(
            iter_per_example_gradients(
                model, loss_fn, inputs, targets, parameters=parameters, chunk_size=chunk_size, method=method
            )
        )
    if not chunks:
        size = sum(p.numel() for _, p in selected_parameters(model, parameters))
        return inputs.new_zeros((0, size))
    return torch.cat(chunks)
