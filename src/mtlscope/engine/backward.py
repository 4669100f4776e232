"""A multi-task method in your own training loop: ``MultiTaskBackward`` and ``backward`` (docs/user-guide.md,
"Your own training loop").

The trainer's step (``mtlscope.engine.step``) is built on the same object, so a hand-written loop fills
``.grad`` exactly as the trainer would:

    mtl = MultiTaskBackward("pcgrad", shared=encoder, tasks=heads)
    for x, ys in batches:
        optimizer.zero_grad()
        z = encoder(x)
        mtl([loss(head(z), y) for head, y in zip(heads, ys)], features=z)
        optimizer.step()
        mtl.after_step()

Each call computes what the method declared in ``needs`` (``mtlscope.methods.base``) and nothing more:

- with ``features`` (the shared representation z, as TorchJD's ``mtl_backward``): the K task gradients at
  z (one batched backward through the heads), then one batched vector-Jacobian product through the encoder
  for the Jacobian on the shared parameters (and on the last shared layer, GradNorm's); MGDA-UB's
  representation gradients are the first stage alone;
- without ``features``: the Jacobian directly from the losses (batched, falling back to K backwards);
- a loss-weighting method without a Jacobian: one backward of ``sum_k w_k L_k``;
- with ``gradient_path="gramian"`` (``shared`` a module): for the methods that depend on the task gradients
  only through their inner products, the K x K Gramian ``J Jᵀ`` accumulated module by module
  (``mtlscope.engine.gramian``; hooks on ``shared``'s forward), never the K x P Jacobian; the method then
  returns loss weights and the update is one backward of ``sum_k w_k L_k`` (heads: ``head_weights``).

Then ``method.combine`` and the ``Combination`` is written (``apply``): ``loss_weights`` give the shared
gradient ``w @ J`` (or the one backward) and head k ``w_k grad L_k``; a ``shared_gradient`` is written as is
and head k receives ``grad L_k / C``. Gradients accumulate into ``.grad`` as ``loss.backward()`` does (zero
them before the call). The call counts steps (``epoch = step // steps_per_epoch``, DWA's epochs), draws every
random number from its own generator (seeded as a trainer run with the same ``seed``), evaluates the
``closure`` for the lookahead (IT-MTL, with the ``optimizer``) and ``after_step`` gives the method the
losses after the optimizer step (FAMO).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlscope.engine.gradients import JACOBIAN_MODES, encoder_jacobian, jacobian_batched, joint_jacobian
from mtlscope.engine.gramian import GramianEngine
from mtlscope.engine.lookahead import flatten, optimizer_update, unflatten
from mtlscope.engine.loss_scale import LossScale, parse_loss_scale, resolve_loss_scale
from mtlscope.methods.base import NEEDS, Combination, Lookahead, Method, StepInput
from mtlscope.methods.registry import METHODS
from mtlscope.models.encoders import Encoder, last_weight_layer
from mtlscope.models.multitask import derived_seed

#: Parameters given as a module or as tensors.
Parameters = nn.Module | Iterable[Tensor]
#: The task losses: a sequence of scalars, a mapping task -> scalar, or a [K] tensor.
Losses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor
LossClosure = Callable[[], Losses]
#: The task-specific parameters: one module or iterable of tensors per task (a mapping names the tasks).
TaskParameters = Mapping[str, Parameters] | Sequence[Parameters] | nn.ModuleDict | nn.ModuleList


def _parameters(value: Parameters, what: str) -> list[Tensor]:
    if isinstance(value, Tensor):
        raise TypeError(f"{what} must be an nn.Module or an iterable of tensors, not one tensor")
    parameters: list[Tensor] = list(value.parameters()) if isinstance(value, nn.Module) else list(value)
    for p in parameters:
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise TypeError(f"{what} must hold tensors that require grad, got {type(p).__name__}")
    return parameters


def build_method(name: str, options: Mapping[str, Any]) -> Method:
    """The registered method ``name`` with ``options``; an unknown name is a one-line ``ValueError``."""
    if not isinstance(name, str) or name not in METHODS.available():
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS.available())}")
    return METHODS.build(name, **options)


def check_features(features: Tensor, shared: Sequence[Tensor]) -> None:
    """``ValueError`` unless ``features`` were computed from at least one of the ``shared`` parameters (a walk of
    their graph: a detached tensor, the inputs, or the output of another module are refused)."""
    if features.grad_fn is None:
        raise ValueError(
            "features have no autograd graph: give the shared module's output (z = encoder(x)), not a detached "
            "tensor or the inputs"
        )
    ids = {id(p) for p in shared}
    if not any(id(leaf) in ids for leaf in graph_leaves(features, ())):
        raise ValueError("features were not computed from the shared parameters: give z = shared(x) for shared=")


def _modules(*values: object) -> list[nn.Module]:
    found: list[nn.Module] = []
    for value in values:
        if isinstance(value, nn.Module):
            found.append(value)
        elif isinstance(value, Mapping):
            found += _modules(*value.values())
        elif isinstance(value, Sequence) and not isinstance(value, str | Tensor):
            found += _modules(*value)
    return found


def _stack(losses: Losses, task_names: Sequence[str] | None = None) -> Tensor:
    """[K] losses (graph kept) in ``task_names`` order."""
    if isinstance(losses, Tensor):
        stacked = losses.reshape(-1) if losses.dim() <= 1 else losses
    elif isinstance(losses, Mapping):
        if task_names is not None and set(losses) != set(task_names):
            raise ValueError(f"losses are given for tasks {sorted(losses)}, expected {sorted(task_names)}")
        names = list(task_names) if task_names is not None else list(losses)
        stacked = torch.stack([torch.as_tensor(losses[name]).reshape(()) for name in names])
    else:
        items = list(losses)
        if any(not isinstance(loss, Tensor) or loss.numel() != 1 for loss in items):
            raise ValueError("losses must be scalar tensors, one per task")
        stacked = torch.stack([loss.reshape(()) for loss in items])
    if stacked.dim() != 1 or stacked.numel() < 1:
        raise ValueError(f"expected one scalar loss per task, got shape {tuple(stacked.shape)}")
    if task_names is not None and stacked.numel() != len(task_names):
        raise ValueError(f"expected {len(task_names)} task losses ({', '.join(task_names)}), got {stacked.numel()}")
    return stacked


def graph_leaves(losses: Tensor, exclude: Iterable[Tensor], stop: Tensor | None = None) -> list[Tensor]:
    """The leaf tensors requiring grad in the graph of ``losses``, except ``exclude``, without crossing into
    the graph of ``stop`` (the features): the task-specific parameters when they were not given."""
    excluded = {id(p) for p in exclude}
    boundary = stop.grad_fn if stop is not None else None
    found: dict[int, Tensor] = {}
    seen: set[int] = set()
    pending = [losses.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen or node is boundary:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor) and id(variable) not in excluded:
            found.setdefault(id(variable), variable)
        pending.extend(child for child, _ in node.next_functions)
    return list(found.values())


class ClosureLookahead:
    """``Lookahead`` for a training loop: the optimizer's update for a candidate shared gradient, and the task
    losses ``closure()`` returns with the shared parameters moved by it (heads unchanged). The parameters are
    swapped in place of their data (no autograd version bump: the step's graph stays valid), the buffers of the
    given modules (BatchNorm statistics) are restored afterwards and the forward runs under a forked RNG, so
    neither the model nor the random streams move."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        shared: Sequence[Tensor],
        closure: LossClosure,
        task_names: Sequence[str],
        modules: Sequence[nn.Module] = (),
    ) -> None:
        self.optimizer = optimizer
        self.shared = list(shared)
        self.closure = closure
        self.task_names = list(task_names)
        self.modules = list(modules)

    def update(self, shared_gradient: Tensor) -> Tensor:
        return flatten(optimizer_update(self.optimizer, self.shared, unflatten(shared_gradient, self.shared)))

    @torch.no_grad()
    def losses(self, delta: Tensor) -> Tensor:
        originals = [p.data for p in self.shared]
        buffers = [(b, b.clone()) for module in self.modules for b in module.buffers()]
        devices = sorted({p.device.index or 0 for p in self.shared if p.device.type == "cuda"})
        try:
            for p, d in zip(self.shared, unflatten(delta, self.shared), strict=True):
                p.data = p.data + d
            with torch.random.fork_rng(devices=devices):
                return _stack(self.closure(), self.task_names).detach()
        finally:
            for p, original in zip(self.shared, originals):
                p.data = original
            for buffer, saved in buffers:
                buffer.copy_(saved)


