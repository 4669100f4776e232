"""GPU readiness check: a ResNet-18 multi-task run on CIFAR-shaped random data with every probe on, a small model's
CPU and CUDA trajectories compared, step times, peak memory and host round-trips per step.

Parts (each printed, and written to ``gpu_check.md`` / ``gpu_check.json`` under ``--out``):

1. **ResNet-18 run** on the best device (CUDA when present, else CPU): ``--tasks`` classification tasks (10 classes
   each) on ``--images`` random 3x32x32 images (shared-input layout, seeded), the ``resnet`` encoder (ResNet-18
   widths; ``--quick``: one block per stage of width 8, probes on a few examples), linear heads, SGD + momentum,
   batch ``--batch-size``,
   ``--steps`` steps, every probe on at every checkpoint (``sharpness``, ``fim_trace``, ``grad_cov_trace``,
   ``grad_similarity``, ``affinity``, ``min_train_loss``), with ``training.autocast`` off and, on CUDA, ``bf16``.
   Reported: ms per training step, seconds per probe (from the run's ``summary.json`` timing), peak memory
   (``torch.cuda.max_memory_allocated`` on CUDA; the process's peak resident memory on CPU).
2. **Host round-trips per step** of every method (``mtlscope.engine.host_sync.HostSyncCounter``: the calls that
   would make Python wait for a GPU, counted on any device) on a small multi-input setting; on CUDA also the
   synchronizations that ``torch.cuda.set_sync_debug_mode("warn")`` reports during ``umtg`` steps.
3. **CPU vs CUDA trajectory** of a small MLP run (``digits-mtl``, ``--trajectory-steps`` steps, TF32 off): every
   recorded train/val/test loss and metric must agree within ``rtol=1e-3, atol=1e-4`` (float32 reductions run in
   another order on the GPU; the trajectories must not drift apart beyond that). Skipped, saying so, without CUDA.

    .venv/bin/python benchmarks/gpu_check.py --out benchmarks/results          # on a machine with a GPU
    .venv/bin/python benchmarks/gpu_check.py --quick --out /tmp/gpu-check      # tiny sizes (what the tests run)

Exit code 1 when the CPU and CUDA trajectories disagree beyond the tolerance or a run does not complete.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtlscope
from mtlscope.engine.host_sync import HostSyncCounter
from mtlscope.engine.trainer import ListSink
from mtlscope.losses import cross_entropy
from mtlscope.methods.registry import METHODS
from mtlscope.runs import execute, read_records, validate_config
from mtlscope.runs.launch import _trainer, prepare
from mtlscope.settings import Setting, TaskSpec, from_arrays

PROBES = ("sharpness", "fim_trace", "grad_cov_trace", "grad_similarity", "affinity", "min_train_loss")
#: ``--quick``: the probes on a few examples (the full check runs them with their defaults, as a real run would).
QUICK_PROBES: dict[str, dict[str, Any]] = {
    "sharpness": {"iterations": 2, "batch_size": 8, "subset": 16},
    "fim_trace": {"batch_size": 8, "subset": 16},
    "grad_cov_trace": {"large_batch": 16, "small_batch": 4, "subset": 16},
    "grad_similarity": {"batches": 2, "batch_size": 8},
}
RTOL, ATOL = 1e-3, 1e-4
CLASSES = 10


def cifar_shaped(tasks: int, images: int, seed: int = 0) -> Setting:
    """``tasks`` 10-class tasks on the same ``images`` random 3x32x32 images (train; val and test: a quarter)."""
    rng = np.random.default_rng(seed)
    specs = [TaskSpec(f"task{k}", CLASSES, loss=cross_entropy()) for k in range(tasks)]

    def split(size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        inputs = rng.standard_normal((size, 3, 32, 32)).astype(np.float32)
        return inputs, {spec.name: rng.integers(0, CLASSES, size) for spec in specs}

    held_out = max(8, images // 4)
    data = {"train": split(images), "val": split(held_out), "test": split(held_out)}
    return from_arrays("cifar-shaped", specs, data, layout="shared-input", default_model={})


def resnet_run(args: argparse.Namespace, device: str, autocast: str, out: Path) -> dict[str, Any]:
    encoder: dict[str, Any] = {"name": "resnet"}
    if args.quick:
        encoder.update(blocks=[1, 1, 1, 1], widths=[8, 8, 8, 8])
    config = {
        "model": {"encoder": encoder, "head": {"name": "linear"}},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "training": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": args.steps,
            "device": device,
            "autocast": autocast,
            "save_state": False,
        },
        "probes": {name: {"every": 1, **(QUICK_PROBES.get(name, {}) if args.quick else {})} for name in PROBES},
        "seed": 0,
    }
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    outcome = execute(config, out / f"resnet-{device}-{autocast}", setting=cifar_shaped(args.tasks, args.images))
    wall = time.perf_counter() - started
    summary = json.loads((outcome.path / "summary.json").read_text())
    timing = summary["timing_s"]
    if device == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
    return {
        "device": device,
        "autocast": autocast,
        "status": outcome.status,
        "tasks": args.tasks,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "ms_per_step": 1000 * timing.get("train_s", float("nan")) / args.steps,
        "evaluate_s": timing.get("evaluate_s", float("nan")),
        "probe_s": {key.split("/", 1)[1]: value for key, value in timing.items() if key.startswith("probe_s/")},
        "wall_s": wall,
        "peak_mib": peak,
        "peak_kind": peak_kind,
    }


def host_round_trips(methods: list[str], steps: int = 3) -> dict[str, dict[str, Any]]:
    """Per method: host round-trips per training step made by mtlscope's code (own) and inside torch, on a small
    multi-input setting (digits-mtl, MLP, SGD), with the source lines of mtlscope's own."""
    found = {}
    for method in methods:
        config = validate_config(
            {
                "setting": {"name": "digits-mtl"},
                "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
                "method": {"name": method},
                "optimizer": {"name": "sgd", "lr": 0.01},
                "training": {"batch_size": 16, "steps": steps + 1, "device": "cpu"},
            }
        )
        trainer = _trainer(prepare(config), ListSink(), None, None)
        trainer.model.train()
        counter = HostSyncCounter()
        for step in range(steps):
            batch = trainer.sampler.next()
            with counter:
                trainer.step_fn(batch, step)
        lines = sorted({where.rsplit("/src/", 1)[-1] for _, where in counter.calls})
        found[method] = {"own": counter.own / steps, "in_torch": (counter.total - counter.own) / steps, "where": lines}
    return found


