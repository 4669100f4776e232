"""Batch throughput and peak memory of the cached uint8 image dataset against a float32 tensor of the same images.

``--images`` (default 20000) synthetic 3x32x32 uint8 images (CIFAR's shape, seeded) are written as a raw source
file and decoded once into an image cache (``cached_images``; the fill and a later hit are timed). Then, each
in a fresh process so that its peak memory is its own:

- ``cached``: ``CachedImageDataset`` over the cache's read-only memory map, normalized on the fly;
- ``float32``: the images loaded and normalized once into one float32 tensor ``[N, 3, 32, 32]`` (what a loader
  without the cache holds), read through a ``TensorDataset``.

Each process reads ``--batches`` random batches of ``--batch-size`` (same seeded indices for both) two ways:
``gather`` — one call per batch (``dataset.batch(idx)`` / ``tensor[idx]``) — and ``loader`` — a
``DataLoader(num_workers=0)`` over the dataset (``__getitems__`` for the cache, one item at a time for the
``TensorDataset``). Reported: images per second, the setup time (opening the cache / loading and converting),
the process's peak resident memory above its state after the imports (``VmHWM``; for the cache this counts the
memory map's file pages, which the page cache holds and the kernel can drop), its own (anonymous) memory after
the reads, and each ratio cached / float32.

    .venv/bin/python benchmarks/image_cache.py --out benchmarks/results

Writes ``image_cache.csv`` / ``.md`` to ``--out``.
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
from torch.utils.data import DataLoader, TensorDataset

import mtlscope
from mtlscope.data.image_cache import CachedImageDataset, cached_images
from mtlscope.report.tables import to_markdown

SHAPE = (3, 32, 32)
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def decode_raw(sources: list[Path]) -> np.ndarray:
    return np.fromfile(sources[0], dtype=np.uint8).reshape(-1, *SHAPE)


def throughput(read: Any, batches: list[np.ndarray]) -> float:
    read(batches[0])  # first touch outside the timing
    start = time.perf_counter()
    for index in batches:
        read(index)
    return sum(len(index) for index in batches) / (time.perf_counter() - start)


def measure(variant: str, source: Path, cache: Path, batches: int, batch_size: int) -> dict[str, Any]:
    """One variant in this process: setup, both reading paths, memory."""
    torch.set_num_threads(1)
    torch.ones(64, 64).mul(2)
    before, anonymous_before = status_mb("VmHWM"), status_mb("RssAnon")
    start = time.perf_counter()
    if variant == "cached":
        images = cached_images([source], decode_raw, cache, decoder="raw-cifar-shape/1", name="bench")
        targets = torch.arange(len(images)) % 10
        dataset: Any = CachedImageDataset(images, targets, mean=MEAN, std=STD)
        gather = dataset.batch
    else:
        images = decode_raw([source])
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        inputs = torch.from_numpy(images).float().div_(255).sub_(mean).div_(std)  # in place: one float32 copy
        del images
        targets = torch.arange(len(inputs)) % 10
        dataset = TensorDataset(inputs, targets)

        def gather(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            position = torch.from_numpy(index)
            return inputs[position], targets[position]

    setup_s = time.perf_counter() - start
    count = len(dataset)
    generator = np.random.default_rng(0)
    indices = [generator.integers(0, count, batch_size) for _ in range(batches)]
    gather_rate = throughput(gather, indices)
    loader = DataLoader(dataset, batch_sampler=[index.tolist() for index in indices], num_workers=0)
    start = time.perf_counter()
    for _ in loader:
        pass
    loader_rate = batches * batch_size / (time.perf_counter() - start)
    return {
        "variant": variant,
        "setup_s": setup_s,
        "gather_images_per_s": gather_rate,
        "loader_images_per_s": loader_rate,
        "peak_mb": status_mb("VmHWM") - before,
        "own_mb": status_mb("RssAnon") - anonymous_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--measure", nargs=3, metavar=("VARIANT", "SOURCE", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        variant, source, cache = args.measure
        print(json.dumps(measure(variant, Path(source), Path(cache), args.batches, args.batch_size)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        source, cache = Path(scratch) / "images.bin", Path(scratch) / "cache"
        np.random.default_rng(0).integers(0, 256, size=(args.images, *SHAPE), dtype=np.uint8).tofile(source)
        start = time.perf_counter()
        cached_images([source], decode_raw, cache, decoder="raw-cifar-shape/1", name="bench")
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        cached_images([source], decode_raw, cache, decoder="raw-cifar-shape/1", name="bench")
        hit_s = time.perf_counter() - start
        rows = []
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        for variant in ("cached", "float32"):
            command = [sys.executable, __file__, "--measure", variant, str(source), str(cache)]
            command += ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows)
    ratio = {"variant": "cached / float32"} | {
        column: table.loc[0, column] / table.loc[1, column] for column in table.columns if column != "variant"
    }
    table = pd.concat([table, pd.DataFrame([ratio])], ignore_index=True)
    meta = (
        f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, 1 thread, {args.images} images of "
        f"{'x'.join(map(str, SHAPE))} ({args.images * int(np.prod(SHAPE)) / 2**20:.1f} MiB uint8), "
        f"{args.batches} random batches of {args.batch_size}; cache fill {fill_s:.3f} s, cache hit {hit_s:.3f} s"
    )
    print(meta)
    print(to_markdown(table, digits=3))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "image_cache.csv", index=False)
        (args.out / "image_cache.md").write_text(f"Image cache ({meta})\n\n{to_markdown(table, digits=3)}\n")


if __name__ == "__main__":
    main()
