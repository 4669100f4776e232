"""Per-step and probe costs of the movielens encoder on random ML-1M-shaped pairs (no data files needed).

Times, on the CPU, the median of ``--repeats`` of: one training step of the uniform multi-task loss (forward of
both heads, backward, Adam) at ``--batch`` pairs, a forward pass alone, the Fisher trace (``fim_trace``, per-example
gradients) of each task on ``--subset`` pairs, and the sharpness (``sharpness``, 20 iterations) of the watch task on
``--subset`` pairs; prints a Markdown table with each cost in training steps.

    PYTHONPATH=src python benchmarks/movielens_costs.py --batch 256 --subset 512 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from mtlscope.data.sources.movielens import CATEGORICAL, GENRES
from mtlscope.losses import resolve_loss
from mtlscope.models.encoders import ENCODERS
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes import fim_trace, sharpness


def pairs(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = np.stack(
        [rng.integers(1 if i in (0, 5, 6) else 0, size, count) for i, (_, size) in enumerate(CATEGORICAL)], 1
    )
    genres = (rng.random((count, len(GENRES))) < 0.1).astype(np.float32)
    genres[np.arange(count), rng.integers(0, len(GENRES), count)] = 1
    inputs = torch.from_numpy(np.concatenate([ids.astype(np.float32), genres], axis=1))
    watch = torch.from_numpy(rng.integers(0, 2, count).astype(np.float32))
    rating = watch * torch.from_numpy(rng.integers(1, 6, count).astype(np.float32))
    return inputs, watch, rating


class Predictor(torch.nn.Module):
    """One task's predictor (the shared encoder and its head) as a module, for the probes."""

    def __init__(self, model: MultiTaskModel, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(inputs, self.task)
        return out


def median_seconds(function, repeats: int) -> float:  # type: ignore[no-untyped-def]
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--subset", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady on busy cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    encoder = ENCODERS.build("movielens", (len(CATEGORICAL) + len(GENRES),))
    model = MultiTaskModel(encoder, {"watch": torch.nn.Linear(10, 1), "rating": torch.nn.Linear(10, 1)})
    losses = {"watch": resolve_loss("binary_cross_entropy"), "rating": resolve_loss({"name": "mse", "invalid": 0.0})}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, watch, rating = pairs(args.batch, rng)
    probe_inputs, probe_watch, probe_rating = pairs(args.subset, rng)

    def step() -> None:
        model.train()
        outputs = model.forward_all(inputs)
        total = losses["watch"](outputs["watch"], watch) + losses["rating"](outputs["rating"], rating)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model.forward_all(inputs)

    def fisher(task: str, targets: torch.Tensor) -> None:
        model.eval()
        fim_trace(
            Predictor(model, task),
            probe_inputs,
            targets=targets,
            loss=losses[task],
            batch_size=16,  # type: ignore[arg-type]
            parameters=list(model.predictor_parameters(task)),
            generator=torch.Generator().manual_seed(0),
        )

    def sharp() -> None:
        model.eval()
        sharpness(
            Predictor(model, "watch"),
            losses["watch"],
            probe_inputs,
            probe_watch,  # type: ignore[arg-type]
            parameters=list(model.predictor_parameters("watch")),
            generator=torch.Generator().manual_seed(0),
        )

    parameters = sum(p.numel() for p in model.parameters())
    jobs = {
        f"training step, batch {args.batch}": (step, args.repeats),
        f"forward only, batch {args.batch}": (forward, args.repeats),
        f"fim_trace watch, {args.subset} pairs": (lambda: fisher("watch", probe_watch), args.repeats),
        f"fim_trace rating, {args.subset} pairs": (lambda: fisher("rating", probe_rating), args.repeats),
        f"sharpness watch, {args.subset} pairs, 20 iterations": (sharp, max(1, args.repeats // 2)),
    }
    timed = {}
    for name, (function, repeats) in jobs.items():
        timed[name] = median_seconds(function, repeats)
        print(f"{name}: {timed[name] * 1000:.1f} ms", file=sys.stderr, flush=True)
    step_time = next(iter(timed.values()))
    print(f"movielens encoder + 2 linear heads: {parameters:,} parameters; torch threads {torch.get_num_threads()}")
    print("| what | ms | training steps |\n| --- | --- | --- |")
    for name, seconds in timed.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / step_time:.1f} |")


if __name__ == "__main__":
    main()
