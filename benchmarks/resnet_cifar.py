"""Training throughput of ResNet-18 on CIFAR-shaped inputs: mtlscope against a hand-written PyTorch loop, and the
loading time of the image cache (first decode and cached).

``--images`` (default 4096) random uint8 images 3x32x32 (seeded) are written as a raw source file and decoded
into an image cache (``cached_images``: the first call decodes and writes, the second maps the cached entry; both
timed), then read through ``CachedImageDataset`` (CIFAR-100's normalization) with 100 random classes:

- ``mtlscope``: ``mtlscope.execute`` of a one-task setting built with ``from_datasets`` over that dataset, the
  ``resnet`` encoder (CIFAR stem; ``--widths``) with a linear head, SGD + momentum 0.9, batch ``--batch-size``;
- ``hand-written``: the same encoder and head, optimizer and batch size in a plain loop over a ``DataLoader``
  (shuffled) of the same dataset: forward, cross-entropy, backward, step.

After a warm-up run of each (first-call costs), each is run for ``--steps`` and for twice as many steps, the four
runs interleaved and repeated ``--repeats`` times (median); images/s = batch x (difference in steps) / (difference
in wall time), so set-up and the evaluations at the first and last step cancel out. ``ratio`` = mtlscope's
images/s over the hand-written loop's.

    .venv/bin/python benchmarks/resnet_cifar.py --out benchmarks/results                 # ResNet-18 widths
    .venv/bin/python benchmarks/resnet_cifar.py --widths 16,32,64,128 --steps 6           # a quarter width (CPU)

Writes ``resnet_cifar.csv`` / ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

import mtlscope
from mtlscope.data.image_cache import CachedImageDataset, cached_images
from mtlscope.losses import cross_entropy
from mtlscope.models.resnet import ResNetEncoder
from mtlscope.report.tables import to_markdown
from mtlscope.settings import Setting, TaskSpec, from_datasets, register
from mtlscope.settings.cifar100 import MEAN, STD

SHAPE = (3, 32, 32)
CLASSES = 100
STATE: dict[str, Any] = {}


def decode_raw(sources: list[Path]) -> np.ndarray:
    return np.fromfile(sources[0], dtype=np.uint8).reshape(-1, *SHAPE)


def dataset() -> CachedImageDataset:
    images = STATE["images"]
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, CLASSES, len(images)))
    return CachedImageDataset(images, labels, mean=MEAN, std=STD, layout="NCHW")


@register("bench-cifar-shaped", "random CIFAR-shaped images from the image cache (benchmarks/resnet_cifar.py)")
def bench_setting() -> Setting:
    full = dataset()
    small = torch.utils.data.Subset(full, range(64))
    task = TaskSpec("classes", CLASSES, loss=cross_entropy())
    data = {"classes": {"train": full, "val": small, "test": small}}
    setting = from_datasets("bench-cifar-shaped", [task], data, default_model={})
    return dataclasses.replace(setting, options={})


def run_mtlscope(steps: int, args: argparse.Namespace, out: Path) -> float:
    config = {
        "setting": {"name": "bench-cifar-shaped"},
        "model": {"encoder": {"name": "resnet", "widths": args.widths}, "head": {"name": "linear"}},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        # evaluations (step 0 and the last) cancel out in the difference; capped so their noise stays small
        "training": {"steps": steps, "batch_size": args.batch_size, "eval_every": steps, "train_eval_limit": 64},
        "seed": 0,
    }
    start = time.perf_counter()
    outcome = mtlscope.execute(mtlscope.validate_config(config), out / f"mtlscope-{steps}")
    elapsed = time.perf_counter() - start
    if outcome.status != "completed":
        raise SystemExit(f"mtlscope run failed: {outcome}")
    return elapsed


def run_hand_written(steps: int, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    torch.manual_seed(0)
    encoder = ResNetEncoder(SHAPE, (2, 2, 2, 2), args.widths)
    model = nn.Sequential(encoder, nn.Linear(encoder.output_dim, CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(dataset(), batch_size=args.batch_size, shuffle=True, drop_last=True)
    model.train()
    done = 0
    while done < steps:
        for inputs, targets in loader:
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--widths", type=lambda text: [int(v) for v in text.split(",")], default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtlscope-resnet-bench-") as scratch:
        source, cache = Path(scratch) / "images.bin", Path(scratch) / "cache"
        np.random.default_rng(0).integers(0, 256, size=(args.images, *SHAPE), dtype=np.uint8).tofile(source)
        start = time.perf_counter()
        cached_images([source], decode_raw, cache, decoder="raw-cifar-shape/1", name="bench")
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        STATE["images"] = cached_images([source], decode_raw, cache, decoder="raw-cifar-shape/1", name="bench")
        hit_s = time.perf_counter() - start
        # warm-up (first-call costs: imports, registry, allocator), then interleaved repeats
        run_mtlscope(2, args, Path(scratch) / "warm-up")
        run_hand_written(2, args)
        extras: dict[str, list[float]] = {"mtlscope": [], "hand-written": []}
        for repeat in range(args.repeats):
            timings = {}
            for steps in (args.steps, 2 * args.steps):
                timings[("mtlscope", steps)] = run_mtlscope(steps, args, Path(scratch) / str(repeat))
                timings[("hand-written", steps)] = run_hand_written(steps, args)
            for variant in extras:
                extras[variant].append(timings[(variant, 2 * args.steps)] - timings[(variant, args.steps)])
    for variant, values in extras.items():
        extra = statistics.median(values)
        rows.append(
            {"variant": variant, "images_per_s": args.batch_size * args.steps / extra, "s_per_step": extra / args.steps}
        )
    table = pd.DataFrame(rows)
    ratio = {"variant": "mtlscope / hand-written", "images_per_s": rows[0]["images_per_s"] / rows[1]["images_per_s"],
             "s_per_step": rows[0]["s_per_step"] / rows[1]["s_per_step"]}  # fmt: skip
    table = pd.concat([table, pd.DataFrame([ratio])], ignore_index=True)
    meta = (
        f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-18 "
        f"(blocks 2,2,2,2, widths {','.join(map(str, args.widths))}), batch {args.batch_size}, {args.steps} vs "
        f"{2 * args.steps} steps (median of {args.repeats} interleaved repeats after a warm-up); "
        f"{args.images} images 3x32x32 ({args.images * int(np.prod(SHAPE)) / 2**20:.1f} "
        f"MiB uint8): first decode into the cache {fill_s:.3f} s, cached {hit_s:.4f} s"
    )
    print(meta)
    print(to_markdown(table, digits=3))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "resnet_cifar.csv", index=False)
        (args.out / "resnet_cifar.md").write_text(f"{meta}\n\n{to_markdown(table, digits=3)}\n")


if __name__ == "__main__":
    main()
