"""Inter-task affinity (transference): Fifty et al., "Measuring and Harnessing Transference in Multi-Task
Learning", arXiv:2010.15413, 2020, eq. 1 (§3.1) and its first-order approximation (§3.2).

On a training batch, the affinity of source task i onto target task j is

    Z_{i->j} = 1 - L_j(theta + Delta_i, phi_j) / L_j(theta, phi_j),

where ``Delta_i`` is the change the run's optimizer would make to the shared parameters from task i's gradient
alone, simulated exactly from its current state (``mtlscope.engine.lookahead.optimizer_update``: momentum,
Adam moments and bias correction included; the real optimizer is untouched). Positive Z: a step for task i
lowers task j's loss. The first-order approximation ``Z_{i->j} ~ -<grad L_j, Delta_i> / L_j`` (SGD:
``lr <g_j, g_i> / L_j``) needs no extra forward pass. Heads stay fixed by default; ``update_heads=True``
moves head j by its own simulated update first, as in Fifty et al.'s eq. 1.

- ``affinity(model, setting, batch, optimizer)`` computes both K x K matrices for one batch, any
  ``MultiTaskModel`` and SGD/Adam/AdamW optimizer; ``A[source, target] = Z_{source -> target}``, the
  diagonal is the self-affinity.
- ``task_affinity(losses, shared, optimizer)`` does the same for any model: ``losses()`` computes the K task
  losses of one batch at the current parameters, ``shared`` are the shared parameters (a module or tensors);
  heads stay fixed.
- The ``affinity`` probe does it on the training step's own batch, before the update, every
  ``every_steps`` steps, and reports at checkpoints the mean matrices over the steps
  since its previous report (``affinity/<source>``, per epoch with the default checkpoints) and over all of
  training so far (``affinity_overall/<source>``), plus the same with ``_first_order``. Records have the
  *target* task in the ``task`` column and the source in the metric name;
  ``mtlscope.analysis.affinity_matrix`` turns them back into ``A[source, target]``.

Mode (option ``batchnorm``, all three): the forwards run in eval mode (no dropout) except for BatchNorm, which by
default (``"batch"``) normalizes with the statistics of the batch, as the training step does and as Fifty et
al.'s code computes the lookahead (in their training step: Taskonomy, ``model.train()``; CelebA, the moments of
the batch); running statistics and every other buffer are restored exactly. ``"running"`` uses the running
statistics (plain eval mode, like the other probes): early in training they are still near their
initialization, and the shared gradient and the lookahead then say little about training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from mtlscope.engine.backward import ClosureLookahead
from mtlscope.engine.gradients import JacobianMode, forward, resolve_mode, shared_jacobian
from mtlscope.engine.hooks import BATCHNORM_STATISTICS, BatchNormStatistics
from mtlscope.engine.lookahead import ModelLookahead, optimizer_update
from mtlscope.engine.probe_budget import FORWARD, jacobian_units, training_units_per_step
from mtlscope.engine.sampling import Batch
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.options import PositiveInt
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues, StepContext, probe_mode
from mtlscope.probes.similarity import task_gradients
from mtlscope.settings.setting import Setting

AffinityMode = Literal["both", "exact", "first_order"]
AFFINITY_MODES: tuple[str, ...] = get_args(AffinityMode)


@dataclass(frozen=True)
class AffinityResult:
    """[K, K] matrices ``A[source, target]`` for one batch (``None`` when not computed) and the [K] losses."""

    exact: Tensor | None
    first_order: Tensor | None
    losses: Tensor


def affinity(
    model: MultiTaskModel,
    setting: Setting,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    exact: bool = True,
    first_order: bool = True,
    update_heads: bool = False,
    jacobian_mode: str = "auto",
    batchnorm: str = "batch",
) -> AffinityResult:
    """Inter-task affinities on ``batch`` for the model's current parameters and the optimizer's state.

    Runs the model in eval mode (``probe_mode``: no dropout) with BatchNorm normalizing by the batch's
    statistics as in training (``batchnorm="batch"``, the default) or by its running statistics
    (``"running"``), and restores its mode; leaves the model, its buffers (running statistics included),
    ``.grad``, the optimizer state and the global RNG untouched. Exact costs K forward passes after the
    Jacobian; first-order costs nothing more.
    """
    _check_batchnorm(batchnorm)
    jacobian_mode = _one_graph_for_batch_statistics(model, setting, jacobian_mode, batchnorm)
    with probe_mode(model, batchnorm):
        _, jacobian = shared_jacobian(model, setting, batch, jacobian_mode)
        jacobian = jacobian.detach()
        lookahead = ModelLookahead(model, setting, batch, optimizer)
        head_deltas, head_change = _head_updates(model, setting, batch, optimizer) if update_heads else (None, None)
        base = lookahead.losses(torch.zeros_like(jacobian[0]))
        deltas = torch.stack([lookahead.update(row) for row in jacobian])  # [K, P]: Delta_i
        rows = [lookahead.losses(delta, head_deltas) for delta in deltas] if exact else []
    exact_matrix = first_order_matrix = None
    if exact:
        exact_matrix = 1.0 - torch.stack(rows) / base.unsqueeze(0)
    if first_order:
        # -(<grad_theta L_j, Delta_i> + <grad_phi_j L_j, Delta phi_j>) / L_j; the head term only when heads move
        change = deltas @ jacobian.T  # [i, j] = <Delta_i, g_j>
        if head_change is not None:
            change = change + head_change.to(change).unsqueeze(0)
        first_order_matrix = -change / base.unsqueeze(0)
    return AffinityResult(exact_matrix, first_order_matrix, base.detach())


TaskLosses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor


def task_affinity(
    losses: Callable[[], TaskLosses],
    shared: nn.Module | Iterable[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    exact: bool = True,
    first_order: bool = True,
    modules: Sequence[nn.Module] = (),
    batchnorm: str = "batch",
) -> AffinityResult:
    """Inter-task affinities (Fifty et al. 2020, eq. 1) for any model, on one batch.

    ``losses()`` returns the K >= 2 task losses of the batch (a sequence, a mapping task -> loss, or a [K]
    tensor) computed at the current parameters; it is called once with grad, for the task gradients on
    ``shared``, and once per source task without grad, with the shared parameters moved by ``Delta_i``, the
    update ``optimizer`` would make from task i's gradient alone (simulated from its state; SGD, Adam, AdamW).
    Task-specific parameters stay fixed. ``A[source, target]`` as for ``affinity``. ``shared`` (when a module)
    and ``modules`` run in eval mode (``probe_mode``; no dropout) with their BatchNorm layers on the batch's
    statistics (``batchnorm="batch"``, default) or on their running statistics (``"running"``), and their buffers
    are restored; parameters, ``.grad``, the optimizer state and the global RNG are left untouched.
    """
    _check_batchnorm(batchnorm)
    if not callable(losses):
        raise ValueError("losses must be a function returning the task losses of one batch (it is called again)")
    if not (exact or first_order):
        raise ValueError("nothing to compute: exact and first_order are both False")
    if isinstance(shared, Tensor):
        raise ValueError("shared must be a module or an iterable of parameters, not one tensor")
    params = list(shared.parameters()) if isinstance(shared, nn.Module) else list(shared)
    if not params or any(not isinstance(p, Tensor) or not p.requires_grad for p in params):
        raise ValueError("shared must hold parameters that require grad")
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in grouped for p in params):
        raise ValueError("every shared parameter must be in the optimizer's parameter groups (its update is simulated)")
    evaluated = [m for m in [shared, *modules] if isinstance(m, nn.Module)]
    with ExitStack() as stack:
        for module in evaluated:
            stack.enter_context(probe_mode(module, batchnorm))
        with torch.enable_grad():
            values = losses()
        names = list(values) if isinstance(values, Mapping) else None
        rows = list(values.values()) if isinstance(values, Mapping) else values
        jacobian = task_gradients(rows, params).detach()
        base = torch.stack([torch.as_tensor(v).reshape(()) for v in rows]).detach()
        if len(base) < 2:
            raise ValueError(f"affinity needs at least two tasks; losses() returned {len(base)} loss")
        task_names = names or [f"task{k}" for k in range(len(base))]
        lookahead = ClosureLookahead(optimizer, params, losses, task_names, evaluated)
        deltas = torch.stack([lookahead.update(row) for row in jacobian])  # [K, P]: Delta_i
        moved = [lookahead.losses(delta) for delta in deltas] if exact else []
    exact_matrix = 1.0 - torch.stack(moved) / base.unsqueeze(0) if exact else None
    first_order_matrix = -(deltas @ jacobian.T) / base.unsqueeze(0) if first_order else None
    return AffinityResult(exact_matrix, first_order_matrix, base)


def _check_batchnorm(batchnorm: str) -> None:
    if batchnorm not in BATCHNORM_STATISTICS:
        raise ValueError(
            f"affinity: batchnorm must be one of {', '.join(BATCHNORM_STATISTICS)} (the statistics BatchNorm "
            f"normalizes with), got {batchnorm!r}"
        )


def _one_graph_for_batch_statistics(model: nn.Module, setting: Setting, jacobian_mode: str, batchnorm: str) -> str:
    """The Jacobian mode to use: in the multi-input layout, ``per_task`` (what ``auto`` means there) passes each
    task's examples through the encoder alone, so BatchNorm on batch statistics would normalize the gradients by
    per-task statistics and the lookahead losses by those of the whole batch; one graph (``batched``) keeps the
    two consistent. Models without such layers, and ``batchnorm="running"``, keep the mode."""
    if batchnorm != "batch" or not any(isinstance(m, _NormBase) for m in model.modules()):
        return jacobian_mode
    if resolve_mode(jacobian_mode, setting) != "per_task":
        return jacobian_mode
    if jacobian_mode == "per_task":
        raise ValueError(
            "affinity: jacobian_mode 'per_task' normalizes each task's examples alone, the lookahead the whole "
            "batch; with BatchNorm on batch statistics use jacobian_mode auto, batched or loop (or batchnorm running)"
        )
    return "batched"


def _head_updates(
    model: MultiTaskModel, setting: Setting, batch: Batch, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, list[Tensor]], Tensor]:
    """Each head's simulated update from its own task's gradient on ``batch``, and [K] ``<grad, update>``."""
    graph = forward(model, setting, batch)
    heads = {task: list(model.task_parameters(task)) for task in setting.task_names}
    every = [p for params in heads.values() for p in params]
    grads = torch.autograd.grad(graph.losses.sum(), every, allow_unused=True)
    out, inner, start = {}, [], 0
    for task, params in heads.items():
        own = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[start : start + len(params)], params)]
        out[task] = optimizer_update(optimizer, params, own)
        inner.append(sum((g * d).sum() for g, d in zip(own, out[task])))
        start += len(params)
    return out, torch.stack([torch.as_tensor(value) for value in inner])


class _Mean:
    """Running mean of K x K matrices, entry by entry (non-finite entries are left out)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count: Tensor | None = None

    def add(self, matrix: Tensor) -> None:
        matrix = matrix.detach().double().cpu()
        finite = torch.isfinite(matrix)
        if self.total is None or self.count is None:
            self.total, self.count = torch.zeros_like(matrix), torch.zeros_like(matrix)
        self.total += torch.where(finite, matrix, torch.zeros_like(matrix))
        self.count += finite.double()

    def value(self) -> Tensor | None:
        if self.total is None or self.count is None or not bool((self.count > 0).any()):
            return None
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), torch.full_like(self.total, torch.nan))

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = state.get("total"), state.get("count")


