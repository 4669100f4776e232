"""Time of the per-task Jacobian in each mode against a summed-loss backward (the physical floor).

    .venv/bin/python benchmarks/jacobian_modes.py

MLP 64-256-256 encoder, B = 32 per task, 2 threads; median of 20 steps. Prints a Markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from methods_step import random_setting

from mtlscope.engine.gradients import (
    encoder_jacobian,
    forward,
    jacobian_batched,
    jacobian_loop,
    per_task_gradients,
    representation_gradients,
)
from mtlscope.engine.sampling import BatchSampler
from mtlscope.models import build_model


def median_ms(run: Callable[[], object], repeats: int = 20) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(layout: str, num_tasks: int) -> list[float | None]:
    """Median times (ms): summed backward, per_task, two-stage batched, one-graph batched, loop."""
    setting = random_setting(num_tasks, "mlp", layout)
    model = build_model(setting, dict(setting.default_model["encoder"]), {"name": "linear"}, 0)
    batch = BatchSampler(setting, 32, 0).next()
    shared = list(model.shared_parameters())

    def summed() -> None:
        forward(model, setting, batch).losses.sum().backward()

    def two_stage() -> None:
        graph = forward(model, setting, batch)
        encoder_jacobian(graph.representation, representation_gradients(graph), shared, "batched")

    return [
        median_ms(summed),
        median_ms(lambda: per_task_gradients(model, setting, batch)) if layout == "multi-input" else None,
        median_ms(two_stage),
        median_ms(lambda: jacobian_batched(forward(model, setting, batch).losses, shared)),
        median_ms(lambda: jacobian_loop(forward(model, setting, batch).losses, shared)),
    ]


def main() -> None:
    torch.set_num_threads(2)
    print("| layout | K | summed backward (ms) | per_task | two-stage batched | one-graph batched | loop |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layout in ("multi-input", "shared-input"):
        for num_tasks in (2, 10, 40):
            text = " | ".join("—" if c is None else f"{c:.2f}" for c in measure(layout, num_tasks))
            print(f"| {layout} | {num_tasks} | {text} |", flush=True)


if __name__ == "__main__":
    main()
