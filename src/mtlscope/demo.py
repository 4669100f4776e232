"""The demo (``make demo`` = ``mtlscope demo --out demo-out``): transfer on the embedded digits.

Trains digits1 alone, digits1 + digits2 and digits1 + noisy-digits (the FashionMTL experiment of
Mueller et al., TMLR 2025, Figure 1, on scikit-learn's digits) for 3 seeds each, then writes

- ``runs/``: one run directory per (variant, seed);
- ``generalization_vs_loss.png`` (+ ``.svg``): digits1's test accuracy against its training loss;
- ``factors_vs_loss.png`` (+ ``.svg``): digits1's trajectory probes (sharpness, Fisher trace, gradient
  covariance trace, gradient similarity) against its training loss (the main paper's Figure 3);
- ``transfer.csv`` (+ ``transfer.md``, ``transfer.tex``): per (task, variant) ST and MT generalization over
  seeds, the delta and whether it is significant under the 2-std rule;
- ``report.html``: the self-contained HTML report of the runs (``mtlscope report``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mtlscope.analysis.transfer import transfer_table
from mtlscope.progress import Progress
from mtlscope.report.figures import factors_vs_loss, generalization_vs_loss
from mtlscope.report.html import write_report
from mtlscope.report.tables import write_table
from mtlscope.runs.config import RunConfig, apply_overrides, read_yaml, validate_config
from mtlscope.runs.launch import RunOutcome, execute, prepare
from mtlscope.runs.results import load

TARGET = "digits1"
VARIANTS: tuple[tuple[str, ...], ...] = (("digits1",), ("digits1", "digits2"), ("digits1", "noisy-digits"))


def preset_path(name: str) -> Path:
    """Path of a YAML preset shipped with mtlscope (e.g. ``demo``)."""
    return Path(str(resources.files("mtlscope") / "presets" / f"{name}.yaml"))


def demo_configs(seeds: int = 3, epochs: int | None = None, overrides: Sequence[str] = ()) -> list[RunConfig]:
    """The demo's run configs: every variant for seeds ``0..seeds-1``."""
    path = preset_path("demo")
    base = apply_overrides(read_yaml(path), overrides)
    configs = []
    for tasks in VARIANTS:
        for seed in range(seeds):
            extra = [f"setting.tasks=[{','.join(tasks)}]", f"seed={seed}"]
            if epochs is not None:
                extra.append(f"training.epochs={epochs}")
            configs.append(validate_config(apply_overrides(base, extra), str(path)))
    return configs


@dataclass(frozen=True)
class DemoOutput:
    out: Path
    outcomes: list[RunOutcome]
    files: list[Path]
    elapsed_s: float


def run_demo(
    out: str | Path,
    seeds: int = 3,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> DemoOutput:
    started = time.monotonic()
    out = Path(out)
    configs = demo_configs(seeds, epochs, overrides)
    steps_per_run = prepare(configs[0]).schedule.steps
    outcomes = []
    with Progress(steps_per_run * len(configs), "demo", unit="step", enabled=progress) as bar:
        for index, config in enumerate(configs):
            bar.note(f"{config.variant} seed {config.seed}")
            start = index * steps_per_run

            def advance(step: int, start: int = start) -> None:
                bar.advance_to(start + step)

            outcome = execute(config, out / "runs", on_step=advance, on_failure="return")
            bar.advance_to(start + steps_per_run, timed=not outcome.skipped)
            outcomes.append(outcome)
    results = load(out / "runs")
    files = generalization_vs_loss(results, TARGET, out / "generalization_vs_loss.png", metric="accuracy")
    files += factors_vs_loss(results, TARGET, out / "factors_vs_loss.png")
    table = transfer_table(results)
    files += write_table(
        table,
        out / "transfer.csv",
        title=(
            f"Transfer on digits-mtl: generalization = mean test accuracy of the 10 best validation checkpoints, "
            f"mean and std over {seeds} seeds; significant = the mean ± 2 std intervals do not overlap."
        ),
    )
    files.append(write_report(out / "runs", out / "report.html", title="mtlscope demo: transfer on digits"))
    return DemoOutput(out, outcomes, files, time.monotonic() - started)
