"""``mtlscope reproduce NAME --out DIR``: a paper preset's sweep, its figures and tables, and the report.

``reproduce(preset, out)`` writes

- ``DIR/runs/``: the sweep's run directories and manifest (``mtlscope sweep-status DIR`` follows it), and
  for a preset with the papers' protocol ``selection.csv`` and ``final.csv``;
- ``DIR/figures/`` and ``DIR/tables/``: the preset's outputs (``mtlscope.reproduce.outputs``) from the
  preset's runs — the protocol's final runs by default (``results: final``), the sweep's runs otherwise;
- ``DIR/report.html``: the HTML report of the same runs (``mtlscope.report.html``), led by the preset's
  outputs (its figures and tables, in the preset's order); what cannot be drawn is listed once at its end;
- ``DIR/summary.md``: the preset, the command's counts and time, and every output's files and table (or why
  it could not be produced).

Running it again resumes: completed runs are skipped (``mtlscope.sweeps``), the outputs are rewritten. An
output the runs cannot support is recorded in the summary and does not stop the others.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtlscope.reproduce.outputs import Produced, build_output
from mtlscope.reproduce.preset import OutputSpec, Preset, load_preset
from mtlscope.runs.config import ConfigError
from mtlscope.runs.results import RunResults, load

if TYPE_CHECKING:
    from mtlscope.report.html import PresetOutput

SUMMARY_FILE = "summary.md"
REPORT_FILE = "report.html"
RUNS_DIRECTORY = "runs"
#: Rows of each output's table shown in the summary (the files have them all).
SUMMARY_ROWS = 40


@dataclass(frozen=True)
class OutputResult:
    spec: OutputSpec
    produced: Produced | None
    error: str = ""


@dataclass(frozen=True)
class ReproduceResult:
    preset: Preset
    out: Path
    counts: dict[str, int]
    runs: int
    outputs: list[OutputResult]
    files: list[Path]
    elapsed_s: float
    log: str

    @property
    def failed_outputs(self) -> list[OutputResult]:
        return [output for output in self.outputs if output.produced is None]


def check_settings(preset: Preset) -> None:
    """One-line ``ConfigError`` when the preset needs a setting this installation does not have (not
    registered: e.g. one of a plugin that is not imported)."""
    from mtlscope.rl.config import ENVIRONMENT_SETTINGS
    from mtlscope.settings import SETTINGS_REGISTRY

    available = [*SETTINGS_REGISTRY.available(), *ENVIRONMENT_SETTINGS]
    for name in preset.settings:
        if name not in available:
            analogue = f"; run {preset.mini} for its analogue on the embedded data" if preset.mini else ""
            raise ConfigError(
                f"{preset.name}: needs the setting {name!r}, which this installation of mtlscope does not have "
                f"(available: {', '.join(available)}){analogue}"
            )


def check_data(preset: Preset, overrides: Sequence[str] = ()) -> None:
    """One-line ``ConfigError`` when a setting of the preset (with ``overrides``) cannot find its data files: the
    catalog's ``MissingDataError`` line (the expected path, where the data comes from), prefixed with the preset's
    name and followed by a pointer to ``mtlscope data``. Builds every distinct setting of the preset's runs once
    (what computing their run ids does anyway), so a preset without its data stops before anything is written."""
    from mtlscope.data.catalog import MissingDataError
    from mtlscope.runs.config import DataNotFoundError, build_setting
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.spec import expand

    try:
        if preset.has_protocol:
            plan = protocol.plan_protocol(preset.sweep, preset.source, preset.base_dir, overrides)
            configs = [candidate.config for candidate in plan.candidates]
        else:
            configs = list(expand(preset.sweep, preset.source, preset.base_dir, overrides).configs)
        specs = {config.setting.model_dump_json(exclude={"tasks"}): config.setting for config in configs}
        for spec in specs.values():
            if not spec.is_environment:  # an environment has no data files (resolving it checks its package)
                build_setting(spec, preset.name)
    except (MissingDataError, DataNotFoundError) as error:
        line = error.detail if isinstance(error, DataNotFoundError) else str(error)
        message = line.strip().splitlines()[0] if line.strip() else type(error).__name__
        pointer = "" if "`mtlscope data`" in message else "; `mtlscope data` lists every dataset and what is missing"
        raise ConfigError(f"{preset.name}: {message}{pointer}") from None


def select_runs(results: RunResults, where: Mapping[str, Sequence[Any]]) -> RunResults:
    """The runs whose runs-table column equals one of the given values, for every column of ``where``
    (numbers compare as numbers, everything else as text); ``ValueError`` for an unknown column."""
    runs = results.runs
    for column, values in where.items():
        if column not in runs.columns:
            raise ValueError(f"where: {column!r} is not a column of the runs table")
        runs = runs[runs[column].map(lambda cell, vs=values: any(_equal(cell, v) for v in vs))]
    keep = set(runs["run_id"])
    return RunResults(runs=runs, records=results.records[results.records["run_id"].isin(keep)])


def _equal(cell: Any, value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return math.isclose(float(cell), float(value), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return str(cell) == str(value)


def _only(results: RunResults, run_ids: set[str]) -> RunResults:
    return results.subset(run_ids)


def run_preset(
    preset: Preset,
    directory: Path,
    *,
    workers: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **execution: Any,
) -> tuple[RunResults, dict[str, int], int, str]:
    """Run the preset's sweep (or protocol) into ``directory``; returns the runs to analyse, the status counts
    of every run the preset planned, their number and the sweep's log lines."""
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.execution import run_sweep
    from mtlscope.sweeps.manifest import write_manifest
    from mtlscope.sweeps.spec import expand

    if preset.has_protocol:
        plan = protocol.plan_protocol(preset.sweep, preset.source, preset.base_dir, overrides)
        ran = protocol.run_protocol(plan, directory, workers=workers, progress=progress, **execution)
        outcomes = [*ran.selection_result.outcomes, *ran.final.outcomes]
        planned = {c.config.run_id() for c in plan.candidates} | {c.run_id() for c in ran.final_configs}
        loaded = protocol.load_final(directory) if preset.results == "final" else _only(load(directory), planned)
        statuses = Counter(outcome.status for outcome in {o.run_id: o for o in outcomes}.values())
        return loaded, dict(statuses), len(planned), protocol.format_result(ran)
    sweep = expand(preset.sweep, preset.source, preset.base_dir, overrides)
    write_manifest(sweep, directory, wait=execution.get("wait", False))
    result = run_sweep(sweep.configs, directory, workers=workers, progress=progress, **execution)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.counts.items()))
    log = f"sweep {sweep.name}: {len(sweep.configs)} runs: {counts} ({result.skipped} already done)"
    counted = {status: count for status, count in result.counts.items() if count}
    return _only(load(directory), set(sweep.run_ids())), counted, len(sweep.configs), log