class AffinityProbe(Probe):
    """The ``affinity`` probe: affinity matrices every ``every_steps`` training steps, reported at checkpoints."""

    name = "affinity"
    observes_steps = True
    default_every_steps = 50

    def __init__(
        self, every_steps: int | None, mode: str, update_heads: bool, jacobian_mode: str, batchnorm: str = "batch"
    ) -> None:
        if (every_steps is not None and every_steps < 1) or mode not in AFFINITY_MODES:
            raise ValueError(
                f"affinity: every_steps must be >= 1 and mode one of {', '.join(AFFINITY_MODES)}, "
                f"got every_steps={every_steps}, mode={mode!r}"
            )
        _check_batchnorm(batchnorm)
        self.batchnorm = batchnorm
        if every_steps is not None:
            self.every_steps = every_steps
        self.mode, self.update_heads, self.jacobian_mode = mode, update_heads, jacobian_mode
        self.kinds = [kind for kind in ("exact", "first_order") if mode in (kind, "both")]
        self.window = {kind: _Mean() for kind in self.kinds}
        self.overall = {kind: _Mean() for kind in self.kinds}

    def before_step(self, context: StepContext) -> None:
        if context.step % self.every_steps != 0:
            return
        result = affinity(
            context.model,
            context.setting,
            context.batch,
            context.optimizer,
            exact="exact" in self.kinds,
            first_order="first_order" in self.kinds,
            update_heads=self.update_heads,
            jacobian_mode=self.jacobian_mode,
            batchnorm=self.batchnorm,
        )
        self.add(result)

    def add(self, result: AffinityResult) -> None:
        """Count one step's matrices into the means (also for loops other than the trainer's: ``mtlscope.rl``)."""
        for kind in self.kinds:
            matrix = result.exact if kind == "exact" else result.first_order
            assert matrix is not None
            self.window[kind].add(matrix)
            self.overall[kind].add(matrix)

    def __call__(self, context: ProbeContext) -> ProbeValues:
        return self.report(context.setting.task_names)

    def report(self, names: Sequence[str]) -> ProbeValues:
        """The mean matrices since the last report and overall, as records by target task; starts a new window."""
        values: ProbeValues = {}
        for kind in self.kinds:
            suffix = "" if kind == "exact" else "_first_order"
            for label, mean in (
                (f"affinity{suffix}", self.window[kind]),
                (f"affinity{suffix}_overall", self.overall[kind]),
            ):
                matrix = mean.value()
                if matrix is None:
                    continue
                for i, source in enumerate(names):
                    for j, target in enumerate(names):
                        values.setdefault(target, {})[f"{label}/{source}"] = float(matrix[i, j])
            self.window[kind] = _Mean()
        return values

    def cost(self, setting: Setting, batch_size: int) -> float:
        """One observed step: the task gradients on the step's batch and, for the exact matrix, K + 1 forwards
        of the batch (the loss before and after each task's lookahead update)."""
        exact = "exact" in self.kinds
        forwards = (len(setting.tasks) + 1) * FORWARD * training_units_per_step(setting, batch_size) if exact else 0.0
        return jacobian_units(setting, batch_size) + forwards

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": {kind: mean.state_dict() for kind, mean in self.window.items()},
            "overall": {kind: mean.state_dict() for kind, mean in self.overall.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind in self.kinds:
            self.window[kind].load_state_dict(state.get("window", {}).get(kind, {}))
            self.overall[kind].load_state_dict(state.get("overall", {}).get(kind, {}))


@PROBES.register("affinity", "inter-task affinity matrices, exact lookahead and first-order (Fifty et al., eq. 1)")
def build_probe(
    *,
    every_steps: PositiveInt | None = None,
    mode: AffinityMode = "both",
    update_heads: bool = False,
    jacobian_mode: JacobianMode = "auto",
    batchnorm: BatchNormStatistics = "batch",
) -> Probe:
    return AffinityProbe(every_steps, mode, update_heads, jacobian_mode, batchnorm)
