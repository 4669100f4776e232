"""Per-step time and peak memory of every multi-task method, as ratios measured side by side.

For each model (MLP, LeNet, ResNet-18 on 32x32 inputs), data layout and number of tasks K, these steps run
on identical models and batches:

- ``hand``: a hand-written PyTorch step of the summed loss (one forward, one backward, Adam step);
- ``mtlscope``: mtlscope's ``TrainingStep`` with the method on the Jacobian path (``gradient_path: jacobian``,
  ``jacobian_mode: auto``: per-task graphs in the multi-input layout, one batched backward in shared-input);
- ``gramian``: the same on the Gramian path (``gradient_path: gramian``), for methods that accept it;
- ``torchjd``: TorchJD's ``autojac`` — ``mtl_backward`` + ``jac_to_grad`` with the same aggregator from
  ``torchjd.aggregation`` (the K x P Jacobian of the encoder, one graph), where TorchJD has one;
- ``autogram``: TorchJD's ``torchjd.autogram.Engine`` on the encoder (``batch_dim=None``: BatchNorm layers
  couple the rows) computes the K x K Gramian of the stacked task losses, the same method's weighting from
  ``torchjd.aggregation`` (``MGDAWeighting``, ``IMTLGWeighting``, ``PCGradWeighting``, ``SumWeighting``
  for UMTG, ...) turns it into K weights, then ``losses.backward(weights)`` — where TorchJD has the weighting.

Time: the variants' steps are interleaved in one process (``--warmup`` untimed rounds, then ``--steps``
rounds); the median per variant (fewer rounds, at least 2, once a variant's steps exceed ``--budget``
seconds in total). Only ratios measured in the same run mean anything on a shared machine.

Peak memory (``--memory``): on CPU every variant runs in a fresh subprocess (``MALLOC_MMAP_THRESHOLD_``
fixed at 64 KiB, so freed tensors go back to the OS and the resident set follows the live tensors); after
``--warmup`` steps (at least one: Adam's state, one-time library buffers) the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), one step runs, and the step's own memory is the peak RSS during it minus the RSS
just before it (gradients already released: every variant's step starts with ``zero_grad(set_to_none=True)``).
The reported peak adds the persistent tensors the step works on, counted exactly (parameters and Adam's two
moments), so it is what ``torch.cuda.max_memory_allocated`` reports on a GPU
(used there instead, in-process). Memory numbers do not depend on the machine's load.

    .venv/bin/python benchmarks/methods_step.py --out benchmarks/results            # MLP/LeNet timing grid
    .venv/bin/python benchmarks/methods_step.py --quick --methods umtg,pcgrad,mgda   # a quick look
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/methods_step.py --models resnet18-w16 --ks 10,20,40 \
        --batch-size 8 --methods umtg,mgda,imtl_g,pcgrad --steps 3 --warmup 1 --threads 1 --memory \
        --out benchmarks/results/resnet18                                            # the papers' scale

Models: ``mlp`` (64-256-256), ``lenet``, ``resnet18`` (the ``resnet`` encoder, blocks 2-2-2-2, widths
64-128-256-512, CIFAR stem, 32x32 inputs: 11.2 M parameters) and ``resnet18-w16`` (the same network at a
quarter of the width, 16-32-64-128: 0.7 M parameters, 1/16 of the arithmetic, for CPU runs).

Rows are appended to ``methods_step.csv`` in ``--out`` as they are measured (configurations already
there are skipped, so an interrupted run continues); ``methods_step.md`` is rewritten from the CSV, and for
ResNet rows ``gradient_engine.md`` (the issue's targets, one row per configuration).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

import mtlscope
from mtlscope import methods
from mtlscope.engine.sampling import Batch, BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.models import build_model
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.report.tables import to_markdown
from mtlscope.settings import Setting, Split, Task

# mtlscope method -> TorchJD aggregator factory (K -> aggregator)
TORCHJD: dict[str, Callable[[int], Any]] = {}
# mtlscope method -> TorchJD weighting of the Gramian (for torchjd.autogram)
AUTOGRAM: dict[str, Callable[[int], Any]] = {}
VARIANTS = ("hand", "mtlscope", "gramian", "torchjd", "autogram")
ENCODERS: dict[str, dict[str, Any]] = {
    "mlp": {"name": "mlp", "hidden": [256, 256]},
    "lenet": {"name": "lenet"},
    "resnet18": {"name": "resnet", "blocks": [2, 2, 2, 2]},
    "resnet18-w16": {"name": "resnet", "blocks": [2, 2, 2, 2], "widths": [16, 32, 64, 128]},
}
SHAPES = {"mlp": (64,), "lenet": (1, 28, 28), "resnet18": (3, 32, 32), "resnet18-w16": (3, 32, 32)}


def _torchjd_aggregators() -> None:
    try:
        from torchjd import aggregation as agg
    except ImportError:
        return
    TORCHJD.update(
        {
            "umtg": lambda k: agg.Sum(),
            "pcgrad": lambda k: agg.PCGrad(),
            "mgda": lambda k: agg.MGDA(),
            "imtl_g": lambda k: agg.IMTLG(),
            "cagrad": lambda k: agg.CAGrad(c=0.5),
            "nash_mtl": lambda k: agg.NashMTL(n_tasks=k),
            "aligned_mtl": lambda k: agg.AlignedMTL(),
            "graddrop": lambda k: agg.GradDrop(),
            "rlw": lambda k: agg.Random(),
        }
    )
    if hasattr(agg, "GradVac"):
        TORCHJD["gradvac"] = lambda k: agg.GradVac()
    AUTOGRAM.update(
        {
            "umtg": lambda k: agg.SumWeighting(),
            "pcgrad": lambda k: agg.PCGradWeighting(),
            "mgda": lambda k: agg.MGDAWeighting(),
            "imtl_g": lambda k: agg.IMTLGWeighting(),
            "cagrad": lambda k: agg.CAGradWeighting(c=0.5),
            "aligned_mtl": lambda k: agg.AlignedMTLWeighting(),
        }
    )
    if hasattr(agg, "GradVacWeighting"):
        AUTOGRAM["gradvac"] = lambda k: agg.GradVacWeighting()


def random_setting(num_tasks: int, model: str, layout: str, size: int = 256) -> Setting:
    generator = torch.Generator().manual_seed(0)
    shape = SHAPES[model]

    def split() -> Split:
        return Split(torch.randn(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator))

    if layout == "shared-input":
        inputs = {s: torch.randn(size, *shape, generator=generator) for s in ("train", "val", "test")}
        tasks = tuple(
            Task(
                f"t{k}",
                10,
                *(
                    Split(inputs[s], torch.randint(0, 10, (size,), generator=generator))
                    for s in ("train", "val", "test")
                ),
                loss="cross_entropy",
            )
            for k in range(num_tasks)
        )
    else:
        tasks = tuple(Task(f"t{k}", 10, split(), split(), split(), loss="cross_entropy") for k in range(num_tasks))
    return Setting("bench", tasks, layout, shape, {"encoder": ENCODERS[model], "head": {"name": "linear"}})  # type: ignore[arg-type]


def hand_step(model: MultiTaskModel, optimizer: torch.optim.Optimizer, batch: Any, names: list[str]) -> None:
    optimizer.zero_grad(set_to_none=True)
    z = model.encoder(batch.inputs)
    loss = sum(F.cross_entropy(model.heads[n](z[batch.rows[n]]), batch.targets[n]) for n in names)
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()


def torchjd_step(
    model: MultiTaskModel, optimizer: torch.optim.Optimizer, batch: Any, names: list[str], aggregator: Any
) -> None:
    from torchjd.autojac import jac_to_grad, mtl_backward

    optimizer.zero_grad(set_to_none=True)
    z = model.encoder(batch.inputs)
    losses = [F.cross_entropy(model.heads[n](z[batch.rows[n]]), batch.targets[n]) for n in names]
    mtl_backward(losses, features=z)
    jac_to_grad(list(model.encoder.parameters()), aggregator)
    optimizer.step()


def autogram_step(
    model: MultiTaskModel, optimizer: torch.optim.Optimizer, batch: Any, names: list[str], engine: Any, weighting: Any
) -> None:
    optimizer.zero_grad(set_to_none=True)
    z = model.encoder(batch.inputs)
    losses = torch.stack([F.cross_entropy(model.heads[n](z[batch.rows[n]]), batch.targets[n]) for n in names])
    gramian = engine.compute_gramian(losses)
    losses.backward(weighting(gramian))
    optimizer.step()


@dataclass
class Bench:
    """One configuration: the variants' steps (closures over their own model copy and optimizer)."""

    steps: dict[str, Callable[[], None]] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)


