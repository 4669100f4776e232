"""Sweep throughput with 1 and 2 local workers, and the executor's overhead per run.

A mini sweep — the demo's base config (digits-mtl, MLP [128, 16], Adam) over ``--runs`` seeds of
digits1 + digits2 for ``--epochs`` epochs, no probes — runs into a fresh directory once per worker count.
Reported per worker count: wall time of the whole sweep, runs per minute, the speed-up over 1 worker, and
the executor's overhead per run = (sweep wall time − the runs' own wall times / workers) / runs, where a
run's own wall time is its ``summary.json`` ``wall_time_s`` (from building the run to its summary). The
overhead is what the executor adds: process start-up (spawn, imports), config transfer, result collection.

    .venv/bin/python benchmarks/sweep_throughput.py --out benchmarks/results

Writes ``sweep_throughput.csv`` / ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import mtlscope
from mtlscope.demo import preset_path
from mtlscope.report.tables import to_markdown
from mtlscope.runs.config import apply_overrides, read_yaml, validate_config
from mtlscope.sweeps.execution import run_sweep


def sweep_configs(runs: int, epochs: int) -> list:
    base = apply_overrides(
        read_yaml(preset_path("demo")),
        ["setting.tasks=[digits1,digits2]", f"training.epochs={epochs}", "probes={}"],
    )
    return [validate_config({**base, "seed": seed}) for seed in range(runs)]


def measure(workers: int, runs: int, epochs: int) -> dict:
    configs = sweep_configs(runs, epochs)
    with tempfile.TemporaryDirectory(prefix="mtlscope-sweep-bench-") as out:
        started = time.perf_counter()
        result = run_sweep(configs, out, workers=workers, progress=False)
        wall = time.perf_counter() - started
        own = sum(json.loads((o.path / "summary.json").read_text())["wall_time_s"] for o in result.outcomes)
    assert result.counts.get("completed") == runs, result.counts
    return {
        "workers": workers,
        "runs": runs,
        "wall_s": wall,
        "runs_per_min": 60 * runs / wall,
        "run_wall_s_mean": own / runs,
        "overhead_per_run_s": (wall - own / workers) / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        rows.append(measure(workers, args.runs, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    table["speedup"] = table["wall_s"].iloc[0] / table["wall_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = (
        f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, local executor"
    )
    table.to_csv(args.out / "sweep_throughput.csv", index=False)
    (args.out / "sweep_throughput.md").write_text(f"Sweep throughput ({meta})\n\n{to_markdown(table, digits=3)}\n")
    print(to_markdown(table, digits=3))


if __name__ == "__main__":
    main()
