"""Encoders and heads given by the user: any ``nn.Module``, as an instance, a factory, or an import path.

A model part is one of:

- a registered name, ``{"name": "lenet", **options}`` (``ENCODERS``, ``HEADS``);
- an import path with options, ``{"factory": "package.module:make_cnn", **options}`` (YAML, CLI, sweeps);
- in Python, an ``nn.Module`` instance (deep-copied for every run, so the given module is never trained) or a
  factory callable.

Factories are called with their options as keyword arguments, plus what mtlscope knows and the factory asks
for by parameter name: an encoder factory gets ``input_shape`` (one example's shape, without the batch
dimension) when it has an ``input_shape`` parameter; a head factory must have an ``output_size`` parameter (the
task's number of outputs) and gets ``input_dim`` (the representation size) when it has that parameter. These
names are reserved: a config cannot set them as options.

The representation size is the encoder's ``output_dim`` attribute when it declares one, else it is inferred by
a dry forward of two examples of the setting (in eval mode, without gradients, under a forked RNG, the module's
mode restored afterwards): the output must be ``[batch, features]``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mtlscope.imports import describe, resolve_path

#: Parameters mtlscope passes to factories itself (never options), by part.
RESERVED: dict[str, tuple[str, ...]] = {"encoder": ("input_shape",), "head": ("input_dim", "output_size")}
#: Parameters a factory of the part must have.
REQUIRED: dict[str, tuple[str, ...]] = {"encoder": (), "head": ("output_size",)}


def _parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool] | None:
    """The factory's parameters passable by name and whether it takes ``**kwargs`` (``None``: no signature)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    named = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    variadic = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in signature.parameters.values())
    return named, variadic


def check_factory_options(part: str, factory: Callable[..., Any], options: Mapping[str, Any], label: str) -> None:
    """``ValueError`` (one line) when ``options`` do not fit the factory's signature: an unknown option, a
    reserved one, a missing required one, or a missing reserved parameter the part needs."""
    reserved = RESERVED.get(part, ())
    for key in options:
        if key in reserved:
            raise ValueError(f"{part} option {key!r} is given by mtlscope, not the config ({label})")
    found = _parameters(factory)
    if found is None:
        return
    named, variadic = found
    for key in REQUIRED.get(part, ()):
        if key not in named and not variadic:
            raise ValueError(f"{part} factory {label} must take a parameter {key!r}")
    if not variadic:
        unknown = [key for key in options if key not in named]
        if unknown:
            listed = ", ".join(name for name in named if name not in reserved) or "none"
            raise ValueError(f"{part} factory {label} has no option {str(unknown[0])!r}; options: {listed}")
    missing = [
        name
        for name, parameter in named.items()
        if parameter.default is inspect.Parameter.empty and name not in reserved and name not in options
    ]
    if missing:
        raise ValueError(f"{part} factory {label} needs option {missing[0]!r}")


def call_factory(part: str, factory: Callable[..., Any], options: Mapping[str, Any], given: Mapping[str, Any]) -> Any:
    """``factory(**options, **the given values it asks for)``; the result must be an ``nn.Module``."""
    label = describe(factory)
    check_factory_options(part, factory, options, label)
    found = _parameters(factory)
    named = found[0] if found is not None else {}
    extra = {key: value for key, value in given.items() if key in named}
    module = factory(**options, **extra)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{part} factory {label} returned a {type(module).__name__}, expected a torch nn.Module")
    return module


def make_part(part: str, spec: Any, given: Mapping[str, Any], build_registered: Callable[..., nn.Module]) -> nn.Module:
    """The module a part's ``spec`` gives (see the module docstring); ``build_registered(name, **options)``
    builds a registered one."""
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    if isinstance(spec, Mapping):
        options = {key: value for key, value in spec.items() if key not in ("name", "factory")}
        if "factory" in spec:
            return call_factory(part, resolve_path(spec["factory"], what=f"{part}.factory"), options, given)
        if "object" in spec:
            raise ValueError(f"{part}: given as a Python object ({spec['object']}); pass the object itself again")
        return build_registered(str(spec.get("name")), **options)
    if callable(spec):
        return call_factory(part, spec, {}, given)
    raise ValueError(f"{part}: expected a name, a mapping, an nn.Module or a factory, got {type(spec).__name__}")


def representation_size(encoder: nn.Module, examples: torch.Tensor, label: str = "encoder") -> int:
    """The encoder's ``output_dim`` when declared, else the feature size of a dry forward of ``examples``."""
    declared = getattr(encoder, "output_dim", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    training = encoder.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            encoder.eval()
            out = encoder(examples)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{label}: the dry forward of {len(examples)} examples of shape {list(examples.shape[1:])} to infer "
            f"the representation size failed ({type(error).__name__}: {first[:200]})"
        ) from None
    finally:
        encoder.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != examples.shape[0]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{label}: expected an output of shape [batch, features] for {len(examples)} examples, got {shape} "
            "(flatten it, or declare output_dim)"
        )
    return int(out.shape[1])


def example_inputs(inputs: torch.Tensor | None, input_shape: Sequence[int]) -> torch.Tensor:
    """Two examples for a dry forward: the first training inputs (zeros of ``input_shape`` if there are none)."""
    if isinstance(inputs, torch.Tensor) and inputs.shape[0] > 0:
        return inputs[:2].detach().cpu()
    return torch.zeros(2, *input_shape)
