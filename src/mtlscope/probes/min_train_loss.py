"""``min_train_loss``: the lowest full training loss of each task so far (Mueller et al., TMLR 2025, §4.2:
the factor most SMTOs aim at). Reads the checkpoint's training loss; costs nothing extra."""

from __future__ import annotations

import math
from typing import Any

from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues


class MinTrainLoss(Probe):
    name = "min_train_loss"

    def __init__(self) -> None:
        self.lowest: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"lowest": dict(self.lowest)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest = dict(state.get("lowest", {}))

    def __call__(self, context: ProbeContext) -> ProbeValues:
        values: ProbeValues = {}
        for task in context.setting.task_names:
            loss = context.scores[(task, "train")]["loss"]
            if math.isfinite(loss):
                self.lowest[task] = min(self.lowest.get(task, math.inf), loss)
            values[task] = {"min_train_loss": self.lowest.get(task, math.nan)}
        return values


@PROBES.register("min_train_loss", "lowest full training loss so far, per task")
def build() -> Probe:
    return MinTrainLoss()
