"""Per-step and per-probe cost of the CPU dense model (``segnet`` + ``conv`` heads) on Cityscapes- and NYUv2-sized
images.

Writes synthetic files in MTAN's layout (``--train`` training and 4 validation samples at the real sizes,
128x256 and 288x384; the cost does not depend on the values) to a temporary data directory, then runs the
``cityscapes`` (semantic segmentation + depth) and ``nyuv2`` (semantic segmentation, depth, normals) settings
with the default SegNet-style encoder (channels 16, 32, 64) and 1x1 conv heads, UMTG, Adam, batch size
``--batch``, ``--steps`` steps, checkpoints at the start and the end with every probe on its ``--subset``
training examples (``--iterations`` sharpness ascent steps). The trainer's own timing (a run's ``timing_s``:
``train_s`` and ``probe_s/<name>``) gives the seconds per training step and per probe measurement (the
measurements counted in the records); ``steps`` is a probe's time in training steps.

    .venv/bin/python benchmarks/dense_segnet.py --out benchmarks/results
    .venv/bin/python benchmarks/dense_segnet.py --settings cityscapes --steps 4 --subset 8 --iterations 5 \
        --threads 2 --out benchmarks/results      # what docs/settings.md reports (busy 2-core machine)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from run_costs import costs_markdown, step_and_probe_costs  # benchmarks/run_costs.py, beside this script

import mtlscope


def write_files(root: Path, name: str, size: tuple[int, int], train: int, val: int) -> None:
    rng = np.random.default_rng(0)
    fields = (
        {"label_7": (), "label_19": (), "depth": (1,)}
        if name == "cityscapes"
        else {"label": (), "depth": (1,), "normal": (3,)}
    )
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            folder = root / name / split
            (folder / "image").mkdir(parents=True, exist_ok=True)
            np.save(folder / "image" / f"{index}.npy", rng.random((*size, 3), dtype=np.float32))
            for field, channels in fields.items():
                (folder / field).mkdir(exist_ok=True)
                if field.startswith("label"):
                    classes = {"label_7": 7, "label_19": 19, "label": 13}[field]
                    array = rng.integers(-1, classes, size=size).astype(np.float32)
                else:
                    array = rng.random((*size, *channels), dtype=np.float32) + 0.1
                np.save(folder / field / f"{index}.npy", array)


def measure(name: str, steps: int, batch: int, subset: int, iterations: int, out: Path) -> dict[str, float | str]:
    probes = {
        "min_train_loss": {},
        "sharpness": {"subset": subset, "batch_size": min(subset, 8), "iterations": iterations},
        "fim_trace": {"subset": subset, "batch_size": min(subset, 16)},
        "grad_cov_trace": {"subset": subset, "large_batch": subset, "small_batch": max(1, subset // 4)},
        "grad_similarity": {"batches": 1},
    }
    config = {
        "setting": {"name": name, "options": {"val_size": 2, "validation": "held_out"}},
        "model": {"encoder": {"name": "segnet"}, "head": {"name": "conv"}},
        "optimizer": {"name": "adam", "lr": 0.001},
        "training": {"steps": steps, "eval_every": steps, "batch_size": batch, "train_eval_limit": 4},
        "probes": {**probes, "affinity": {"every_steps": steps}},
        "seed": 0,
    }
    run = mtlscope.execute(mtlscope.validate_config(config), out / name)
    row: dict[str, float | str] = {"setting": name, "batch": batch, "subset": subset}
    row.update(step_and_probe_costs(run.path, steps))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--subset", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20, help="sharpness ascent iterations (the default: 20)")
    parser.add_argument("--settings", default="cityscapes,nyuv2")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        os.environ["MTLSCOPE_DATA"] = str(root / "data")
        os.environ["MTLSCOPE_CACHE"] = str(root / "cache")
        sizes = {"cityscapes": (128, 256), "nyuv2": (288, 384)}
        for name in args.settings.split(","):
            write_files(root / "data", name, sizes[name], args.train, 4)
            rows.append(measure(name, args.steps, args.batch, args.subset, args.iterations, root / "runs"))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False), file=sys.stdout)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "dense_segnet.csv", index=False)
        (args.out / "dense_segnet.md").write_text(costs_markdown(table, "setting", "setting"))


if __name__ == "__main__":
    main()
