"""Sweep throughput with 1 and 2 workers on the local and the Ray executor, and the executors' overhead per run.

The runs of a mini preset (default ``temperature-fig1-mini``: 3 loss scales of the six digits-attributes tasks,
SGD + momentum, no probes; ``--seeds`` per variant, default 4, so 12 runs share evenly between 2 workers;
``--epochs`` overrides its epochs) run into a fresh directory once per (executor, workers).

- ``local``: ``run_sweep(workers=N)`` with its defaults — 1 worker runs in this process with torch's default
  threads (all cores); N > 1 is a spawn pool with cores / N torch threads per worker — and 1 worker with 1
  thread;
- ``ray``: a fresh local Ray instance started with ``num_cpus=N`` (inside the timed region: its start-up is part
  of the executor's cost), one CPU and one torch thread per task.

Reported per row: wall time of the whole sweep, runs per minute, the speed-up over the same executor's first
row, and the overhead per run = (sweep wall time − the runs' own wall times / workers) / runs, where a run's
own wall time is its ``summary.json`` ``wall_time_s`` (from building the run to its summary): process start-up
(spawn, imports, Ray's workers), config transfer and result collection.

    .venv/bin/python benchmarks/sweep_throughput.py --out benchmarks/results

Writes ``sweep_throughput.csv`` / ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import mtlscope
from mtlscope.report.tables import to_markdown
from mtlscope.reproduce.preset import load_preset
from mtlscope.runs.config import RunConfig
from mtlscope.sweeps.execution import run_sweep
from mtlscope.sweeps.spec import expand


def sweep_configs(preset: str, epochs: int | None, seeds: int | None) -> list[RunConfig]:
    """The runs of a mini preset without a protocol (its sweep's expansion), with ``epochs`` per run and
    ``seeds`` seeds per variant (default: the preset's)."""
    loaded = load_preset(preset)
    if loaded.has_protocol:
        raise SystemExit(f"{preset}: has a protocol; pick a preset whose sweep is one stage")
    sweep = {**loaded.sweep, **({"seeds": seeds} if seeds is not None else {})}
    overrides = [f"training.epochs={epochs}"] if epochs is not None else []
    return list(expand(sweep, loaded.source, loaded.base_dir, overrides).configs)


def measure(executor: str, workers: int, configs: list[RunConfig], threads: int | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mtlscope-sweep-bench-") as out:
        started = time.perf_counter()
        if executor == "ray":
            import ray

            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            try:
                result = run_sweep(configs, out, progress=False, executor="ray", threads_per_worker=1)
            finally:
                ray.shutdown()
        else:
            result = run_sweep(configs, out, workers=workers, progress=False, threads_per_worker=threads)
        wall = time.perf_counter() - started
        own = sum(json.loads((o.path / "summary.json").read_text())["wall_time_s"] for o in result.outcomes)
    runs = len(configs)
    assert result.counts.get("completed") == runs, result.counts
    return {
        "executor": executor,
        "workers": workers,
        "threads": threads or (1 if executor == "ray" else max(1, (os.cpu_count() or 1) // workers)),
        "runs": runs,
        "wall_s": wall,
        "runs_per_min": 60 * runs / wall,
        "run_wall_s_mean": own / runs,
        "overhead_per_run_s": (wall - own / workers) / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--preset", default="temperature-fig1-mini", help="a mini preset without a protocol")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    parser.add_argument(
        "--seeds", type=int, default=4, help="seeds per variant (default 4: 12 runs, an even share per worker)"
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--executors", default="local,ray")
    args = parser.parse_args()
    configs = sweep_configs(args.preset, args.epochs, args.seeds)
    rows = []
    for executor in args.executors.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            rows.append(measure(executor, workers, configs))
            print(json.dumps(rows[-1]), flush=True)
            if executor == "local" and workers == 1 and (os.cpu_count() or 1) > 1:
                rows.append(measure(executor, workers, configs, threads=1))  # the in-process run with 1 thread
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    first = table.groupby("executor")["wall_s"].transform("first")
    table["speedup"] = first / table["wall_s"]  # over the executor's first row: 1 worker with its default threads
    args.out.mkdir(parents=True, exist_ok=True)
    epochs = f"{args.epochs} epochs per run" if args.epochs else "the preset's epochs"
    meta = (
        f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"preset {args.preset} ({len(configs)} runs, {epochs})"
    )
    table.to_csv(args.out / "sweep_throughput.csv", index=False)
    (args.out / "sweep_throughput.md").write_text(f"Sweep throughput ({meta})\n\n{to_markdown(table, digits=3)}\n")
    print(to_markdown(table, digits=3))


if __name__ == "__main__":
    main()
