"""The K x K Gramian ``J Jᵀ`` of the task gradients on the shared parameters, without ever holding J
(docs/methods.md, "The Gramian path").

Methods whose update depends on the task gradients only through their inner products (MGDA, IMTL-G,
Aligned-MTL, CAGrad, Nash-MTL, PCGrad, GradVac) need only ``G = J Jᵀ`` = ``Σ_modules J_m J_mᵀ``, where ``J_m``
[K, p_m] holds the task gradients on the parameters of one module. ``GramianEngine`` accumulates that sum
module by module:

- a forward hook on every shared module that owns parameters directly passes the module's output through an
  identity ``torch.autograd.Function`` (``_Tap``); the module's whole subtree of parameters is its block (its
  children are not hooked separately);
- the Gramian pass is a batched vector-Jacobian product (``torch.func.vmap`` over ``torch.autograd.grad``) of
  the output with m task cotangents at once, which asks autograd only for the gradient of a scalar *anchor*
  that every tap takes as an extra input: autograd then crosses every hooked module (computing the gradients
  with respect to activations, as a backward does) but never the gradients with respect to the parameters;
- each tap's backward receives the [m, ...] gradient at its module's output (``_Accumulate``, whose ``vmap``
  rule sees the whole batch of cotangents), computes that module's block [m, p_m] by a batched
  vector-Jacobian product of its own output on its own parameters (the module's part of the graph, kept
  from the forward), adds ``block @ blockᵀ`` into the Gramian and frees the block. A module called several
  times in one forward gets the sum of its calls' blocks before the product (the cross terms count);
- a plain ``nn.Linear``/``nn.Conv2d`` called once instead adds its part from its input and the [m, ...]
  output gradients by a closed form (``mtlscope.engine.layer_gramian``) where that holds fewer elements
  than its block (few rows against many parameters: deep convolution stages), never forming the block; a
  BatchNorm always does; a plain ``nn.Conv2d`` forms its block without autograd (``conv2d_block``);
- the hooks re-attach each BatchNorm and Conv2d call's output through backwards that ``vmap`` batches
  without large copies (``mtlscope.engine.lean_backward``; the engine tells them, as ``PassState``, that
  the pass needs no parameter gradients and a block no activation gradients).

The largest tensor of the pass is the larger of m x (one module's parameters) and m x (one activation),
less where the closed forms replace the largest blocks; no [K, P] tensor is formed. With ``chunk`` = m < K
the tasks are processed in chunks: the pass runs on every pair of chunks (both chunks' cotangents at once),
giving the diagonal and the off-diagonal blocks of G — about K/m times the work of one pass over all K
tasks, for m/K of its activation memory.

Requirements on the model (as TorchJD's ``autogram`` engine): parameters are used only inside the forward of
the module that owns them (a parent reading a child's weight directly is not seen), module outputs are
tensors or tuples/lists/dicts of tensors, and the backward runs under ``torch.func.vmap`` (the batched
Jacobian mode's requirement). The shared parameters must be exactly the parameters of the hooked modules
(checked when the engine is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from mtlscope.engine.layer_gramian import LAYER_FORMS, LayerForm, conv2d_block, has_closed_form, layer_gramian
from mtlscope.engine.lean_backward import batchnorm_statistics, reattach
from mtlscope.methods.base import Method


class _Accumulate(torch.autograd.Function):
    """Identity on the gradient at a module's output; adds the module's Gramian block as a side effect. Its
    ``vmap`` rule receives the whole [m, ...] batch of task cotangents."""

    @staticmethod
    def forward(tap: _ModuleTap, call: _Call, *grads: Tensor) -> tuple[Tensor, ...]:
        tap.add([g.unsqueeze(0) for g in grads], call)
        return tuple(g.clone() for g in grads)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(info: Any, in_dims: Any, tap: _ModuleTap, call: _Call, *grads: Tensor) -> Any:
        batched = [
            g.movedim(d, 0) if d is not None else g.unsqueeze(0).expand(info.batch_size, *g.shape)
            for g, d in zip(grads, in_dims[2:])
        ]
        tap.add(batched, call)
        return tuple(grads), tuple(in_dims[2:])


class _Tap(torch.autograd.Function):
    """Identity on a module's outputs (and a zero gradient for the anchor); in the Gramian pass its backward
    hands the gradient at the outputs to the module's ``_ModuleTap``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(anchor: Tensor, tap: _ModuleTap, call: _Call, *outputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.detach() for t in outputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.tap, ctx.call = inputs[1], inputs[2]
        ctx.anchor_like = inputs[0]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        if ctx.tap.engine.inside_block:  # a module's block is over its own call: earlier calls count separately
            return (None, None, None, *(None for _ in grads))
        if ctx.tap.engine.accumulating:
            grads = _Accumulate.apply(ctx.tap, ctx.call, *grads)
        anchor = torch.zeros_like(ctx.anchor_like) if ctx.needs_input_grad[0] else None
        return (anchor, None, None, *grads)


