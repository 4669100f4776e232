"""Per-step time and peak memory of every multi-task method, as ratios measured side by side.

For each model (MLP, LeNet, ResNet-18 on 32x32 inputs), data layout and number of tasks K, these steps run
interleaved in one process on identical models and batches:

- ``hand``: a hand-written PyTorch step of the summed loss (one forward, one backward, optimizer step);
- ``mtlscope``: mtlscope's ``TrainingStep`` with the method on the Jacobian path (``gradient_path: jacobian``);
- ``gramian``: the same on the Gramian path (``gradient_path: gramian``), for methods that accept it;
- ``torchjd``: TorchJD's ``mtl_backward`` + ``jac_to_grad`` with the same aggregator, where TorchJD has one;
- ``autogram``: TorchJD's ``torchjd.autogram.Engine`` on the encoder (``batch_dim=None``: BatchNorm layers)
  + the same weighting from ``torchjd.aggregation``, then ``losses.backward(weights)``, where TorchJD has one.

Time is the median over ``--repeats`` steps after warm-up (fewer, at least 2, when a variant's steps
exceed ``--budget`` seconds in total: TorchJD at K = 40 on a LeNet takes seconds per step). With
``--memory``, peak memory is the maximum of the CPU memory timeline of one step from the PyTorch profiler
(or ``torch.cuda.max_memory_allocated`` on CUDA); profiling costs seconds per configuration.

    .venv/bin/python benchmarks/methods_step.py --out benchmarks/results            # timing grid
    .venv/bin/python benchmarks/methods_step.py --memory --ks 2,10 --models mlp      # with peak memory
    .venv/bin/python benchmarks/methods_step.py --quick --methods umtg,pcgrad,mgda   # a quick look
    .venv/bin/python benchmarks/methods_step.py --models resnet18 --ks 10,20,40 --batch-size 8 \
        --methods mgda,imtl_g,pcgrad --layouts shared-input --repeats 3 --memory        # the papers' scale

Rows are appended to ``methods_step.csv`` in ``--out`` as they are measured (configurations already
there are skipped, so an interrupted run continues); ``methods_step.md`` is rewritten from the CSV.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

import mtlscope
from mtlscope import methods
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.models import build_model
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.report.tables import to_markdown
from mtlscope.settings import Setting, Split, Task

# mtlscope method -> TorchJD aggregator factory (K -> aggregator)
TORCHJD: dict[str, Callable[[int], Any]] = {}
# mtlscope method -> TorchJD weighting of the Gramian (for torchjd.autogram)
AUTOGRAM: dict[str, Callable[[int], Any]] = {}


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
    shape = {"mlp": (64,), "lenet": (1, 28, 28), "resnet18": (3, 32, 32)}[model]

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
    encoder = {
        "mlp": {"name": "mlp", "hidden": [256, 256]},
        "lenet": {"name": "lenet"},
        "resnet18": {"name": "resnet", "blocks": [2, 2, 2, 2]},
    }[model]
    return Setting("bench", tasks, layout, shape, {"encoder": encoder, "head": {"name": "linear"}})  # type: ignore[arg-type]


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


def peak_memory(step: Callable[[], None]) -> float:
    """Peak memory of one step in MiB."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(s) for s in sizes) / 2**20 if sizes else float("nan")