def make_outputs(preset: Preset, results: RunResults, out: Path) -> list[OutputResult]:
    """Every output of the preset from ``results`` (filtered by its ``where``); failures are recorded."""
    made = []
    for spec in preset.outputs:
        try:
            subset = select_runs(results, spec.where)
            if subset.runs.empty:
                raise ValueError(f"no runs match where: {spec.where}")
            made.append(OutputResult(spec, build_output(spec.kind, subset, out, spec.name, dict(spec.options))))
        except (ValueError, KeyError) as error:
            made.append(OutputResult(spec, None, str(error.args[0] if error.args else error)))
    return made


def report_outputs(outputs: Sequence[OutputResult]) -> list[PresetOutput]:
    """The preset's outputs as the report's first section: figures (PNG) and tables in the preset's order; an
    output that could not be produced carries its reason (the report lists it under "Not shown")."""
    from mtlscope.report.html import PresetOutput

    shown = []
    for output in outputs:
        name = f"{output.spec.name} ({output.spec.kind})"
        produced = output.produced
        if produced is None:
            shown.append(PresetOutput(name, "", missing=output.error or "not produced"))
            continue
        images = tuple(path for path in produced.files if path.suffix == ".png")
        shown.append(PresetOutput(name, produced.title, images, produced.table, tuple(produced.notes)))
    return shown