def cuda_syncs(steps: int = 5) -> float:
    """Synchronizations per ``umtg`` step on CUDA, as ``torch.cuda.set_sync_debug_mode("warn")`` reports them."""
    config = validate_config(
        {
            "setting": {"name": "digits-mtl"},
            "model": {"encoder": {"name": "mlp", "hidden": [64, 32]}},
            "optimizer": {"name": "sgd", "lr": 0.01},
            "training": {"batch_size": 32, "steps": steps + 2, "device": "cuda"},
        }
    )
    trainer = _trainer(prepare(config), ListSink(), None, None)
    trainer.model.train()
    trainer.step_fn(trainer.sampler.next(), 0)  # warm-up (lazy initializations)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in range(1, steps + 1):
                trainer.step_fn(trainer.sampler.next(), step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def trajectory(device: str, steps: int, out: Path) -> Any:
    config = {
        "setting": {"name": "digits-mtl"},
        "model": {"encoder": {"name": "mlp", "hidden": [64, 32]}},
        "optimizer": {"name": "adam", "lr": 0.001},
        "training": {"steps": steps, "eval_every": max(1, steps // 4), "device": device, "save_state": False},
        "seed": 0,
    }
    outcome = execute(validate_config(config), out / f"trajectory-{device}")
    records = read_records(outcome.path)
    records = records[records["split"].isin(["train", "val", "test"])]
    return records.sort_values(["step", "task", "split", "metric"]).reset_index(drop=True)


def compare_trajectories(steps: int, out: Path) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"ran": False, "note": "no CUDA device: the CPU-vs-CUDA trajectory comparison was skipped"}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu, cuda = trajectory("cpu", steps, out), trajectory("cuda", steps, out)
    same_rows = cpu[["step", "task", "split", "metric"]].equals(cuda[["step", "task", "split", "metric"]])
    a, b = cpu["value"].to_numpy(), cuda["value"].to_numpy()
    difference = np.abs(a - b) if same_rows else np.array([np.inf])
    within = bool(same_rows and np.all(difference <= ATOL + RTOL * np.abs(a)))
    return {
        "ran": True,
        "within_tolerance": within,
        "max_abs_difference": float(difference.max()),
        "rows": len(cpu),
        "tolerance": f"rtol={RTOL}, atol={ATOL}",
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU check ({report['meta']})", "", "ResNet run (every probe at every checkpoint):", ""]
    lines += ["| device | autocast | status | ms/step | probes s | peak MiB | peak of |", "| --- " * 7 + "|"]
    for row in report["resnet"]:
        probes = ", ".join(f"{name} {seconds:.2f}" for name, seconds in row["probe_s"].items())
        lines.append(
            f"| {row['device']} | {row['autocast']} | {row['status']} | {row['ms_per_step']:.1f} | {probes} | "
            f"{row['peak_mib']:.0f} | {row['peak_kind']} |"
        )
    lines += ["", "Host round-trips per training step (own: mtlscope's code; in torch: e.g. optimizer counters):", ""]
    lines += ["| method | own | in torch | where (own) |", "| --- | --- | --- | --- |"]
    for method, row in report["host_round_trips"].items():
        lines.append(f"| {method} | {row['own']:g} | {row['in_torch']:g} | {'; '.join(row['where'])} |")
    if report.get("cuda_syncs_per_umtg_step") is not None:
        lines += ["", f"CUDA synchronizations per umtg step (sync debug mode): {report['cuda_syncs_per_umtg_step']:g}"]
    trajectory_report = report["trajectory"]
    if trajectory_report["ran"]:
        verdict = "within" if trajectory_report["within_tolerance"] else "NOT within"
        lines += [
            "",
            f"CPU vs CUDA trajectory ({trajectory_report['rows']} records): max |difference| "
            f"{trajectory_report['max_abs_difference']:.2e}, {verdict} {trajectory_report['tolerance']}",
        ]
    else:
        lines += ["", trajectory_report["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a narrow ResNet, few images and steps")
    parser.add_argument("--tasks", type=int, default=None, help="tasks of the ResNet run (default 10; quick 2)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 2048; quick 32)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the ResNet run (default 50; quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch (default 64; quick 8)")
    parser.add_argument("--methods", default=None, help="methods of part 2, comma-separated (default: all; quick: 2)")
    parser.add_argument("--trajectory-steps", type=int, default=200, help="steps of the CPU-vs-CUDA runs")
    args = parser.parse_args(argv)
    defaults = {"tasks": (10, 2), "images": (2048, 32), "steps": (50, 2), "batch_size": (64, 8)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.quick and args.methods is None:
        args.methods = "umtg,mgda"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "no CUDA device"
    threads = torch.get_num_threads()
    meta = f"mtlscope {mtlscope.__version__}, torch {torch.__version__}, {device} ({gpu}), {threads} CPU threads"
    report: dict[str, Any] = {"meta": meta + (", --quick" if args.quick else "")}
    with tempfile.TemporaryDirectory(prefix="mtlscope-gpu-check-") as scratch:
        runs = Path(scratch)
        modes = ["off", "bf16"] if device == "cuda" else ["off"]
        report["resnet"] = [resnet_run(args, device, mode, runs) for mode in modes]
        report["host_round_trips"] = host_round_trips(args.methods.split(",") if args.methods else METHODS.available())
        report["cuda_syncs_per_umtg_step"] = cuda_syncs() if device == "cuda" else None
        report["trajectory"] = compare_trajectories(args.trajectory_steps, runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    failed = any(row["status"] != "completed" for row in report["resnet"])
    failed |= report["trajectory"]["ran"] and not report["trajectory"]["within_tolerance"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
