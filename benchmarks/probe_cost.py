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

Runs (``--runs``, the papers' settings, each with its training schedule; ``--models`` lists none then): the per-probe
costs and the share of training time of the default probe schedule (the option defaults: ``every`` 10, subsets of
2048) and of the preset's own probes, for

- ``fashion-lenet``: the real FashionMTL preset ``main-fig1-fashion-cpu`` (setting ``fashion-mtl``, fashion1 +
  fashion2, 1,000 training images per task, the LeNet of 10 and 20 channels, kernel 5, hidden 50, B = 128,
  4,000 steps, 36 log-spaced checkpoints); real images when found in ``$MTLSCOPE_DATA``, otherwise random
  1x28x28 images of the same sizes (the cost does not depend on the values);
- ``cifar-resnet18``: a CIFAR-100-shaped run of ``main-fig4`` (ResNet-18, 3x32x32 inputs, 5-way tasks of 2,000
  training images, B = ``--cifar-batch`` per task, 75 epochs, a checkpoint every epoch), measured with 2 of its
  20 tasks (multi-input: a training step and every checkpoint probe cost in proportion to the number of tasks)
  and on a probe subset of ``--cifar-subset`` examples (CPU time); the costs are scaled to the run's probe
  subsets (sharpness, Fisher: by the number of examples; gradient covariance: by its large batch; gradient
  similarity: by its number of batches, measured with ``--cifar-batches``).

For each run it also times the Fisher probe's per-example pass on its own: per-example squared norms from the
layer formulas (``per_example_method: auto``, the default) and from ``vmap`` per-example gradients, against one
batched forward+backward over the same examples.

    .venv/bin/python benchmarks/probe_cost.py --out benchmarks/results
    .venv/bin/python benchmarks/probe_cost.py --runs fashion-lenet,cifar-resnet18 --threads 1 --out /tmp/pc
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import mtlscope
from mtlscope import methods
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.probe_budget import checkpoint_measurements, plan_probe_schedule, step_observations
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.engine.trainer import Schedule
from mtlscope.losses import cross_entropy
from mtlscope.models import build_model
from mtlscope.probes import PROBES, ProbeContext, StepContext, build_probe
from mtlscope.probes.base import probe_mode
from mtlscope.probes.per_example import loss_function
from mtlscope.probes.per_example_norms import per_example_squared_norms
from mtlscope.probes.predictor import TaskPredictor
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

    tasks = tuple(Task(f"t{k}", 10, split(train_size), split(64), split(64), loss=cross_entropy()) for k in range(2))
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


@dataclass(frozen=True)
class RunSpec:
    """A paper setting's training run: its model, data sizes and schedule, and the probes of its preset."""

    encoder: dict[str, Any]
    shape: tuple[int, ...]
    classes: int
    train_size: int
    batch_size: int
    steps: int
    eval_every: int | None
    checkpoints_per_decade: int | None
    preset_probes: dict[str, dict[str, Any]]
    tasks: int = 2
    real: Callable[[], Setting] | None = None


def _fashion() -> Setting:
    from mtlscope.settings.registry import get

    return get("fashion-mtl", tasks=["fashion1", "fashion2"], train_size=1000)


LENET_FASHION = {"name": "lenet", "channels": [10, 20], "kernel_size": 5, "hidden": [50]}
RUNS: dict[str, RunSpec] = {
    # main-fig1-fashion-cpu: 4,000 steps of B = 128, log-spaced checkpoints (10 per decade)
    "fashion-lenet": RunSpec(
        LENET_FASHION,
        (1, 28, 28),
        10,
        1000,
        128,
        4000,
        None,
        10,
        {
            "sharpness": {"every": 1, "subset": 512},
            "fim_trace": {"every": 1, "subset": 512},
            "grad_cov_trace": {"every": 1, "subset": 1024, "large_batch": 512},
            "grad_similarity": {"every": 1, "batches": 50},
        },
        real=_fashion,
    ),
    # main-fig4 on CIFAR-100: 2,000 training images per task, 75 epochs, a checkpoint per epoch, probes {} (defaults)
    "cifar-resnet18": RunSpec(
        {"name": "resnet"},
        (3, 32, 32),
        5,
        2000,
        16,
        0,
        None,
        None,
        {"sharpness": {}, "fim_trace": {}, "grad_cov_trace": {}},
        tasks=20,
    ),
}
# a schedule within 25% of training on both runs: fewer sharpness examples, every 25th checkpoint
REDUCED: dict[str, dict[str, Any]] = {
    "min_train_loss": {},
    "sharpness": {"subset": 128, "every": 25},
    "fim_trace": {"subset": 512, "every": 25},
    "grad_cov_trace": {"every": 25},
    "grad_similarity": {"batches": 50, "every": 25},
    "affinity": {"every_steps": 500},
}
RUN_PROBES = ("min_train_loss", "sharpness", "fim_trace", "grad_cov_trace", "grad_similarity", "affinity")
DEFAULTS = {"subset": 2048, "large_batch": 1024, "batches": 200}


def _run_setting(spec: RunSpec, train_size: int) -> tuple[Setting, str]:
    if spec.real is not None:
        try:
            return spec.real(), "real"
        except Exception as error:  # files not found: random images of the same shape and sizes
            print(f"real data not loaded ({str(error).splitlines()[0]}); random images", flush=True)
    generator = torch.Generator().manual_seed(0)

    def split(size: int) -> Split:
        images = torch.randn(size, *spec.shape, generator=generator)
        return Split(images, torch.randint(0, spec.classes, (size,), generator=generator))

    tasks = tuple(
        Task(f"t{k}", spec.classes, split(train_size), split(64), split(64), loss=cross_entropy()) for k in range(2)
    )
    return Setting("bench", tasks, "multi-input", spec.shape, {"encoder": spec.encoder}), "random"


def per_example_pass(model: torch.nn.Module, setting: Setting, examples: int, repeats: int) -> dict[str, float]:
    """Seconds of the Fisher probe's per-example pass over ``examples`` of task 0 (its predictor, sampled labels):
    layer formulas and vmap, against one batched forward+backward over the same examples (chunks of 64)."""
    task = setting.tasks[0]
    data = task.train.head(examples)
    predictor = TaskPredictor(model, task.name)
    loss = loss_function(task.loss)
    with probe_mode(predictor):
        with torch.no_grad():
            labels = task.loss.sample_targets(predictor(data.inputs), torch.Generator().manual_seed(0))

        def batched() -> None:
            for start in range(0, len(labels), 64):
                part = slice(start, start + 64)
                predictor.zero_grad(set_to_none=True)
                loss(predictor(data.inputs[part]), labels[part]).backward()
            predictor.zero_grad(set_to_none=True)

        times = {"batched forward+backward": _median_seconds(batched, repeats)}
        for method in ("auto", "vmap"):
            times[f"per-example norms ({method})"] = _median_seconds(
                lambda: per_example_squared_norms(predictor, loss, data.inputs, labels, method=method),  # noqa: B023
                repeats,
            )
    return times


def measure_run(
    name: str,
    repeats: int,
    subset: int | None,
    batches: int | None,
    threads: int | None,
    only: set[str] | None = None,
) -> dict:
    """Costs (seconds, training steps) of every probe (or those in ``only``) on the run ``name`` at the measured
    sizes."""
    if threads:
        torch.set_num_threads(threads)
    spec = RUNS[name]
    setting, data = _run_setting(spec, spec.train_size)
    train_size = min(len(task.train) for task in setting.tasks)
    model = build_model(setting, spec.encoder, {"name": "linear"}, 0)
    optimizer = build_optimizer(model.parameters(), "adam", 1e-3)
    sampler = BatchSampler(setting, spec.batch_size, 0)
    method = methods.get("umtg")
    method.setup(setting.task_names)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator().manual_seed(0))
    counter = iter(range(10**9))

    def step_seconds() -> float:
        return _median_seconds(lambda: step(sampler.next(), next(counter)), 5)

    measured_subset = min(subset or DEFAULTS["subset"], train_size)
    sizes = {"subset": measured_subset, "train_size": train_size, "data": data}
    rows = [{"run": name, "probe": "training step", "seconds": step_seconds(), "steps": 1.0}]
    scores = {(t, "train"): {"loss": 1.0} for t in setting.task_names}
    variants: list[tuple[str, dict[str, Any]]] = [(p, {}) for p in RUN_PROBES]
    variants.insert(3, ("fim_trace", {"per_example_method": "vmap"}))
    for probe_name, extra in variants:
        if only and probe_name not in only:
            continue
        options: dict[str, Any] = dict(extra)
        if probe_name in ("sharpness", "fim_trace", "grad_cov_trace"):
            options["subset"] = measured_subset
        if probe_name == "grad_cov_trace":
            options["large_batch"] = min(DEFAULTS["large_batch"], measured_subset)
        if probe_name == "grad_similarity" and batches:
            options["batches"] = batches
        probe = PROBES.build(probe_name, **options)
        generator = torch.Generator().manual_seed(1)
        unit = step_seconds()
        model.eval()
        if probe.observes_steps:
            context = StepContext(model, setting, sampler.next(), 0, optimizer, 1.0, generator)
            seconds = _median_seconds(lambda: probe.before_step(context), repeats)  # noqa: B023
        else:
            checkpoint = ProbeContext(model, setting, 0, 0.0, scores, optimizer, 1.0, spec.batch_size, generator)
            seconds = _median_seconds(lambda: probe(checkpoint), repeats)  # noqa: B023
        model.train()
        rows.append({"run": name, "probe": probe_name, "options": options, "seconds": seconds, "steps": seconds / unit})
        print(json.dumps(rows[-1]), flush=True)
    if only and "fim_trace" not in only:
        return {"rows": rows, "sizes": sizes}
    unit = step_seconds()
    passes = per_example_pass(model, setting, measured_subset, repeats)
    for what, seconds in passes.items():
        rows.append(
            {
                "run": name,
                "probe": what,
                "options": {"examples": measured_subset},
                "seconds": seconds,
                "steps": seconds / unit,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "sizes": sizes}


def _scaled_steps(row: dict, options: dict[str, Any], train_size: int) -> float:
    """A probe's cost in training steps at ``options`` (subset, large batch, batches), from its measured row:
    sharpness and the Fisher trace scale with the probe subset, the gradient covariance with its large batch
    (at most the subset), the gradient similarity with its number of batches."""
    measured = row["options"]
    name = row["probe"]
    subset = min(options.get("subset", DEFAULTS["subset"]), train_size)
    if name in ("sharpness", "fim_trace"):
        return row["steps"] * subset / measured["subset"]
    if name == "grad_cov_trace":
        large = min(options.get("large_batch", DEFAULTS["large_batch"]), subset)
        return row["steps"] * large / measured["large_batch"]
    if name == "grad_similarity":
        return row["steps"] * options.get("batches", DEFAULTS["batches"]) / measured.get("batches", DEFAULTS["batches"])
    return float(row["steps"])


def plan_setting(spec: RunSpec) -> Setting:
    """A setting with the run's number of tasks and training examples per task (tiny inputs): what the
    cost-aware schedule reads (task count, layout, training-set sizes)."""

    def split(size: int) -> Split:
        return Split(torch.zeros(size, 1), torch.zeros(size, dtype=torch.long))

    tasks = tuple(
        Task(f"t{k}", spec.classes, split(spec.train_size), split(2), split(2), loss=cross_entropy())
        for k in range(spec.tasks)
    )
    return Setting("plan", tasks, "multi-input", (1,), {"encoder": {"name": "mlp"}})


def run_schedule(name: str, cifar_epochs: int = 75) -> Schedule:
    spec = RUNS[name]
    if spec.eval_every is None and spec.checkpoints_per_decade is None:  # a checkpoint per epoch
        steps_per_epoch = -(-spec.train_size // spec.batch_size)
        return Schedule(cifar_epochs * steps_per_epoch, steps_per_epoch, eval_every=steps_per_epoch)
    return Schedule(spec.steps, 1, spec.eval_every, spec.checkpoints_per_decade)


def planned_options(name: str, probes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``probes`` with the spacing the trainer's cost-aware plan gives the run ``name`` where none is set."""
    spec = RUNS[name]
    schedule = run_schedule(name)
    built = [build_probe(probe, options) for probe, options in probes.items()]
    plan = plan_probe_schedule(
        built,
        steps=schedule.steps,
        regular_checkpoints=schedule.regular_checkpoints(),
        setting=plan_setting(spec),
        batch_size=spec.batch_size,
    )
    key = {"checkpoints": "every", "steps": "every_steps"}
    return {p.name: probes[p.name] | {key[p.unit]: p.spacing} for p in plan}


def run_overheads(name: str, result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-probe costs at the run's probe sizes and the share of training time of its probe schedules."""
    spec = RUNS[name]
    train_size = result["sizes"]["train_size"]
    schedule = run_schedule(name)
    regular = schedule.regular_checkpoints()
    by_probe = {
        row["probe"] + (" (vmap)" if row.get("options", {}).get("per_example_method") == "vmap" else ""): row
        for row in result["rows"]
    }
    previous = {"min_train_loss": {"every": 1}, "affinity": {"every_steps": 50}} | {
        p: {"every": 10} for p in ("sharpness", "fim_trace", "grad_cov_trace", "grad_similarity")
    }
    everything = {p: {} for p in RUN_PROBES}
    preset = {"min_train_loss": {}} | spec.preset_probes
    schedules = {
        "previous default (every 10; affinity every 50 steps)": {p: previous[p] for p in RUN_PROBES},
        "previous default, Fisher per-example gradients (vmap)": {p: previous[p] for p in RUN_PROBES},
        "default: cost-aware plan": planned_options(name, everything),
        "default plan without affinity": planned_options(name, {p: {} for p in RUN_PROBES if p != "affinity"}),
        "preset's probes, previous default": {
            p: {"every": 10} | options if p != "min_train_loss" else options for p, options in preset.items()
        },
        "preset's probes, cost-aware plan": planned_options(name, preset),
        "reduced (below)": REDUCED,
    }
    costs, overheads = [], []
    for schedule_name, probes in schedules.items():
        total = 0.0
        shares = []
        for probe, options in probes.items():
            key = probe + (" (vmap)" if probe == "fim_trace" and "vmap" in schedule_name else "")
            row = by_probe[key]
            steps = _scaled_steps(row, options, train_size)
            if probe == "affinity":  # K lookahead updates, each scored on the K tasks: K^2 per measurement
                steps *= spec.tasks / 2
                every = options.get("every_steps", 50)
                count = step_observations(schedule.steps, every)
            else:
                every = options.get("every", PROBES.build(probe).every)
                count = checkpoint_measurements(regular, every)
            share = steps * count / schedule.steps
            total += share
            shares.append(f"{probe} {100 * share:.1f}% ({count}x)")
            if schedule_name.startswith(("previous default (", "default: cost-aware")) or (
                schedule_name.startswith("previous default, Fisher") and probe == "fim_trace"
            ):
                label = "plan" if schedule_name.startswith("default") else "previous"
                costs.append(
                    {
                        "run": name,
                        "probe": key,
                        "steps per measurement": steps,
                        "schedule": label,
                        "every": every,
                        "measurements": count,
                        "share": share,
                    }
                )
        overheads.append(
            {
                "run": name,
                "schedule": schedule_name,
                "training steps": schedule.steps,
                "checkpoints": len(schedule.checkpoint_steps()),
                "probe time / training time": total,
                "by probe (measurements)": ", ".join(shares),
            }
        )
    return pd.DataFrame(costs), pd.DataFrame(overheads)


def read_runs(path: Path) -> dict[str, dict]:
    """Measured rows of ``probe_cost_runs.csv`` by run, as ``measure_run`` returns them."""
    results: dict[str, dict] = {}
    for row in pd.read_csv(path).to_dict("records"):
        entry = results.setdefault(row["run"], {"rows": [], "sizes": {"train_size": RUNS[row["run"]].train_size}})
        entry["rows"].append(row | {"options": json.loads(row["options"]) if isinstance(row["options"], str) else {}})
    return results


def run_tables(args: argparse.Namespace) -> None:
    """``--runs``: measure the runs' probes (``--only``: those probes, replacing their rows in
    OUT/probe_cost_runs.csv; ``--recompute``: none) and write the costs and the schedules' shares."""
    args.out.mkdir(parents=True, exist_ok=True)
    meta = f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
    only = set(filter(None, args.only.split(","))) or None
    existing = args.out / "probe_cost_runs.csv"
    results = read_runs(existing) if (args.recompute or only) and existing.exists() else {}
    for name in [] if args.recompute else args.runs.split(","):
        small = name == "cifar-resnet18"
        result = measure_run(
            name,
            args.repeats,
            args.cifar_subset if small else None,
            args.cifar_batches if small else None,
            args.threads,
            only,
        )
        print(json.dumps(result["sizes"]), flush=True)
        if only and name in results:  # replace the re-measured probes' rows (and the training step's)
            fresh = {row["probe"] for row in result["rows"]}
            kept = [row for row in results[name]["rows"] if row["probe"] not in fresh]
            result = {"rows": result["rows"][:1] + kept + result["rows"][1:], "sizes": result["sizes"]}
        results[name] = result
    measured, costs, overheads = [], [], []
    for name, result in results.items():
        measured += [row | {"options": json.dumps(row.get("options", {}))} for row in result["rows"]]
        cost, overhead = run_overheads(name, result)
        costs.append(cost)
        overheads.append(overhead)
    tables = {
        "probe_cost_runs": pd.DataFrame(measured),
        "probe_cost_runs_scaled": pd.concat(costs, ignore_index=True),
        "probe_schedules_runs": pd.concat(overheads, ignore_index=True),
    }
    for stem, table in tables.items():
        table.to_csv(args.out / f"{stem}.csv", index=False)
        (args.out / f"{stem}.md").write_text(f"{stem} ({meta})\n\n{to_markdown(table, digits=3)}\n")
        print(to_markdown(table, digits=3))


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
    parser.add_argument("--runs", default="", help="fashion-lenet,cifar-resnet18: paper runs and their schedules")
    parser.add_argument("--cifar-subset", type=int, default=32, help="probe subset measured on cifar-resnet18")
    parser.add_argument("--cifar-batches", type=int, default=4, help="grad_similarity batches on cifar-resnet18")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="with --runs: no measuring; the schedules' shares from the rows in OUT/probe_cost_runs.csv",
    )
    args = parser.parse_args()
    if args.runs:
        run_tables(args)
        return
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