class _Call:
    """One forward call of a hooked module: its outputs (the module's part of the graph hangs on them) and, for
    a layer with a closed form, its input and the input's version (an input modified in place since the call
    is not used), and for a BatchNorm in training mode the batch statistics it normalized with."""

    __slots__ = ("input", "outputs", "statistics", "version")

    def __init__(
        self,
        outputs: list[Tensor],
        layer_input: Tensor | None = None,
        statistics: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.outputs = outputs
        self.input = layer_input
        self.statistics = statistics
        self.version = layer_input._version if layer_input is not None else 0

    def unchanged_input(self) -> Tensor | None:
        """The call's input, if it has not been modified in place since the call."""
        return self.input if self.input is not None and self.input._version == self.version else None


class _ModuleTap:
    """A hooked module: its parameters, its forward calls since the last reset, and the pending block sum of a
    module called several times."""

    def __init__(self, engine: GramianEngine, name: str, module: nn.Module) -> None:
        self.engine = engine
        self.name = name
        self.module = module
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        #: a Linear/Conv2d/BatchNorm whose weight is trained: its part of the Gramian may come from ``layer_gramian``
        self.closed_form = has_closed_form(module) and any(p is module.weight for p in self.parameters)
        self.calls = 0
        self.received = 0
        self.pending: list[Tensor] | None = None
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        flat, spec = tree_flatten(output)
        positions = [i for i, t in enumerate(flat) if isinstance(t, Tensor) and t.requires_grad]
        if not positions or self.engine.accumulating or not self.engine.recording:
            return output
        self.calls += 1
        raw = [flat[i] for i in positions]
        # the input is kept only where the output is the layer's own (no earlier forward hook changed it)
        first_hook = next(iter(module._forward_hooks)) == self.handle.id
        usable = self.closed_form and first_hook and len(args) == 1 and isinstance(args[0], Tensor)
        layer_input = args[0] if usable else None
        statistics = None
        if layer_input is not None and len(raw) == 1 and raw[0] is output:
            statistics = batchnorm_statistics(module, output)
            raw = [reattach(module, layer_input, output, self.engine)]  # backwards that vmap batches leanly
        tapped = _Tap.apply(self.engine.anchor, self, _Call(raw, layer_input, statistics), *raw)
        for i, t in zip(positions, tapped):
            flat[i] = t
        return tree_unflatten(flat, spec)

    def add(self, grads: list[Tensor], call: _Call) -> None:
        """Add this call's block [m, p] (the gradients ``grads`` [m, *output] pulled back to the parameters): by the
        layer's closed form, by ``conv2d_block`` for a Conv2d, or by autograd."""
        layer_input = call.unchanged_input()
        if self.calls == 1 and layer_input is not None and len(grads) == 1:
            closed = layer_gramian(self.module, layer_input, grads[0], self.engine.layer_form, call.statistics)
            if closed is not None:
                self.received += 1
                self.engine.add(closed)
                return
        # the block [m, p] stays in pieces, one per parameter tensor: no concatenated copy of it
        direct = None
        if isinstance(self.module, nn.Conv2d) and layer_input is not None and len(grads) == 1:
            direct = conv2d_block(self.module, layer_input, grads[0])
        pieces = direct if direct is not None else self._block_by_autograd(grads, call)
        self.received += 1
        if self.calls > 1:  # the module's gradient is the sum over its calls: square the sum
            if self.pending is not None:
                pieces = [a + b for a, b in zip(self.pending, pieces)]
            if self.received < self.calls:
                self.pending = pieces
                return
            self.pending = None
        gramian = pieces[0] @ pieces[0].T
        for piece in pieces[1:]:
            gramian += piece @ piece.T
        del pieces
        self.engine.add(gramian)

    def _block_by_autograd(self, grads: list[Tensor], call: _Call) -> list[Tensor]:
        """The call's block by a batched backward of its outputs on the module's parameters."""
        count = grads[0].shape[0]
        self.engine.inside_block = True
        try:
            parameter_grads = torch.autograd.grad(
                call.outputs,
                self.parameters,
                grads,
                retain_graph=True,
                is_grads_batched=True,
                allow_unused=True,
            )
        finally:
            self.engine.inside_block = False
        return [
            (g if g is not None else torch.zeros(count, *p.shape, dtype=p.dtype, device=p.device)).reshape(count, -1)
            for g, p in zip(parameter_grads, self.parameters)
        ]


def owning_modules(modules: Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    """The modules to hook under ``modules``: the topmost ones that own trainable parameters directly (each
    covers its whole subtree), with their qualified names."""
    found: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module) -> None:
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            found.append((name or type(module).__name__, module))
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    for module in modules:
        visit("", module)
    return found


class GramianEngine:
    """Hooks on the modules that hold the shared parameters; ``gramian`` computes ``J Jᵀ`` of the task
    gradients on them from the task cotangents of one tensor of the graph (see the module docstring).

    Args:
        modules: the shared modules (an encoder), hooked once here; ``remove`` takes the hooks off.
        parameters: the shared parameters the Gramian is over: they must be exactly those of the modules.
        layer_form: how a Linear/Conv2d module called once adds its part: ``auto`` (the closed form from its
            input and output gradients where it holds fewer elements than the block, ``prefers_closed_form``),
            ``closed`` or ``block``.
    """

    def __init__(
        self, modules: Sequence[nn.Module], parameters: Sequence[Tensor], layer_form: LayerForm = "auto"
    ) -> None:
        if layer_form not in LAYER_FORMS:
            raise ValueError(f"layer_form must be one of {', '.join(LAYER_FORMS)}, got {layer_form!r}")
        #: How Linear/Conv2d modules add their part (``mtlscope.engine.layer_gramian``): by the size rule,
        #: always by the closed form, or always by their block.
        self.layer_form: LayerForm = layer_form
        self.accumulating = False
        self.inside_block = False
        #: Whether the hooks tap the modules' forward calls (the trainer taps only its step's forward).
        self.recording = True
        self.taps: list[_ModuleTap] = []
        hooked = owning_modules(modules)
        covered = {id(p) for _, m in hooked for p in m.parameters() if p.requires_grad}
        wanted = {id(p) for p in parameters}
        if covered != wanted:
            missing = len(wanted - covered)
            extra = len(covered - wanted)
            raise ValueError(
                "the Gramian path needs the shared parameters to be exactly the trainable parameters of the shared "
                f"modules ({missing} shared tensors are outside them, {extra} of their tensors are not shared)"
            )
        first = next(iter(parameters))
        self.anchor = torch.zeros((), dtype=first.dtype, device=first.device, requires_grad=True)
        self._gramian: Tensor | None = None
        self.taps = [_ModuleTap(self, name, module) for name, module in hooked]

    @property
    def activations_needed(self) -> bool:
        """For the re-attached backwards (``mtlscope.engine.lean_backward.PassState``): a module's block needs no
        activation gradient."""
        return not self.inside_block

    @property
    def parameters_needed(self) -> bool:
        """The pass asks autograd for no parameter gradient (only a module's block does)."""
        return not self.accumulating or self.inside_block

    def remove(self) -> None:
        """Take the hooks off the modules."""
        for tap in self.taps:
            tap.handle.remove()
        self.taps = []

    def reset(self) -> None:
        """Forget the forward calls counted so far (the engine counts them to pair a module's several calls)."""
        for tap in self.taps:
            tap.calls = tap.received = 0
            tap.pending = None

    def add(self, product: Tensor) -> None:
        assert self._gramian is not None
        self._gramian += product.to(self._gramian.dtype)

    def _pass(self, output: Tensor, cotangents: Tensor) -> Tensor:
        """The Gramian of the [m] tasks whose cotangents [m, *output.shape] are given, from one batched pass."""
        count = cotangents.shape[0]
        self._gramian = torch.zeros(count, count, dtype=cotangents.dtype, device=cotangents.device)
        for tap in self.taps:
            tap.received = 0
            tap.pending = None
        self.accumulating = True
        try:
            torch.func.vmap(
                lambda v: torch.autograd.grad(output, self.anchor, v, retain_graph=True, allow_unused=True)[0]
            )(cotangents)
        finally:
            self.accumulating = False
        unfinished = [tap.name for tap in self.taps if tap.calls and tap.received != tap.calls]
        if unfinished:
            raise ValueError(
                f"the Gramian path saw a forward call of module {unfinished[0]!r} whose output does not reach the "
                "task losses (a module output used outside the losses, or a forward since the last step)"
            )
        gramian, self._gramian = self._gramian, None
        return gramian

    def gramian(self, output: Tensor, cotangents: Tensor, chunk: int | None = None) -> Tensor:
        """[K, K] Gramian of the K vector-Jacobian products ``cotangents[k]`` [K, *output.shape] of ``output`` on
        the shared parameters (graph kept); the forward calls counted are then forgotten.

        With ``chunk`` = m < K the tasks are processed by pairs of chunks of m (see the module docstring)."""
        num = cotangents.shape[0]
        size = num if chunk is None or chunk >= num else max(1, int(chunk))
        try:
            if size == num:
                return self._pass(output, cotangents)
            starts = list(range(0, num, size))
            result = torch.zeros(num, num, dtype=cotangents.dtype, device=cotangents.device)
            for a, first in enumerate(starts):
                for second in starts[a + 1 :]:
                    rows = torch.cat(
                        [torch.arange(first, min(num, first + size)), torch.arange(second, min(num, second + size))]
                    ).to(cotangents.device)
                    part = self._pass(output, cotangents[rows])
                    result[rows[:, None], rows[None, :]] = part
            return result
        finally:
            self.reset()


GradientPath = Literal["auto", "jacobian", "gramian"]
GRADIENT_PATHS: tuple[str, ...] = get_args(GradientPath)
#: ``training.jacobian_budget_mb``: above this size of the K x P Jacobian, ``auto`` takes the Gramian path.
DEFAULT_JACOBIAN_BUDGET_MB = 1024.0


def couples_examples(module: nn.Module) -> bool:
    """Whether ``module`` holds a layer whose training-mode output for one example depends on the other
    examples of the batch (BatchNorm's batch statistics): then one graph of a multi-input batch (the Gramian
    path) and per-task graphs (the ``per_task`` Jacobian mode) give different updates."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def resolve_gradient_path(
    path: str,
    method: Method,
    num_tasks: int,
    num_parameters: int,
    itemsize: int,
    budget_mb: float = DEFAULT_JACOBIAN_BUDGET_MB,
    jacobian_mode: str = "auto",
    per_task_differs: bool = False,
) -> str:
    """``"jacobian"`` or ``"gramian"``: how the task gradients of ``method`` on the shared parameters are
    computed (``training.gradient_path``). ``auto`` takes the Gramian path for a method that can use it
    (``accepts_gramian``, or needs only ``"gramian"``) when the [K, P] Jacobian would take more than
    ``budget_mb`` MiB; a method that needs no shared task gradients gets ``"jacobian"`` (nothing is computed).

    ``auto`` never changes what the update is: with ``per_task_differs`` (the Jacobian path runs per-task
    graphs and the encoder has batch statistics, ``couples_examples``: the one-graph Gramian path would be a
    different update) it stays on the Jacobian path whatever the budget; ``gramian`` can still be forced."""
    if path not in GRADIENT_PATHS:
        raise ValueError(f"training.gradient_path must be one of {', '.join(GRADIENT_PATHS)}, got {path!r}")
    if not (isinstance(budget_mb, int | float) and not isinstance(budget_mb, bool) and budget_mb > 0):
        raise ValueError(f"training.jacobian_budget_mb must be a number > 0, got {budget_mb!r}")
    needs = method.needs
    uses_gramian = "gramian" in needs or ("jacobian" in needs and method.accepts_gramian)
    if not uses_gramian:
        if path == "gramian" and "jacobian" in needs:
            raise ValueError(
                f"training.gradient_path 'gramian': method {method.name!r} needs the task gradients themselves, "
                "not only their inner products; use 'jacobian' or 'auto'"
            )
        return "jacobian"
    if path == "gramian" and jacobian_mode == "loop":
        raise ValueError(
            "training.gradient_path 'gramian' runs a batched backward (torch.func.vmap); it cannot be combined with "
            "training.jacobian_mode 'loop'"
        )
    if path == "auto":
        too_large = num_tasks * num_parameters * itemsize > budget_mb * 2**20
        return "gramian" if too_large and jacobian_mode != "loop" and not per_task_differs else "jacobian"
    return path
