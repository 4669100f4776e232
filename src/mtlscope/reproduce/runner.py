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
- for each later stage of the preset (``stages``), in order, after the outputs of the stages before it:
  ``DIR/stages/NAME/`` with the grouping that fed it, its sweep file and its runs (``mtlscope.reproduce.
  stages``); its outputs go to ``DIR/figures/`` and ``DIR/tables/`` like the others.

Running it again resumes: completed runs are skipped (``mtlscope.sweeps``), in every stage, the outputs are
rewritten. An output the runs cannot support is recorded in the summary and does not stop the others; a stage
whose source output could not be produced does not run, and its outputs are recorded as not produced, with why.
One process at a time: ``reproduce`` holds ``DIR`` (``mtlscope.runs.locking``) from its first write to its last;
another process on the same ``DIR`` gets ``InUseError`` naming the holder (or waits, with ``wait=True``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtlscope.reproduce.outputs import OUTPUTS, Produced, build_output
from mtlscope.reproduce.preset import OutputSpec, Preset, StageSpec, load_preset
from mtlscope.runs.config import ConfigError
from mtlscope.runs.results import RunResults, load
from mtlscope.runs.store import write_atomic

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
    #: The stage the output belongs to ("" for the preset's first stage).
    stage: str = ""


@dataclass(frozen=True)
class StageResult:
    """What one later stage did: its directory, counts, planned runs, log line, the groups it trained and the
    files that fed it; ``error`` says why it did not run (then nothing else is set)."""

    stage: StageSpec
    directory: Path
    counts: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    log: str = ""
    groups: list[list[str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class ReproduceResult:
    """``counts``, ``runs`` and ``log``: of every stage together; ``stages``: the later stages' own."""

    preset: Preset
    out: Path
    counts: dict[str, int]
    runs: int
    outputs: list[OutputResult]
    files: list[Path]
    elapsed_s: float
    log: str
    stages: list[StageResult] = field(default_factory=list)

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
    """Run the preset's (first stage's) sweep or protocol into ``directory``; returns the runs to analyse, the
    status counts of every run the preset planned, their number and the sweep's log lines."""
    return run_sweep_mapping(
        preset.sweep,
        preset.source,
        preset.base_dir,
        preset.results,
        directory,
        workers=workers,
        overrides=overrides,
        progress=progress,
        **execution,
    )


def run_sweep_mapping(
    sweep: Mapping[str, Any],
    source: str,
    base_dir: Path,
    results: str,
    directory: Path,
    *,
    workers: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **execution: Any,
) -> tuple[RunResults, dict[str, int], int, str]:
    """Run a sweep mapping (with or without a ``protocol``) into ``directory``: ``run_preset`` for any stage;
    ``results`` is ``final`` (a protocol's final runs) or ``all``."""
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.execution import run_sweep
    from mtlscope.sweeps.manifest import write_manifest
    from mtlscope.sweeps.spec import expand

    if "protocol" in sweep:
        plan = protocol.plan_protocol(sweep, source, base_dir, overrides)
        ran = protocol.run_protocol(plan, directory, workers=workers, progress=progress, **execution)
        outcomes = [*ran.selection_result.outcomes, *ran.final.outcomes]
        planned = {c.config.run_id() for c in plan.candidates} | {c.run_id() for c in ran.final_configs}
        loaded = protocol.load_final(directory) if results == "final" else _only(load(directory), planned)
        statuses = Counter(outcome.status for outcome in {o.run_id: o for o in outcomes}.values())
        return loaded, dict(statuses), len(planned), protocol.format_result(ran)
    expanded = expand(sweep, source, base_dir, overrides)
    write_manifest(expanded, directory, wait=execution.get("wait", False))
    result = run_sweep(expanded.configs, directory, workers=workers, progress=progress, **execution)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.counts.items()))
    log = f"sweep {expanded.name}: {len(expanded.configs)} runs: {counts} ({result.skipped} already done)"
    counted = {status: count for status, count in result.counts.items() if count}
    return _only(load(directory), set(expanded.run_ids())), counted, len(expanded.configs), log


def make_outputs(preset: Preset, results: RunResults, out: Path) -> list[OutputResult]:
    """Every output of the preset's first stage from ``results`` (filtered by its ``where``); failures are
    recorded."""
    return _make_outputs(preset.outputs, results, out)


def _make_outputs(
    specs: Sequence[OutputSpec],
    results: RunResults,
    out: Path,
    stage: str = "",
    groupings: Sequence[Mapping[str, Any]] | None = None,
) -> list[OutputResult]:
    """The outputs ``specs`` of one stage; an output kind with a ``groupings`` option not given in the preset gets
    the stage's ``groupings`` (the budgets of its ``grouping.json``)."""
    made = []
    for spec in specs:
        options = dict(spec.options)
        if groupings is not None and "groupings" in OUTPUTS.entry(spec.kind).options():
            options.setdefault("groupings", [dict(budget) for budget in groupings])
        try:
            subset = select_runs(results, spec.where)
            if subset.runs.empty:
                raise ValueError(f"no runs match where: {spec.where}")
            made.append(OutputResult(spec, build_output(spec.kind, subset, out, spec.name, options), stage=stage))
        except (ValueError, KeyError) as error:
            made.append(OutputResult(spec, None, str(error.args[0] if error.args else error), stage=stage))
    return made


def check_stages(preset: Preset, overrides: Sequence[str] = ()) -> None:
    """One-line ``ConfigError`` when a later stage's sweep would not expand (checked with one group, the first
    run's tasks, before anything runs)."""
    from mtlscope.reproduce.stages import stage_sweep
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.spec import expand

    if not preset.stages:
        return
    if preset.has_protocol:
        plan = protocol.plan_protocol(preset.sweep, preset.source, preset.base_dir, overrides)
        first = plan.candidates[0].config
    else:
        first = expand(preset.sweep, preset.source, preset.base_dir, overrides).configs[0]
    tasks = list(first.setting.tasks or [])
    for index, stage in enumerate(preset.stages):
        where = f"{preset.source}: stages[{index}] ({stage.name})"
        sweep = stage_sweep(preset, stage, [tasks], overrides)
        if "protocol" in sweep:
            protocol.plan_protocol(sweep, where, preset.base_dir)
        else:
            expand(sweep, where, preset.base_dir)


def run_stage(
    preset: Preset,
    stage: StageSpec,
    source: OutputSpec,
    source_results: RunResults,
    out: Path,
    *,
    workers: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **execution: Any,
) -> tuple[StageResult, RunResults, list[dict[str, Any]]]:
    """Derive ``stage``'s grouping from the runs of its source output, write ``grouping.json`` and ``sweep.yaml``,
    then run the stage's sweep into its ``runs/`` (``mtlscope.reproduce.stages``). Returns the stage's result,
    the runs to analyse and the budgets of its grouping. ``ValueError`` when no grouping can be derived."""
    from mtlscope.reproduce.stages import (
        RUNS_DIRECTORY as STAGE_RUNS,
    )
    from mtlscope.reproduce.stages import (
        SWEEP_FILE,
        derive_grouping,
        reuse_finished_runs,
        stage_directory,
        stage_sweep,
        write_stage_files,
    )

    directory = stage_directory(out, stage)
    grouping = derive_grouping(stage, source, source_results)
    sweep = stage_sweep(preset, stage, grouping["groups"], overrides)
    files = write_stage_files(directory, grouping, sweep)
    earlier = [out / RUNS_DIRECTORY]
    for before in preset.stages[: preset.stages.index(stage)]:
        earlier.append(stage_directory(out, before) / STAGE_RUNS)
    reused = reuse_finished_runs(earlier, directory / STAGE_RUNS, grouping["groups"])
    results, counts, planned, log = run_sweep_mapping(
        sweep,
        str(directory / SWEEP_FILE),
        directory,
        stage.results,
        directory / STAGE_RUNS,
        workers=workers,
        progress=progress,
        **execution,
    )
    log = f"stage {stage.name}: {log}" + (f"; {reused} finished runs copied from earlier stages" if reused else "")
    done = StageResult(stage, directory, counts, planned, log, grouping["groups"], files)
    return done, results, grouping["budgets"]


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
    from mtlscope.runs.locking import hold_directory

    started = time.monotonic()
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    check_settings(preset)
    check_data(preset, overrides)
    check_stages(preset, overrides)
    out = Path(out)
    with hold_directory(out, wait=execution.get("wait", False)):
        results, counts, planned, log = run_preset(
            preset, out / RUNS_DIRECTORY, workers=workers, overrides=overrides, progress=progress, **execution
        )
        outputs = make_outputs(preset, results, out)
        stages, later, analysed = _later_stages(
            preset, out, outputs, results, workers=workers, overrides=overrides, progress=progress, **execution
        )
        outputs += later
        totals = Counter(counts)
        for done in stages:
            totals.update(done.counts)
        logs = [log, *(done.log for done in stages)]
        combined = _combined([results, *analysed])
        files = [path for done in stages for path in done.files]
        files += [path for output in outputs if output.produced for path in output.produced.files]
        if not combined.runs.empty:
            title = f"{preset.name}: {preset.title}"
            files.append(write_report(combined, out / REPORT_FILE, title=title, outputs=report_outputs(outputs)))
        elapsed = time.monotonic() - started
        runs = planned + sum(done.runs for done in stages)
        result = ReproduceResult(preset, out, dict(totals), runs, outputs, files, elapsed, "\n".join(logs), stages)
        summary = out / SUMMARY_FILE
        write_atomic(summary, format_summary(result, command))
    files.append(summary)
    return result


def _later_stages(
    preset: Preset,
    out: Path,
    outputs: Sequence[OutputResult],
    results: RunResults,
    *,
    workers: int,
    overrides: Sequence[str],
    progress: bool,
    **execution: Any,
) -> tuple[list[StageResult], list[OutputResult], list[RunResults]]:
    """Run the preset's later stages in order after the first stage's ``outputs`` (from ``results``): each
    stage's result, the outputs of all of them and the runs each analysed. A stage whose source output was not
    produced, or whose grouping cannot be derived, does not run: its outputs say why."""
    from mtlscope.reproduce.stages import stage_directory

    made_from = {output.spec.name: (output, results) for output in outputs}
    none = RunResults(results.runs[:0], results.records[:0])
    stages: list[StageResult] = []
    made_all: list[OutputResult] = []
    analysed: list[RunResults] = []
    for stage in preset.stages:
        source, source_results = made_from[stage.source]
        error = ""
        if source.produced is None:
            error = f"its source output {stage.source!r} was not produced ({source.error})"
        else:
            try:
                done, stage_runs, budgets = run_stage(
                    preset,
                    stage,
                    source.spec,
                    source_results,
                    out,
                    workers=workers,
                    overrides=overrides,
                    progress=progress,
                    **execution,
                )
            except ValueError as problem:
                error = str(problem.args[0] if problem.args else problem)
        if error:
            stages.append(
                StageResult(
                    stage, stage_directory(out, stage), log=f"stage {stage.name}: did not run: {error}", error=error
                )
            )
            reason = f"stage {stage.name!r} did not run: {error}"
            made = [OutputResult(spec, None, reason, stage=stage.name) for spec in stage.outputs]
            made_from.update({output.spec.name: (output, none) for output in made})
        else:
            stages.append(done)
            analysed.append(stage_runs)
            made = _make_outputs(stage.outputs, stage_runs, out, stage.name, budgets)
            made_from.update({output.spec.name: (output, stage_runs) for output in made})
        made_all += made
    return stages, made_all, analysed


def _combined(parts: Sequence[RunResults]) -> RunResults:
    """The runs of several stages as one ``RunResults`` (a run id in two stages' directories counted once, the
    earlier stage's)."""
    if len(parts) == 1:
        return parts[0]
    runs = pd.concat([part.runs for part in parts], ignore_index=True)
    runs = runs.drop_duplicates("run_id", keep="first").reset_index(drop=True)
    records = []
    seen: set[str] = set()
    for part in parts:
        fresh = set(part.runs["run_id"]) - seen
        records.append(part.records[part.records["run_id"].isin(fresh)])
        seen |= fresh
    skipped = [entry for part in parts for entry in part.skipped]
    return RunResults(runs=runs, records=pd.concat(records, ignore_index=True), skipped=skipped)


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
    ]
    for done in result.stages:
        lines += _stage_lines(done, result.out)
    lines.append("")
    for output in result.outputs:
        spec = output.spec
        heading = f"## {spec.name} ({spec.kind})" + (f", stage {output.stage}" if output.stage else "")
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


def _stage_lines(done: StageResult, out: Path) -> list[str]:
    stage = done.stage
    budgets = ", ".join(str(count) for count in stage.splits)
    head = f"- stage {stage.name}: from output {stage.source} (split budgets {budgets})"
    if done.error:
        return [f"{head}: did not run: {done.error}"]
    counts = ", ".join(f"{count} {status}" for status, count in sorted(done.counts.items()))
    groups = "; ".join("{" + ", ".join(group) + "}" for group in done.groups)
    files = ", ".join(f"`{path.relative_to(out)}`" for path in done.files)
    return [f"{head}: {len(done.groups)} groups ({groups}), {done.runs} runs ({counts}); fed by {files}"]


def _analysed(preset: Preset) -> str:
    if preset.has_protocol and preset.results == "final":
        return "protocol's final runs"
    return "preset's runs"


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Drop columns that are all NaN (e.g. window_start) from a summary table."""
    return table.loc[:, [c for c in table.columns if not table[c].isna().all()]]