def build(method: str, num_tasks: int, model_name: str, layout: str, batch_size: int, only: str | None = None) -> Bench:
    """The variants of one configuration (``only``: just that one, for a memory subprocess)."""
    setting = random_setting(num_tasks, model_name, layout, size=max(2 * batch_size, 16))
    base = build_model(setting, dict(setting.default_model["encoder"]), {"name": "linear"}, 0)
    names = list(setting.task_names)
    batch: Batch = BatchSampler(setting, batch_size, seed=0).next()
    bench = Bench()

    def wanted(name: str) -> bool:
        return only is None or only == name

    def copy_with_adam() -> tuple[MultiTaskModel, torch.optim.Optimizer]:
        model = copy.deepcopy(base)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    def training_step(path: str) -> Callable[[], None]:
        model, optimizer = copy_with_adam()
        method_object = methods.get(method)
        method_object.setup(setting.task_names)
        step = TrainingStep(
            model, setting, method_object, optimizer, 1.0, torch.Generator().manual_seed(0), gradient_path=path
        )
        counter = iter(range(10**9))
        bench.optimizers[path] = optimizer
        return lambda: step(batch, next(counter)) and None

    if wanted("hand"):
        hand_model, bench.optimizers["hand"] = copy_with_adam()
        hand_optimizer = bench.optimizers["hand"]
        bench.steps["hand"] = lambda: hand_step(hand_model, hand_optimizer, batch, names)
    if wanted("mtlscope"):
        bench.steps["mtlscope"] = training_step("jacobian")
        bench.optimizers["mtlscope"] = bench.optimizers.pop("jacobian")
    if wanted("gramian") and methods.get(method).accepts_gramian:
        bench.steps["gramian"] = training_step("gramian")
    if wanted("torchjd") and method in TORCHJD:
        jd_model, jd_optimizer = copy_with_adam()
        aggregator = TORCHJD[method](num_tasks)
        bench.optimizers["torchjd"] = jd_optimizer
        bench.steps["torchjd"] = lambda: torchjd_step(jd_model, jd_optimizer, batch, names, aggregator)
    if wanted("autogram") and method in AUTOGRAM:
        from torchjd.autogram import Engine

        ag_model, ag_optimizer = copy_with_adam()
        ag_engine = Engine(ag_model.encoder, batch_dim=None)
        weighting = AUTOGRAM[method](num_tasks)
        bench.optimizers["autogram"] = ag_optimizer
        bench.steps["autogram"] = lambda: autogram_step(ag_model, ag_optimizer, batch, names, ag_engine, weighting)
    return bench


