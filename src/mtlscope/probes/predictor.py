"""What a checkpoint probe measures (Mueller et al., TMLR 2025, App. B): task k's predictor on a fixed probe subset.

- The *predictor* of task k is the shared encoder followed by head k (``TaskPredictor``), so single-task
  and multi-task values are comparable; ``parameters="shared"`` restricts a probe to the encoder's
  parameters.
- The *probe subset* of task k is the first ``subset`` (default 2048) examples of its training split: fixed
  by the setting's split seed, hence identical across the single-task and multi-task runs of a setting.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from torch import Tensor, nn

from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes.base import Probe, ProbeContext, ProbeValues
from mtlscope.settings.setting import Setting
from mtlscope.settings.task import Split, Task

ParameterChoice = Literal["predictor", "shared"]
PARAMETER_CHOICES: tuple[str, ...] = get_args(ParameterChoice)
DEFAULT_SUBSET = 2048


class TaskPredictor(nn.Module):
    """``head_k(encoder(x))`` as a module of its own (it shares the model's parameters; it copies nothing)."""

    def __init__(self, model: MultiTaskModel, task: str) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.head = model.heads[task]

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(inputs))
        return out


def probe_parameters(model: MultiTaskModel, task: str, choice: str) -> list[nn.Parameter]:
    """The parameters a probe of ``task`` measures: the predictor's (default) or the shared encoder's."""
    if choice not in PARAMETER_CHOICES:
        raise ValueError(f"probe option parameters must be one of {', '.join(PARAMETER_CHOICES)}, got {choice!r}")
    return list(model.shared_parameters()) if choice == "shared" else model.predictor_parameters(task)


def probe_subset(task: Task, subset: int) -> Split:
    """The first ``subset`` training examples of ``task`` (all of them if it has fewer)."""
    if subset < 1:
        raise ValueError(f"probe option subset must be >= 1, got {subset}")
    return task.train.head(subset)


@dataclass(frozen=True)
class TaskView:
    """What a checkpoint probe measures for one task: its predictor, probe subset and parameters."""

    task: Task
    predictor: TaskPredictor
    data: Split
    parameters: list[nn.Parameter]


class TaskProbe(Probe):
    """Base of the probes that measure every task's predictor on its probe subset at each checkpoint.

    Validates the common options ``subset`` and ``parameters``; subclasses implement ``measure``.
    """

    def __init__(self, subset: int, parameters: str) -> None:
        if subset < 1 or parameters not in PARAMETER_CHOICES:
            raise ValueError(
                f"{self.name}: subset must be >= 1 and parameters one of {', '.join(PARAMETER_CHOICES)}, "
                f"got subset={subset}, parameters={parameters!r}"
            )
        self.subset, self.parameters = subset, parameters

    def subset_sizes(self, setting: Setting) -> list[int]:
        """The number of examples each task's probe subset holds (for ``cost``)."""
        return [min(self.subset, len(task.train)) for task in setting.tasks]

    def views(self, context: ProbeContext) -> Iterator[TaskView]:
        for task in context.setting.tasks:
            yield TaskView(
                task=task,
                predictor=TaskPredictor(context.model, task.name),
                data=probe_subset(task, self.subset),
                parameters=probe_parameters(context.model, task.name, self.parameters),
            )

    def __call__(self, context: ProbeContext) -> ProbeValues:
        return {view.task.name: self.measure(view, context) for view in self.views(context)}

    @abstractmethod
    def measure(self, view: TaskView, context: ProbeContext) -> dict[str, float]:
        """The probe's values for one task."""
