"""First-decode speed of the celeba setting: JPEG decoding and 64x64 resizing into the image cache.

CelebA's 202,599 aligned faces (178x218 RGB JPEGs) are decoded once into the image cache, uint8 [N, 3, 64, 64]
(``mtlscope.data.sources.celeba.decode_images``; later runs map the cached array). This benchmark writes
``--images`` (default 1000) synthetic JPEGs of CelebA's size and format (smooth colour gradients with seeded
noise, JPEG quality 95; CelebA's own files average about 7 KiB), decodes them with 1, 2 and 4 decoding threads,
and reports images per second and the time the full dataset's first decode would take at that speed.

    .venv/bin/python benchmarks/celeba_decode.py --out benchmarks/results

Writes ``celeba_decode.csv`` / ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mtlscope
from mtlscope.data.sources.celeba import IMAGE_SIZE, decode_images
from mtlscope.report.tables import to_markdown

WIDTH, HEIGHT = 178, 218
CELEBA_IMAGES = 202_599


def write_jpegs(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    paths = []
    for index in range(count):
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-0.6, 0.6, size=(3, 2))
        channels = [base[c] + slope[c, 0] * ys + slope[c, 1] * xs for c in range(3)]
        image = np.stack(channels, axis=-1) + rng.normal(0, 4, size=(HEIGHT, WIDTH, 3))
        path = folder / f"{index + 1:06d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=95)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=lambda text: [int(v) for v in text.split(",")], default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtlscope-celeba-bench-") as scratch:
        paths = write_jpegs(Path(scratch), args.images)
        mean_kib = sum(path.stat().st_size for path in paths) / len(paths) / 1024
        out = np.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        decode_images(paths[:64], out[:64], workers=1)  # warm-up (imports, allocator)
        for threads in args.threads:
            start = time.perf_counter()
            decode_images(paths, out, workers=threads)
            elapsed = time.perf_counter() - start
            rate = len(paths) / elapsed
            rows.append(
                {
                    "decoding_threads": threads,
                    "images_per_s": rate,
                    "full_celeba_first_decode_min": CELEBA_IMAGES / rate / 60,
                }
            )
    table = pd.DataFrame(rows)
    meta = (
        f"CelebA first decode (mtlscope {mtlscope.__version__}, torch {torch.__version__}, {os.cpu_count()} cores): "
        f"{args.images} synthetic {WIDTH}x{HEIGHT} JPEGs (mean {mean_kib:.1f} KiB) decoded and resized to "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}; the last column extrapolates to CelebA's {CELEBA_IMAGES:,} images"
    )
    print(meta)
    print(to_markdown(table, digits=3))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "celeba_decode.csv", index=False)
        (args.out / "celeba_decode.md").write_text(f"{meta}\n\n{to_markdown(table, digits=3)}\n")


if __name__ == "__main__":
    main()