def reproduce(
    preset: str | Path | Preset,
    out: str | Path,
    *,
    workers: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    command: str = "",
    **execution: Any,
) -> ReproduceResult:
    """Run a paper preset into ``out`` and write its outputs, report and summary (module docstring).

    ``overrides`` (``key=value``) apply to the base config of every run (e.g. ``training.epochs=2`` for a smoke
    test); ``execution`` goes to the sweep (``executor``, ``address``, ``trackers``, ``threads_per_worker``).
    Raises ``ConfigError`` (nothing written) for a bad preset, a setting this installation lacks or a setting
    whose data files are missing (``check_data``).
    """
    from mtlscope.report.html import write_report

    started = time.monotonic()
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    check_settings(preset)
    check_data(preset, overrides)
    out = Path(out)
    results, counts, planned, log = run_preset(
        preset, out / RUNS_DIRECTORY, workers=workers, overrides=overrides, progress=progress, **execution
    )
    outputs = make_outputs(preset, results, out)
    files = [path for output in outputs if output.produced for path in output.produced.files]
    if not results.runs.empty:
        title = f"{preset.name}: {preset.title}"
        files.append(write_report(results, out / REPORT_FILE, title=title, outputs=report_outputs(outputs)))
    elapsed = time.monotonic() - started
    result = ReproduceResult(preset, out, counts, planned, outputs, files, elapsed, log)
    summary = out / SUMMARY_FILE
    summary.write_text(format_summary(result, command), encoding="utf-8")
    files.append(summary)
    return result


def format_summary(result: ReproduceResult, command: str = "") -> str:
    """The Markdown summary of a reproduction (``DIR/summary.md``)."""
    from mtlscope.report.tables import to_markdown

    preset = result.preset
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.counts.items()))
    lines = [
        f"# {preset.name}: {preset.title}",
        "",
        f"{preset.paper}" + (f" — reproduces {', '.join(preset.reproduces)}" if preset.reproduces else "") + ".",
        "",
        preset.description,
        "",
        f"- command: `{command}`" if command else "- command: `mtlscope reproduce " + preset.name + "`",
        f"- runs: {result.runs} planned ({counts}); analysed: the {_analysed(preset)}",
        f"- wall time: {result.elapsed_s:.1f} s",
        "",
    ]
    for output in result.outputs:
        spec = output.spec
        heading = f"## {spec.name} ({spec.kind})"
        if output.produced is None:
            lines += [heading, "", f"Not produced: {output.error}", ""]
            continue
        produced = output.produced
        lines += [heading, "", produced.title + ".", ""]
        lines += [f"- `{path.relative_to(result.out)}`" for path in produced.files]
        lines += [f"- note: {note}" for note in produced.notes]
        lines.append("")
        if produced.table is not None and not produced.table.empty:
            table = produced.table
            shown = table.head(SUMMARY_ROWS)
            lines += [to_markdown(_plain(shown)), ""]
            if len(table) > SUMMARY_ROWS:
                lines += [f"({len(table) - SUMMARY_ROWS} more rows in the table's files)", ""]
    return "\n".join(lines)


def _analysed(preset: Preset) -> str:
    if preset.has_protocol and preset.results == "final":
        return "protocol's final runs"
    return "preset's runs"


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Drop columns that are all NaN (e.g. window_start) from a summary table."""
    return table.loc[:, [c for c in table.columns if not table[c].isna().all()]]