def _status_mib(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match is not None, key
    return int(match.group(1)) / 1024


def persistent_mib(optimizer: torch.optim.Optimizer) -> float:
    """Parameters and optimizer state (Adam's two moments) in MiB: the tensors a step starts from."""
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def step_memory(step: Callable[[], None], optimizer: torch.optim.Optimizer, warmup: int) -> dict[str, float]:
    """Peak memory of one step after ``warmup`` steps, in MiB: ``step_mib`` (what the step allocates above
    what it starts from) and ``peak_mib`` (that plus the persistent tensors). CUDA: the allocator's peak."""
    for _ in range(max(1, warmup)):
        step()
    if torch.cuda.is_available():
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"step_mib": peak - before, "peak_mib": peak}
    optimizer.zero_grad(set_to_none=True)  # the step allocates its gradients (as every variant's step does first)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    before = _status_mib("VmRSS")
    step()
    grown = _status_mib("VmHWM") - before
    return {"step_mib": grown, "peak_mib": grown + persistent_mib(optimizer)}


def memory_child(spec: str) -> None:
    """Subprocess entry point: measure one variant of one configuration, print a JSON line."""
    config = json.loads(spec)
    torch.set_num_threads(config["threads"])
    _torchjd_aggregators()
    bench = build(
        config["method"], config["K"], config["model"], config["layout"], config["batch_size"], config["variant"]
    )
    name = config["variant"]
    result = step_memory(bench.steps[name], bench.optimizers[name], config["warmup"])
    print("MEMORY " + json.dumps(result), flush=True)


