"""Per-step and per-probe cost of the glue setting's roberta encoder on CPU-sized RoBERTa models.

Writes tiny GLUE task folders in the official formats and a randomly initialized RoBERTa with a word-level
tokenizer (the generators of the test suite, ``tests/data/glue_files.py``: sentences of 2-8 words, so sequences of
about 6-20 tokens) to a temporary data directory, then runs the ``glue`` setting on ``--tasks`` with each model of
``--models`` (``LAYERSxHIDDEN``: 2x32 is the tests' model, 4x256 a small one; RoBERTa-base is 12x768), UMTG, Adam,
batch size ``--batch`` per task, ``--steps`` steps, checkpoints at the start and the end with every probe on its
``--subset`` training examples per task (sharpness with ``--iterations`` ascent steps). The trainer's own timing
(a run's ``timing_s``: ``train_s`` and ``probe_s/<name>``) gives the seconds per training step and per probe
measurement; ``steps`` is a probe's time in training steps. Run it from the repository root:

    PYTHONPATH=src:. python benchmarks/glue_costs.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from run_costs import costs_markdown, step_and_probe_costs  # benchmarks/run_costs.py, beside this script

import mtlscope

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' file generators
from tests.data.glue_files import write_glue, write_model


def measure(model: str, tasks: list[str], args: argparse.Namespace, out: Path) -> dict[str, float | str]:
    subset, batch = args.subset, args.batch
    probes = {
        "min_train_loss": {},
        "sharpness": {"subset": subset, "batch_size": min(subset, batch), "iterations": args.iterations},
        "fim_trace": {"subset": subset, "batch_size": min(subset, batch)},
        "grad_cov_trace": {"subset": subset, "large_batch": subset, "small_batch": max(1, subset // 4)},
        "grad_similarity": {"batches": 1},
    }
    config = {
        "setting": {"name": "glue", "tasks": tasks, "options": {"max_length": args.max_length}},
        "model": {
            "encoder": {"name": "roberta", "path": os.path.join(os.environ["MTLSCOPE_DATA"], "models", model)},
            "head": {"name": "linear"},
        },
        "optimizer": {"name": "adam", "lr": 1e-4},
        "training": {"steps": args.steps, "eval_every": args.steps, "batch_size": batch, "train_eval_limit": 8},
        "probes": {**probes, "affinity": {"every_steps": args.steps}},
        "seed": 0,
    }
    run = mtlscope.execute(mtlscope.validate_config(config), out / model)
    row: dict[str, float | str] = {"model": model, "batch": batch, "subset": subset}
    row.update(step_and_probe_costs(run.path, args.steps))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models", default="2x32,4x256")
    parser.add_argument("--tasks", default="cola,stsb")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--subset", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20, help="sharpness ascent iterations (the default: 20)")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        os.environ["MTLSCOPE_DATA"] = str(root / "data")
        write_glue(root / "data", train_rows=max(64, 2 * args.subset))
        for model in args.models.split(","):
            layers, hidden = (int(value) for value in model.split("x"))
            write_model(root / "data" / "models" / model, layers=layers, hidden=hidden)
        write_model(root / "data" / "roberta-base")  # the setting's default tokenizer (the same word list)
        for model in args.models.split(","):
            rows.append(measure(model, args.tasks.split(","), args, root / "runs"))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False), file=sys.stdout)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "glue_costs.csv", index=False)
        (args.out / "glue_costs.md").write_text(costs_markdown(table, "model", "model (layers x hidden)"))


if __name__ == "__main__":
    main()