@dataclass(frozen=True)
class TaskGradients:
    """What was computed for the method on one step: detached [K] losses, the Jacobians it needs, and each
    task's own head gradients when they were computed with the Jacobian (the trainer's per-task graphs)."""

    losses: Tensor
    jacobian: Tensor | None = None
    gramian: Tensor | None = None
    representation_jacobian: Tensor | None = None
    last_shared_jacobian: Tensor | None = None
    head_grads: list[list[Tensor]] | None = None


def _accumulate(parameter: Tensor, gradient: Tensor) -> None:
    gradient = gradient.detach().to(parameter)
    if parameter.grad is None:
        parameter.grad = gradient.clone()
    else:
        parameter.grad += gradient


class MultiTaskBackward:
    """A multi-task method applied to your own model, step after step (see the module docstring).

    Args:
        method: a ``Method`` or a registered name (built with ``options``).
        shared: the shared parameters (the encoder, or its parameters in order).
        tasks: the task-specific parameters: one module / iterable per task (a sequence, or a mapping
            task -> parameters whose keys name the tasks); found in the losses' graph when omitted.
        task_names: the tasks' names (default: the keys of ``tasks``, else ``task0``, ``task1``, ...).
        loss_scale: C of the multi-task objective (a number, ``"K"`` or ``"sqrt(K)"``).
        optimizer: the optimizer of the shared parameters (for the lookahead of IT-MTL).
        last_shared: parameters of the last shared layer (GradNorm); default: the last Linear/Conv layer
            of ``shared`` when it is a module.
        steps_per_epoch: for methods that work per epoch (DWA).
        seed: the method's random stream, as a trainer run with this seed draws it (or give ``generator``).
        jacobian_mode: ``"batched"`` (default) or ``"loop"`` (K backwards, when vmap cannot run the model).
        jacobian_chunk: tasks per batched backward (the Gramian path: per chunk of a pair of chunks).
        gradient_path: ``"jacobian"`` (default) or ``"gramian"``: the K x K Gramian of the task gradients
            accumulated module by module, for methods with ``accepts_gramian`` (or needing ``"gramian"``);
            ``shared`` must then be the module (its forward is hooked from here on; ``remove_hooks`` undoes it).
    """

    def __init__(
        self,
        method: Method | str,
        shared: Parameters,
        tasks: TaskParameters | None = None,
        *,
        task_names: Sequence[str] | None = None,
        loss_scale: LossScale = 1.0,
        optimizer: torch.optim.Optimizer | None = None,
        last_shared: Parameters | None = None,
        steps_per_epoch: int = 1,
        seed: int = 0,
        generator: torch.Generator | None = None,
        jacobian_mode: str = "batched",
        jacobian_chunk: int | None = None,
        gradient_path: str = "jacobian",
        **options: Any,
    ) -> None:
        if isinstance(method, str):
            method = build_method(method, options)
        elif options:
            raise TypeError(f"method options {sorted(options)} are given with a Method instance; pass them to it")
        if not isinstance(method, Method):
            raise TypeError(f"method must be a Method or a registered name, got {type(method).__name__}")
        unknown = set(method.needs) - NEEDS
        if unknown:
            raise ValueError(f"method {method.name!r} needs {sorted(unknown)}, which the engine does not provide")
        if jacobian_mode not in JACOBIAN_MODES or jacobian_mode in ("auto", "per_task"):
            raise ValueError(f"jacobian_mode must be 'batched' or 'loop', got {jacobian_mode!r}")
        if int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
        self.method = method
        self.shared = _parameters(shared, "shared")
        if not self.shared:
            raise ValueError("shared has no parameters")
        if tasks is None:
            self.heads: list[list[Tensor]] | None = None
        else:
            groups: list[Any] = list(tasks.values()) if isinstance(tasks, Mapping | nn.ModuleDict) else list(tasks)
            self.heads = [_parameters(group, "each task's parameters") for group in groups]
            if task_names is None and isinstance(tasks, Mapping | nn.ModuleDict):
                task_names = [str(name) for name in tasks]
        if task_names is None and method.task_names:
            task_names = method.task_names
        self.task_names: tuple[str, ...] | None = tuple(task_names) if task_names is not None else None
        if self.heads is not None and self.task_names is not None and len(self.heads) != len(self.task_names):
            raise ValueError(f"{len(self.heads)} groups of task parameters for {len(self.task_names)} tasks")
        self.given_scale = parse_loss_scale(loss_scale)
        self.loss_scale = 1.0
        self.optimizer = optimizer
        if "last_shared_jacobian" in method.needs:
            if last_shared is None and not isinstance(shared, nn.Module):
                raise ValueError(
                    f"method {method.name!r} needs the last shared layer: give last_shared= (or shared as a module)"
                )
            if last_shared is not None:
                source: Parameters = last_shared
            elif isinstance(shared, Encoder):
                source = shared.last_shared_layer()
            else:
                assert isinstance(shared, nn.Module)
                source = last_weight_layer(shared)
            self.last_shared: list[Tensor] | None = _parameters(source, "last_shared")
            if not self.last_shared or not {id(p) for p in self.last_shared} <= {id(p) for p in self.shared}:
                raise ValueError("last_shared must be parameters of shared (its last layer of weights)")
        else:
            self.last_shared = None
        if "lookahead" in method.needs and optimizer is None:
            raise ValueError(f"method {method.name!r} simulates the optimizer's step: give optimizer=")
        self.steps_per_epoch = int(steps_per_epoch)
        if generator is None:
            generator = torch.Generator().manual_seed(derived_seed(seed, "method"))
        self.generator = generator
        self.mode = jacobian_mode
        self.chunk = jacobian_chunk
        self.gramian_engine: GramianEngine | None = None
        if gradient_path not in ("jacobian", "gramian"):
            raise ValueError(f"gradient_path must be 'jacobian' or 'gramian', got {gradient_path!r}")
        if gradient_path == "gramian" and bool({"jacobian", "gramian"} & method.needs):
            if "gramian" not in method.needs and not method.accepts_gramian:
                raise ValueError(
                    f"gradient_path 'gramian': method {method.name!r} needs the task gradients themselves, not only "
                    "their inner products"
                )
            if jacobian_mode == "loop":
                raise ValueError("gradient_path 'gramian' runs a batched backward; it cannot use jacobian_mode 'loop'")
            if not isinstance(shared, nn.Module):
                raise ValueError("gradient_path 'gramian' hooks the shared module's forward: give shared= as a module")
            self.gramian_engine = GramianEngine([shared], self.shared)
        self.modules = _modules(shared, tasks)
        self.step = 0
        self._closure: LossClosure | None = None
        if self.task_names is not None:
            self._bind(self.task_names)

    def _bind(self, task_names: tuple[str, ...]) -> None:
        if tuple(self.method.task_names) != task_names:
            self.method.setup(task_names)
        self.task_names = task_names
        self.loss_scale = resolve_loss_scale(self.given_scale, len(task_names))

    @property
    def needs(self) -> frozenset[str]:
        return self.method.needs

    # -- the two halves shared with the trainer -------------------------------------------------------------

    def combine(
        self,
        gradients: TaskGradients,
        *,
        step: int | None = None,
        epoch: int | None = None,
        diagnose: bool = True,
        lookahead: Lookahead | None = None,
    ) -> Combination:
        """``method.combine`` on what was computed (step and epoch default to this object's counter)."""
        assert self.task_names is not None
        step = self.step if step is None else step
        return self.method.combine(
            StepInput(
                losses=gradients.losses,
                task_names=self.task_names,
                loss_scale=self.loss_scale,
                step=step,
                epoch=step // self.steps_per_epoch if epoch is None else epoch,
                diagnose=diagnose,
                generator=self.generator,
                jacobian=gradients.jacobian,
                gramian=gradients.gramian,
                representation_jacobian=gradients.representation_jacobian,
                last_shared_jacobian=gradients.last_shared_jacobian,
                lookahead=lookahead,
            )
        )

    def apply(
        self,
        combination: Combination,
        losses: Tensor | None,
        jacobian: Tensor | None,
        head_grads: list[list[Tensor]] | None = None,
        features: Tensor | None = None,
    ) -> Tensor | None:
        """Write the ``combination``'s gradients into ``.grad`` (accumulating); ``losses`` are the [K] losses
        with their graph (None when ``head_grads`` hold every head's gradient), ``features`` bound the search
        for the task parameters when they were not given. Returns the combined shared gradient when it was
        formed explicitly."""
        weights = combination.loss_weights
        if weights is not None and jacobian is None:
            assert losses is not None
            objective = (weights.to(losses) * losses).sum()
            if combination.head_weights is not None:  # shared: sum_k w_k grad L_k; heads: their own weights
                heads = self._every_head(losses, features)
                if heads:
                    head_objective = (combination.head_weights.to(losses) * losses).sum()
                    head_objective.backward(inputs=heads, retain_graph=True)
                # last, as loss.backward(): frees the graph's saved activations before the optimizer step
                objective.backward(inputs=self.shared)
            elif self.heads is None:
                objective.backward()
            else:
                objective.backward(inputs=self.shared + [p for head in self.heads for p in head])
            return None
        if weights is not None:
            assert jacobian is not None
            shared_gradient = weights.to(jacobian) @ jacobian
            head_weights = combination.head_weights
            head_scale = (weights if head_weights is None else head_weights).to(jacobian)
        else:
            assert combination.shared_gradient is not None
            shared_gradient = combination.shared_gradient
            assert self.task_names is not None
            head_scale = torch.full((len(self.task_names),), 1.0 / self.loss_scale, dtype=shared_gradient.dtype)
        if head_grads is not None:
            assert self.heads is not None
            for scale, params, grads in zip(head_scale, self.heads, head_grads):
                for p, g in zip(params, grads):
                    _accumulate(p, scale * g)
        else:
            assert losses is not None
            every_head = self._every_head(losses, features)
            if every_head:
                (head_scale.to(losses) * losses).sum().backward(inputs=every_head)
        if shared_gradient.numel() != sum(p.numel() for p in self.shared):
            raise ValueError(
                f"method {self.method.name!r} returned a shared gradient of {shared_gradient.numel()} entries for "
                f"{sum(p.numel() for p in self.shared)} shared parameters"
            )
        for p, g in zip(self.shared, unflatten(shared_gradient, self.shared)):
            _accumulate(p, g)
        return shared_gradient

    def _every_head(self, losses: Tensor, features: Tensor | None) -> list[Tensor]:
        if self.heads is not None:
            return [p for head in self.heads for p in head]
        return [p for p in graph_leaves(losses, self.shared, features) if p is not self._anchor]

    @property
    def _anchor(self) -> Tensor | None:
        return self.gramian_engine.anchor if self.gramian_engine is not None else None

    def remove_hooks(self) -> None:
        """Take the Gramian path's hooks off the shared module (the object then computes no Gramian)."""
        if self.gramian_engine is not None:
            self.gramian_engine.remove()
            self.gramian_engine = None

    def record_forward(self, recording: bool) -> None:
        """Whether the Gramian path's hooks tap the shared module's forward calls (default: always; the trainer
        taps only its step's forward, not the probes' or evaluations')."""
        if self.gramian_engine is not None:
            self.gramian_engine.recording = recording

    def reset_forward(self) -> None:
        """Forget the shared module's forward calls counted since the last step (Gramian path; call it before
        the step's forward when other forwards with gradients ran in between, e.g. probes)."""
        if self.gramian_engine is not None:
            self.gramian_engine.reset()

    # -- your own loop ------------------------------------------------------------------------------------

    @property
    def uses_gradients(self) -> bool:
        """Whether the method needs task gradients (a Jacobian of some kind), not only the losses."""
        return bool({"jacobian", "gramian", "representation"} & self.method.needs) or self.last_shared is not None

    @property
    def gramian_path(self) -> bool:
        """Whether the method gets the Gramian from the hooks instead of the Jacobian."""
        return self.gramian_engine is not None

    def gradients(self, losses: Tensor, features: Tensor | None, at_features: Tensor | None = None) -> TaskGradients:
        """What the method needs, from the [K] ``losses`` (graph kept) and optionally the shared features and
        the task gradients at them (computed here when not given)."""
        needs = self.method.needs
        representation = jacobian = last = None
        if features is not None and at_features is None and self.uses_gradients:
            at_features = self._at_features(losses, features)
        if "representation" in needs:
            if at_features is None:
                raise ValueError(
                    f"method {self.method.name!r} needs the task gradients at the features: give features="
                )
            representation = at_features.flatten(1)
        gramian = None
        if self.gramian_engine is not None and {"jacobian", "gramian"} & needs:
            if features is not None and at_features is not None:
                gramian = self.gramian_engine.gramian(features, at_features, self.chunk)
            else:
                eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
                gramian = self.gramian_engine.gramian(losses, eye, self.chunk)
        else:
            if "jacobian" in needs or "gramian" in needs:
                jacobian = self._jacobian(losses, features, at_features, self.shared)
            if "gramian" in needs:
                assert jacobian is not None
                gramian = jacobian @ jacobian.T
                if "jacobian" not in needs:
                    jacobian = None
        if self.last_shared is not None:
            last = self._jacobian(losses, features, at_features, self.last_shared)
        return TaskGradients(losses.detach(), jacobian, gramian, representation, last)

    def _at_features(self, losses: Tensor, features: Tensor) -> Tensor:
        """[K, *features.shape]: each task's gradient at the features (one batched backward)."""
        if self.mode == "loop":
            rows = [torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)[0] for loss in losses]
            return torch.stack([torch.zeros_like(features) if r is None else r for r in rows])
        try:
            return jacobian_batched(losses, [features], self.chunk).view(len(losses), *features.shape)
        except RuntimeError:
            self.mode = "loop"
            return self._at_features(losses, features)

    def _jacobian(
        self, losses: Tensor, features: Tensor | None, at_features: Tensor | None, inputs: list[Tensor]
    ) -> Tensor:
        if features is None or at_features is None:
            return joint_jacobian(losses, inputs, self.mode, self.chunk)
        try:
            return encoder_jacobian(features, at_features, inputs, self.mode, self.chunk)
        except RuntimeError:
            if self.mode == "loop":
                raise
            self.mode = "loop"
            return encoder_jacobian(features, at_features, inputs, self.mode, self.chunk)

    def __call__(
        self,
        losses: Losses,
        features: Tensor | None = None,
        *,
        closure: LossClosure | None = None,
        epoch: int | None = None,
    ) -> Combination:
        """Fill ``.grad`` of the shared and task parameters for one step; return the method's combination.

        ``closure()`` recomputes the task losses of this step's batch at the current parameters (for the
        lookahead, and for ``after_step`` when the method needs the losses after the update)."""
        if features is not None and not isinstance(features, Tensor):
            raise TypeError("features must be one tensor (the shared representation); concatenate several")
        if features is not None:
            check_features(features, self.shared)
        if self.task_names is None:
            names = tuple(losses) if isinstance(losses, Mapping) else None
            stacked = _stack(losses)
            self._bind(names if names is not None else tuple(f"task{k}" for k in range(stacked.numel())))
        stacked = _stack(losses, self.task_names)
        if self.heads is not None and len(self.heads) != stacked.numel():
            raise ValueError(f"{stacked.numel()} task losses for {len(self.heads)} groups of task parameters")
        if "lookahead" in self.method.needs and closure is None:
            raise ValueError(f"method {self.method.name!r} evaluates a lookahead: give closure= (the step's losses)")
        self._closure = closure
        if not bool(torch.isfinite(stacked.detach()).all()):
            raise FloatingPointError(f"non-finite task loss: {stacked.detach().tolist()}")
        gradients = self.gradients(stacked, features)
        lookahead = None
        if "lookahead" in self.method.needs:
            assert self.optimizer is not None and closure is not None and self.task_names is not None
            lookahead = ClosureLookahead(self.optimizer, self.shared, closure, self.task_names, self.modules)
        combination = self.combine(gradients, epoch=epoch, lookahead=lookahead)
        self.apply(combination, stacked, gradients.jacobian, features=features)
        self.step += 1
        return combination

    def after_step(self, losses_after: Losses | None = None) -> None:
        """After ``optimizer.step()``: the task losses on the same batch go to the method when it needs them
        (FAMO); ``losses_after`` default to the ``closure`` of the last call. A no-op for other methods."""
        if "post_step_losses" not in self.method.needs:
            return
        if losses_after is None:
            if self._closure is None:
                raise ValueError(
                    f"method {self.method.name!r} needs the losses after the step: give them to after_step, "
                    "or a closure= to the call"
                )
            with torch.no_grad():
                losses_after = self._closure()
        self.method.after_step(_stack(losses_after, self.task_names).detach())

    def state_dict(self) -> dict[str, Any]:
        """The method's state, the step counter and the random stream (to resume a loop)."""
        return {"method": self.method.state_dict(), "step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def backward(
    losses: Losses,
    shared: Parameters,
    features: Tensor | None = None,
    *,
    method: Method | str = "umtg",
    tasks: TaskParameters | None = None,
    loss_scale: LossScale = 1.0,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Combination:
    """One step of ``method`` into ``.grad`` (like ``loss.backward()``; see ``MultiTaskBackward``).

    For a method that keeps state across steps (GradNorm, UW, DWA, FAMO, IMTL, IT-MTL, GradVac, ...) build a
    ``MultiTaskBackward`` once and call it every step; by name such a method is refused here. Random draws use
    ``generator``, by default one seeded from torch's global generator."""
    if isinstance(method, str):
        method = build_method(method, options)
        count = _stack(losses).numel()
        method.setup(tuple(losses) if isinstance(losses, Mapping) else tuple(f"task{k}" for k in range(count)))
        if method.state_dict():
            raise ValueError(
                f"method {method.name!r} keeps state across steps: create mtlscope.MultiTaskBackward({method.name!r}, "
                "...) once and call it every step"
            )
    elif options:
        raise TypeError(f"method options {sorted(options)} are given with a Method instance; pass them to it")
    if method.needs & {"lookahead", "post_step_losses"}:
        raise ValueError(
            f"method {method.name!r} works across the optimizer step: create mtlscope.MultiTaskBackward once "
            "and call it (and its after_step) every step"
        )
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    return MultiTaskBackward(method, shared, tasks, loss_scale=loss_scale, generator=generator)(losses, features)