def measure_memory(config: dict[str, Any], variant: str, timeout: float) -> dict[str, float] | None:
    """Run ``memory_child`` for one variant in a fresh process (``None`` if it failed or timed out)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(config["threads"]))
    spec = json.dumps({**config, "variant": variant})
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", spec],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        print(f"  memory of {variant}: timed out after {timeout:.0f} s", flush=True)
        return None
    for line in done.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY ") :])  # type: ignore[no-any-return]
    print(f"  memory of {variant} failed:\n{done.stderr[-2000:]}", flush=True)
    return None


def measure(
    method: str,
    num_tasks: int,
    model_name: str,
    layout: str,
    steps: int,
    batch_size: int,
    budget: float,
    memory: bool,
    warmup: int = 2,
    threads: int = 1,
    memory_timeout: float = 1800.0,
    timing: bool = True,
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model_name, "layout": layout, "K": num_tasks, "method": method}
    bench = build(method, num_tasks, model_name, layout, batch_size)
    variants = bench.steps
    if timing:
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(warmup):
            for run in variants.values():
                run()
        for repeat in range(steps):
            for name, run in variants.items():
                if repeat >= 2 and sum(times[name]) > budget:
                    continue
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        for name in variants:
            row[f"{name}_ms"] = statistics.median(times[name]) * 1e3
        row["time_vs_hand"] = row["mtlscope_ms"] / row["hand_ms"]
        row["time_vs_torchjd"] = row["mtlscope_ms"] / row["torchjd_ms"] if "torchjd" in variants else None
        if "gramian" in variants:
            row["gramian_vs_hand"] = row["gramian_ms"] / row["hand_ms"]
            row["gramian_vs_jacobian"] = row["gramian_ms"] / row["mtlscope_ms"]
            if "torchjd" in variants:
                row["gramian_vs_torchjd"] = row["gramian_ms"] / row["torchjd_ms"]
            if "autogram" in variants:
                row["gramian_vs_autogram"] = row["gramian_ms"] / row["autogram_ms"]
    if memory:
        config = {
            "method": method,
            "K": num_tasks,
            "model": model_name,
            "layout": layout,
            "batch_size": batch_size,
            "threads": threads,
            "warmup": max(1, min(warmup, 2)),
        }
        del bench, variants
        for name in [v for v in VARIANTS if f"{v}_ms" in row or not timing]:
            if not timing and name not in build_names(method):
                continue
            result = measure_memory(config, name, memory_timeout)
            if result is not None:
                row[f"{name}_mib"] = result["peak_mib"]
                row[f"{name}_step_mib"] = result["step_mib"]
        if "hand_mib" in row:
            for name in ("mtlscope", "gramian", "torchjd", "autogram"):
                if f"{name}_mib" in row:
                    row[f"{name}_memory_vs_hand"] = row[f"{name}_mib"] / row["hand_mib"]
    return row


def build_names(method: str) -> list[str]:
    """The variants a method has (without building them)."""
    names = ["hand", "mtlscope"]
    if methods.get(method).accepts_gramian:
        names.append("gramian")
    names += [name for name, table in (("torchjd", TORCHJD), ("autogram", AUTOGRAM)) if method in table]
    return names


def engine_table(frame: pd.DataFrame) -> str:
    """The gradient engine's targets, one row per configuration: time and peak-memory ratios."""

    def ratio(row: pd.Series, top: str, bottom: str) -> str:
        a, b = row.get(top), row.get(bottom)
        return f"{a / b:.2f}" if pd.notna(a) and pd.notna(b) and b else "—"

    lines = [
        "| model | layout | K | method | hand ms | hand MiB | time: Jacobian / hand | Gramian / hand "
        "| Gramian / Jacobian | Gramian / autojac | Gramian / autogram | memory: Jacobian / hand | Gramian / hand "
        "| autojac / hand | autogram / hand |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, row in frame.iterrows():
        lines.append(
            f"| {row['model']} | {row['layout']} | {int(row['K'])} | {row['method']} | "
            + (f"{row['hand_ms']:.0f}" if pd.notna(row.get("hand_ms")) else "—")
            + " | "
            + (f"{row['hand_mib']:.0f}" if pd.notna(row.get("hand_mib")) else "—")
            + " | "
            + " | ".join(
                ratio(row, top, bottom)
                for top, bottom in (
                    ("mtlscope_ms", "hand_ms"),
                    ("gramian_ms", "hand_ms"),
                    ("gramian_ms", "mtlscope_ms"),
                    ("gramian_ms", "torchjd_ms"),
                    ("gramian_ms", "autogram_ms"),
                    ("mtlscope_mib", "hand_mib"),
                    ("gramian_mib", "hand_mib"),
                    ("torchjd_mib", "hand_mib"),
                    ("autogram_mib", "hand_mib"),
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    parser.add_argument("--ks", help="numbers of tasks (default 2,3,10,40; --quick: 2,10)")
    parser.add_argument("--models", help=f"comma-separated: {', '.join(ENCODERS)} (default mlp,lenet; --quick: mlp)")
    parser.add_argument("--layouts", default="multi-input,shared-input")
    parser.add_argument("--steps", "--repeats", dest="steps", type=int, help="timed steps per variant (10; --quick: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of timed steps per variant at most")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (a subprocess per variant)")
    parser.add_argument("--memory-only", action="store_true", help="measure peak memory, no timing")
    parser.add_argument("--memory-timeout", type=float, default=1800.0, help="seconds per memory subprocess")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="defaults for a smoke run: K in {2, 10}, MLP, 5 steps")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--join",
        help="comma-separated result folders (a timing run and a --memory-only run): write their joined tables "
        "into --out and measure nothing",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.join:
        joined = join_results([Path(folder) / "methods_step.csv" for folder in args.join.split(",")])
        write_tables(joined, Path(args.out), f"{args.threads} threads, B={args.batch_size} per task")
        return 0
    torch.set_num_threads(args.threads)
    _torchjd_aggregators()
    chosen = methods.available() if args.methods == "all" else args.methods.split(",")
    ks = [int(k) for k in (args.ks or ("2,10" if args.quick else "2,3,10,40")).split(",")]
    models = (args.models or ("mlp" if args.quick else "mlp,lenet")).split(",")
    unknown = sorted(set(models) - set(ENCODERS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (expected {', '.join(ENCODERS)})")
    steps = args.steps or (5 if args.quick else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "methods_step.csv"
    done = pd.read_csv(table) if table.exists() else pd.DataFrame(columns=["model", "layout", "K", "method"])
    finished = set(zip(done["model"], done["layout"], done["K"].astype(int), done["method"]))
    for model_name in models:
        for layout in args.layouts.split(","):
            for num_tasks in ks:
                for method in chosen:
                    if (model_name, layout, num_tasks, method) in finished:
                        continue
                    row = measure(
                        method,
                        num_tasks,
                        model_name,
                        layout,
                        steps,
                        args.batch_size,
                        args.budget,
                        args.memory or args.memory_only,
                        warmup=args.warmup,
                        threads=args.threads,
                        memory_timeout=args.memory_timeout,
                        timing=not args.memory_only,
                    )
                    done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                    done.to_csv(table, index=False)
                    shown = {
                        key: round(value, 2)
                        for key, value in row.items()
                        if isinstance(value, float) and (key.endswith("_ms") or key.endswith("_mib"))
                    }
                    print(f"{model_name} {layout} K={num_tasks} {method}: {shown}", flush=True)
    write_tables(done, out, f"{args.threads} threads, B={args.batch_size} per task")
    return 0


def join_results(tables: list[Path]) -> pd.DataFrame:
    """The rows of several result tables joined on (model, layout, K, method): a timing run's columns next to
    a memory run's (the first table's value wins where both have one)."""
    keys = ["model", "layout", "K", "method"]
    joined: pd.DataFrame | None = None
    for table in tables:
        frame = pd.read_csv(table).set_index(keys)
        joined = frame if joined is None else joined.combine_first(frame)
    assert joined is not None
    joined = joined.reset_index()
    for name in ("mtlscope", "gramian", "torchjd", "autogram"):
        if f"{name}_mib" in joined and "hand_mib" in joined:
            joined[f"{name}_memory_vs_hand"] = joined[f"{name}_mib"] / joined["hand_mib"]
    return joined


def write_tables(done: pd.DataFrame, out: Path, what: str) -> None:
    """``methods_step.csv`` and ``.md`` in ``out``, and ``gradient_engine.md`` when there are ResNet rows."""
    out.mkdir(parents=True, exist_ok=True)
    header = f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {what}"
    done.to_csv(out / "methods_step.csv", index=False)
    (out / "methods_step.md").write_text(header + "\n\n" + to_markdown(done.round(3), digits=3))
    written = [out / "methods_step.csv", out / "methods_step.md"]
    resnet = done[done["model"].astype(str).str.startswith("resnet")]
    if len(resnet):
        (out / "gradient_engine.md").write_text(header + "\n\n" + engine_table(resnet))
        written.append(out / "gradient_engine.md")
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    sys.exit(main())
