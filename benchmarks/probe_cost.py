"""Cost of each trajectory probe, in seconds and in training-step equivalents, and of probe schedules.

For each model — a LeNet on 1x28x28 images (FashionMTL's shape) and a ResNet-18 (11.2M parameters) on 1x8x8
images (digits' shape: ResNet-18 at 32x32 takes seconds per step on 2 CPU cores) — on a two-task
multi-input setting with ``--train-size`` (default 4096) random training examples per task, so that the
probe subsets have the full 2048 examples as on real data, batch size 32 per task and Adam:

- ``step_s``: the median time of one training step (UMTG: forward, backward, optimizer step) — the unit;
- for every probe with its default options (``--resnet-subset`` sets the ResNet's probe subset: CPU time):
  the median time of one call over ``--repeats`` (a checkpoint probe measures every task; ``affinity`` is
  one measurement on one step's batch), and ``steps`` = that time / the training step's time measured
  again right before it (15 steps; the machine's speed drifts over minutes), the
  probe's cost in training-step (forward/backward) equivalents, which carries over between machines
  roughly as long as the probe and the training step are bound by the same arithmetic.

Then the overhead of a probe schedule relative to training, from those costs: for a run of ``S`` steps
with a checkpoint every ``E`` steps, a checkpoint probe with ``every = n`` costs ``cost * S / (E n)`` and
``affinity`` with ``every_steps = m`` costs ``cost * S / m``; overhead = sum / (S * step_s).

    .venv/bin/python benchmarks/probe_cost.py --out benchmarks/results
    .venv/bin/python benchmarks/probe_cost.py --models lenet --repeats 2        # a quick look
    .venv/bin/python benchmarks/probe_cost.py --models resnet18 --only fim_trace --out /tmp/pc  # one probe

Writes ``probe_cost.csv``/``.md`` (costs) and ``probe_schedules.csv``/``.md`` (overheads) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import mtlscope
from mtlscope import methods
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.models import build_model
from mtlscope.probes import PROBES, ProbeContext, StepContext
from mtlscope.report.tables import to_markdown
from mtlscope.settings import Setting, Split, Task

MODELS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "lenet": ({"name": "lenet"}, (1, 28, 28)),
    "resnet18": ({"name": "resnet"}, (1, 8, 8)),
}
CHECKPOINT_PROBES = ("min_train_loss", "sharpness", "fim_trace", "grad_cov_trace", "grad_similarity")
# (probe, options): every probe with its defaults, and the Fisher trace without its per-example pass
PROBE_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    *((name, {}) for name in CHECKPOINT_PROBES),
    ("fim_trace", {"per_example": False}),
    ("affinity", {}),
)

# schedules: name -> (probe -> every n-th checkpoint, or for affinity every_steps)
SCHEDULES: dict[str, dict[str, int]] = {
    "default (option defaults)": {
        "min_train_loss": 1,
        "sharpness": 10,
        "fim_trace": 10,
        "grad_cov_trace": 10,
        "grad_similarity": 10,
        "affinity": 50,
    },
    "every checkpoint": {p: 1 for p in CHECKPOINT_PROBES} | {"affinity": 10},
}


def bench_setting(shape: tuple[int, ...], train_size: int, seed: int = 0) -> Setting:
    """Two 10-class tasks with random images (the cost does not depend on the values)."""
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        return Split(torch.randn(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator))

    tasks = tuple(Task(f"t{k}", "classification", 10, split(train_size), split(64), split(64)) for k in range(2))
    return Setting("bench", tasks, "multi-input", shape, {"encoder": {"name": "lenet"}, "head": {"name": "linear"}})


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(
    model_name: str,
    repeats: int,
    subset: int | None,
    batch_size: int,
    train_size: int,
    threads: int | None,
    only: set[str] | None = None,
) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    encoder, shape = MODELS[model_name]
    setting = bench_setting(shape, train_size)
    model = build_model(setting, encoder, {"name": "linear"}, 0)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model.parameters(), "adam", 1e-3)
    sampler = BatchSampler(setting, batch_size, 0)
    method = methods.get("umtg")
    method.setup(setting.task_names)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator().manual_seed(0))
    counter = iter(range(10**9))

    def step_seconds() -> float:
        """The unit, measured again right before each probe (side by side: the machine's speed drifts)."""
        return _median_seconds(lambda: step(sampler.next(), next(counter)), 15)

    step_s = step_seconds()
    rows = [{"model": model_name, "parameters": parameters, "probe": "training step", "seconds": step_s, "steps": 1.0}]
    scores = {(t, "train"): {"loss": 1.0} for t in setting.task_names}
    for name, extra in PROBE_VARIANTS:
        if only and name not in only:
            continue
        options: dict[str, Any] = dict(extra)
        if subset is not None and name in ("sharpness", "fim_trace", "grad_cov_trace"):
            options["subset"] = subset
        probe = PROBES.build(name, **options)
        generator = torch.Generator().manual_seed(1)
        unit = step_seconds()
        model.eval()
        if probe.observes_steps:
            batch = sampler.next()
            context = StepContext(model, setting, batch, 0, optimizer, 1.0, generator)
            seconds = _median_seconds(lambda: probe.before_step(context), repeats)  # noqa: B023
        else:
            checkpoint = ProbeContext(model, setting, 0, 0.0, scores, optimizer, 1.0, batch_size, generator)
            seconds = _median_seconds(lambda: probe(checkpoint), repeats)  # noqa: B023
        model.train()
        rows.append(
            {
                "model": model_name,
                "parameters": parameters,
                "probe": name + "".join(f" ({key} {value})" for key, value in options.items()),
                "seconds": seconds,
                "steps": seconds / unit,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def schedule_overheads(costs: pd.DataFrame, steps_per_checkpoint: int) -> pd.DataFrame:
    """Overhead of each schedule relative to training, for checkpoints every ``steps_per_checkpoint`` steps."""
    rows = []
    for model, group in costs.groupby("model", sort=False):
        by_probe = {row.probe.split(" (")[0]: row.steps for row in group.itertuples() if "per_example" not in row.probe}
        for schedule, every in SCHEDULES.items():
            overhead = 0.0
            for probe, n in every.items():
                per_step = 1 / n if probe == "affinity" else 1 / (steps_per_checkpoint * n)
                overhead += by_probe[probe] * per_step
            rows.append(
                {
                    "model": model,
                    "schedule": schedule,
                    "steps_per_checkpoint": steps_per_checkpoint,
                    "overhead": overhead,
                    "probes": ", ".join(f"{p}:{n}" for p, n in every.items()),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--models", default="lenet,resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=4096, help="training examples per task")
    parser.add_argument("--resnet-subset", type=int, default=512, help="probe subset for the ResNet (CPU time)")
    parser.add_argument(
        "--steps-per-checkpoint",
        type=int,
        default=1875,
        help="steps between checkpoints for the overhead table (1875 = an epoch of 60k examples at B = 32)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated probe names to measure (default: all)")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        subset = args.resnet_subset if model.startswith("resnet") else None
        only = set(filter(None, args.only.split(","))) or None
        rows += measure(model, args.repeats, subset, args.batch_size, args.train_size, args.threads, only)
    costs = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
    costs.to_csv(args.out / "probe_cost.csv", index=False)
    (args.out / "probe_cost.md").write_text(f"Probe cost ({meta})\n\n{to_markdown(costs, digits=4)}\n")
    if args.only:
        print(to_markdown(costs, digits=4))
        return
    overheads = pd.concat(
        [schedule_overheads(costs, steps) for steps in sorted({27, args.steps_per_checkpoint})], ignore_index=True
    )
    overheads.to_csv(args.out / "probe_schedules.csv", index=False)
    (args.out / "probe_schedules.md").write_text(
        f"Probe schedule overhead relative to training ({meta})\n\n{to_markdown(overheads, digits=3)}\n"
    )
    print(to_markdown(costs, digits=4))
    print(to_markdown(overheads, digits=3))


if __name__ == "__main__":
    main()