def measure(
    method: str,
    num_tasks: int,
    model_name: str,
    layout: str,
    repeats: int,
    batch_size: int,
    budget: float,
    memory: bool,
) -> dict[str, Any]:
    setting = random_setting(num_tasks, model_name, layout)
    base = build_model(setting, dict(setting.default_model["encoder"]), {"name": "linear"}, 0)
    names = list(setting.task_names)
    batches = BatchSampler(setting, batch_size, seed=0)
    batch = batches.next()
    variants: dict[str, Callable[[], None]] = {}
    hand_model = copy.deepcopy(base)
    hand_optimizer = torch.optim.Adam(hand_model.parameters(), lr=1e-3)
    variants["hand"] = lambda: hand_step(hand_model, hand_optimizer, batch, names)
    ours_model = copy.deepcopy(base)
    ours_optimizer = torch.optim.Adam(ours_model.parameters(), lr=1e-3)
    ours_method = methods.get(method)
    ours_method.setup(setting.task_names)
    ours = TrainingStep(
        ours_model,
        setting,
        ours_method,
        ours_optimizer,
        1.0,
        torch.Generator().manual_seed(0),
        gradient_path="jacobian",
    )
    counter = iter(range(10**9))
    variants["mtlscope"] = lambda: ours(batch, next(counter)) and None
    if ours_method.accepts_gramian:
        gram_model = copy.deepcopy(base)
        gram_optimizer = torch.optim.Adam(gram_model.parameters(), lr=1e-3)
        gram_method = methods.get(method)
        gram_method.setup(setting.task_names)
        by_gramian = TrainingStep(
            gram_model,
            setting,
            gram_method,
            gram_optimizer,
            1.0,
            torch.Generator().manual_seed(0),
            gradient_path="gramian",
        )
        gram_counter = iter(range(10**9))
        variants["gramian"] = lambda: by_gramian(batch, next(gram_counter)) and None
    if method in TORCHJD:
        jd_model = copy.deepcopy(base)
        jd_optimizer = torch.optim.Adam(jd_model.parameters(), lr=1e-3)
        aggregator = TORCHJD[method](num_tasks)
        variants["torchjd"] = lambda: torchjd_step(jd_model, jd_optimizer, batch, names, aggregator)
    if method in AUTOGRAM:
        from torchjd.autogram import Engine

        ag_model = copy.deepcopy(base)
        ag_optimizer = torch.optim.Adam(ag_model.parameters(), lr=1e-3)
        ag_engine = Engine(ag_model.encoder, batch_dim=None)
        weighting = AUTOGRAM[method](num_tasks)
        variants["autogram"] = lambda: autogram_step(ag_model, ag_optimizer, batch, names, ag_engine, weighting)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(2):  # warm-up
        for run in variants.values():
            run()
    for repeat in range(repeats):
        for name, run in variants.items():
            if repeat >= 2 and sum(times[name]) > budget:
                continue
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    row: dict[str, Any] = {"model": model_name, "layout": layout, "K": num_tasks, "method": method}
    for name in variants:
        row[f"{name}_ms"] = statistics.median(times[name]) * 1e3
    row["time_vs_hand"] = row["mtlscope_ms"] / row["hand_ms"]
    row["time_vs_torchjd"] = row["mtlscope_ms"] / row["torchjd_ms"] if "torchjd" in variants else None
    if "gramian" in variants:
        row["gramian_vs_hand"] = row["gramian_ms"] / row["hand_ms"]
        row["gramian_vs_jacobian"] = row["gramian_ms"] / row["mtlscope_ms"]
        if "autogram" in variants:
            row["gramian_vs_autogram"] = row["gramian_ms"] / row["autogram_ms"]
    if memory:
        for name, run in variants.items():
            row[f"{name}_mib"] = peak_memory(run)
        row["memory_vs_hand"] = row["mtlscope_mib"] / row["hand_mib"]
        row["memory_vs_torchjd"] = row["mtlscope_mib"] / row["torchjd_mib"] if "torchjd" in variants else None
        if "gramian" in variants:
            row["gramian_memory_vs_hand"] = row["gramian_mib"] / row["hand_mib"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    parser.add_argument("--ks", default="2,3,10,40", help="numbers of tasks")
    parser.add_argument("--models", default="mlp,lenet", help="comma-separated: mlp, lenet, resnet18")
    parser.add_argument("--layouts", default="multi-input,shared-input")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of timed steps per variant at most")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (slow)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="K in {2, 10}, MLP only, 5 repeats")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _torchjd_aggregators()
    chosen = methods.available() if args.methods == "all" else args.methods.split(",")
    ks = [2, 10] if args.quick else [int(k) for k in args.ks.split(",")]
    models = ["mlp"] if args.quick else args.models.split(",")
    repeats = 5 if args.quick else args.repeats
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
                        method, num_tasks, model_name, layout, repeats, args.batch_size, args.budget, args.memory
                    )
                    done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                    done.to_csv(table, index=False)
                    print(
                        f"{model_name:5s} {layout:12s} K={num_tasks:<3d} {method:12s} "
                        f"{row['mtlscope_ms']:8.2f} ms  x{row['time_vs_hand']:.2f} hand"
                        + (f"  x{row['time_vs_torchjd']:.2f} torchjd" if row["time_vs_torchjd"] else ""),
                        flush=True,
                    )
    header = f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {args.threads} threads, B={args.batch_size}"
    (out / "methods_step.md").write_text(header + "\n\n" + to_markdown(done.round(3), digits=3))
    print(f"wrote {table} and {out / 'methods_step.md'}")


if __name__ == "__main__":
    main()
