"""Loading and training throughput of the real FashionMTL setting (``fashion-mtl``) with its default LeNet-5.

Needs the four Fashion-MNIST files in the data directory (``--data-dir``, default ``$MTLSCOPE_DATA``).

- Loading: ``settings.get("fashion-mtl", tasks=[fashion1, fashion2, noisy-fashion])`` in a fresh process with an
  empty cache (the IDX files are decoded into the image cache) and again in another fresh process (the cache is
  hit: the sources are hashed and the memory map opened, nothing decoded).
- Training: ``--steps`` steps of fashion1 + fashion2 (multi-task, B = ``--batch-size`` per task, Adam 1e-3,
  C = 1) with ``mtlscope.execute`` (wall time of the run minus its evaluation time, which ``timing_s`` records)
  against a hand-written PyTorch loop over the same model, the same ``CachedImageDataset``s and the same batch
  size (random batches drawn with ``dataset.batch``, summed cross-entropy, ``Adam``). One thread each.

    .venv/bin/python benchmarks/fashion_mtl.py --data-dir ~/data --out benchmarks/results

Writes ``fashion_mtl.csv`` / ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import mtlscope
from mtlscope.report.tables import to_markdown

TASKS = ["fashion1", "fashion2", "noisy-fashion"]


def load_once() -> dict[str, float]:
    from mtlscope import settings

    start = time.perf_counter()
    setting = settings.get("fashion-mtl", tasks=TASKS)
    return {"seconds": time.perf_counter() - start, "tasks": len(setting.tasks)}


def train_mtlscope(steps: int, batch_size: int, out: Path) -> float:
    from mtlscope.runs import execute, load, validate_config

    config = {
        "setting": {"name": "fashion-mtl", "tasks": ["fashion1", "fashion2"]},
        "optimizer": {"name": "adam", "lr": 0.001},
        "training": {"steps": steps, "batch_size": batch_size, "eval_every": steps, "loss_scale": 1},
    }
    start = time.perf_counter()
    outcome = execute(validate_config(config), out)
    wall = time.perf_counter() - start
    timing = load(outcome.path.parent).runs.iloc[0]["timing_s"]
    return wall - float(timing.get("evaluate_s", 0.0))


def train_by_hand(steps: int, batch_size: int) -> float:
    from mtlscope import settings
    from mtlscope.models import build_model

    setting = settings.get("fashion-mtl", tasks=["fashion1", "fashion2"])
    start = time.perf_counter()
    model = build_model(setting, {"name": "lenet5"}, {"name": "linear"}, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    datasets = [(task.name, task.train.dataset) for task in setting.tasks]
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        loss = torch.zeros(())
        for name, dataset in datasets:
            inputs, targets = dataset.batch(rng.choice(len(dataset), batch_size, replace=False))
            logits = model.heads[name](model.encoder(inputs))
            loss = loss + torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.child == "load":
        result: dict[str, Any] = load_once()
    elif args.child == "mtlscope":
        result = {"seconds": train_mtlscope(args.steps, args.batch_size, Path(args.scratch) / "runs")}
    else:
        result = {"seconds": train_by_hand(args.steps, args.batch_size)}
    print(json.dumps(result))


def run_child(kind: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size), "--scratch", args.scratch]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MTLSCOPE_DATA"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--child", choices=["load", "mtlscope", "hand"])
    parser.add_argument("--scratch", default="")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch
        env = {**os.environ, "MTLSCOPE_CACHE": str(Path(scratch) / "cache"), "OMP_NUM_THREADS": "1"}
        if args.data_dir:
            env["MTLSCOPE_DATA"] = args.data_dir
        first, cached = run_child("load", args, env), run_child("load", args, env)
        ours, hand = run_child("mtlscope", args, env), run_child("hand", args, env)
    images = args.steps * args.batch_size * 2
    rows = [
        {"measure": "load fashion-mtl, first (decode into the cache)", "mtlscope": first["seconds"], "by hand": None},
        {"measure": "load fashion-mtl, cached", "mtlscope": cached["seconds"], "by hand": None},
        {"measure": f"train {args.steps} steps, seconds", "mtlscope": ours["seconds"], "by hand": hand["seconds"]},
        {"measure": "train images/s", "mtlscope": images / ours["seconds"], "by hand": images / hand["seconds"]},
    ]
    table = pd.DataFrame(rows)
    table["mtlscope / by hand"] = table["mtlscope"] / table["by hand"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "fashion_mtl.csv", index=False)
    title = (
        f"FashionMTL (mtlscope {mtlscope.__version__}, torch {torch.__version__}, 1 thread; LeNet-5 + linear heads, "
        f"fashion1 + fashion2, B = {args.batch_size} per task, Adam 1e-3, {args.steps} steps)"
    )
    (out / "fashion_mtl.md").write_text(title + "\n\n" + to_markdown(table) + "\n")
    print(title)
    print(to_markdown(table))


if __name__ == "__main__":
    main()
