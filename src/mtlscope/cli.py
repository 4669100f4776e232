"""The ``mtlscope`` command line.

    mtlscope run CONFIG [key=value ...] [--out DIR] [--force] [--threads N] [--plugin MODULE ...] [--wait] [--quiet]
                 [--mlflow URI] [--tensorboard DIR]
    mtlscope demo [--out DIR] [--seeds N] [--epochs N] [--quiet]
    mtlscope settings
    mtlscope runs DIR
    mtlscope analyze DIR [--out DIR] [--format markdown|latex|csv]
    mtlscope report DIR [--out report.html]
    mtlscope sweep FILE [key=value ...] [--out DIR] [--workers N] [--threads N] [--executor local|ray] [--address ADDR]
                   [--force RUN_ID ...] [--restart-failed] [--wait] [--dry-run] [--max-runs N] [--plugin MODULE ...]
                   [--quiet]
                   [--mlflow URI] [--tensorboard DIR]
    mtlscope sweep-status DIR [--workers N]
    mtlscope reproduce NAME [key=value ...] [--out DIR] [--workers N] [--threads N] [--executor local|ray]
                       [--address ADDR] [--wait] [--dry-run] [--quiet] [--mlflow URI] [--tensorboard DIR]
    mtlscope reproduce --list
    mtlscope data [-v] [--data-dir DIR]
    mtlscope data check NAME [--data-dir DIR] [--quiet]
    mtlscope data download NAME [--data-dir DIR] [--wait] [--quiet]

``run``, ``sweep`` and ``reproduce`` take ``--threads N``: torch threads per run (``run``: default torch's) or per
worker (default: cores // workers), recorded in each run's ``environment.json``, not part of run ids
(``mtlscope.runs.threads``). They take ``--data-dir DIR``: the folder real datasets are read from, for every
run (the runs' ``data_dir`` key, not part of their run ids) and every worker (``MTLSCOPE_DATA``); see
docs/data.md.

Exit codes: 0 success (a diverged run is a result, not an error), 1 a run failed (``data check``: a file is
not ok; ``data download``: a file could not be fetched), 2 bad input (config, arguments, paths, a missing data
file) or an output directory (or run) in use by another mtlscope process (without ``--wait``) — in which case
nothing is written, 130 interrupted (Ctrl-C; running the same command again resumes).

The current directory is put in front of the import path (as ``python -m`` does), so the modules a config names
by import path or under ``plugins`` (``--plugin``) can live next to it.

Progress goes to stderr: a bar on a terminal, plain periodic lines in a log (``mtlscope.progress``); ``--quiet``
shows none. A damaged stored run is skipped by ``runs``, ``analyze`` and ``report`` with one ``warning:`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import mtlscope
from mtlscope.messages import clip
from mtlscope.runs.results import DamagedRunWarning

if TYPE_CHECKING:
    from mtlscope.reproduce.preset import Preset


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


INTERRUPTED = "interrupted; run the same command to resume"
INTERRUPTED_EXIT_CODE = 130


def _output_directory(value: str | Path) -> Path:
    """``--out`` as a directory path: ``UsageError`` when it, or a directory above it, exists as a file."""
    out = Path(value)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "exists and is not a directory" if path == out else f"is inside {path}, which is a file"
                raise UsageError(f"{out}: --out {where}; expected a directory")
            break
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from mtlscope.runs.config import load_config
    from mtlscope.runs.launch import execute, prepare

    _output_directory(args.out)
    threads = _threads_argument(args.threads)
    config = load_config(args.config, _with_data_dir(args), plugins=args.plugin)
    steps = prepare(config, args.config).schedule.steps
    trackers = _tracker_specs(args)
    from mtlscope.progress import Progress

    with Progress(steps, config.variant, unit="step", enabled=not args.quiet) as bar:
        outcome = execute(
            config,
            args.out,
            force=args.force,
            wait=args.wait,
            on_step=bar.advance_to,
            source=args.config,
            trackers=trackers,
            on_failure="return",  # a failed run is the one line below and exit code 1
            threads=threads,
        )
    if outcome.skipped:
        print(f"{outcome.path}: {outcome.message} (use --force to run it again)")
        return 0
    print(f"{outcome.path}: {outcome.status}" + (f" ({outcome.message})" if outcome.message else ""))
    return 1 if outcome.status == "failed" else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mtlscope.demo import run_demo

    _output_directory(args.out)
    output = run_demo(args.out, seeds=args.seeds, epochs=args.epochs, progress=not args.quiet)
    statuses = pd.Series([o.status for o in output.outcomes]).value_counts().to_dict()
    print(
        f"runs: {len(output.outcomes)} in {output.out / 'runs'} ({', '.join(f'{v} {k}' for k, v in statuses.items())})"
    )
    for path in output.files:
        print(f"wrote {path}")
    print((output.out / "transfer.md").read_text())
    print(f"demo finished in {output.elapsed_s:.1f} s")
    return 1 if "failed" in statuses else 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from mtlscope.data.catalog import MissingDataError
    from mtlscope.settings import SETTINGS_REGISTRY

    for name in SETTINGS_REGISTRY.available():
        entry = SETTINGS_REGISTRY.entry(name)
        options = ", ".join(f"{k}={v!r}" for k, v in entry.options().items())
        if "data_dir" in entry.options():  # a real-data setting: its files are read when it is used, not listed
            print(f"{name}: {entry.description}")
            print(f"  options: {options}")
            print("  - reads its data files when used (`mtlscope data` shows where they are looked for)")
            continue
        try:
            setting = entry.builder()
        except MissingDataError as error:  # a setting reading files that are not in the data directory
            print(f"{name}: {entry.description}")
            print(f"  options: {options}")
            print(f"  - data not installed: {error}")
            continue
        print(f"{name} ({setting.layout}): {entry.description}")
        print(f"  options: {options}")
        for line in setting.summary().splitlines():
            print(f"  - {line}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from mtlscope.runs.results import load

    try:
        results = load(args.directory)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if results.runs.empty:
        print(f"{args.directory}: no runs" + _skipped_note(results.skipped))
        return 0
    columns = [
        "run_id",
        "status",
        "variant",
        "method",
        "optimizer",
        "lr",
        "batch_size",
        "loss_scale",
        "seed",
        "steps",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 48):
        print(results.runs[columns].to_string(index=False))
    counts = results.runs["status"].value_counts().to_dict()
    counted = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"{len(results.runs)} runs: {counted}{_skipped_note(results.skipped)}")
    return 0


def _skipped_note(skipped: Sequence[object]) -> str:
    """`` (2 damaged runs skipped)`` after a count, or nothing."""
    return f" ({len(skipped)} damaged run{'s' if len(skipped) != 1 else ''} skipped)" if skipped else ""


def _tracker_specs(args: argparse.Namespace, sweep: str | None = None) -> list[dict[str, object]]:
    """Tracker specs from ``--mlflow``/``--tensorboard`` (checked, and the MLflow experiment created, here)."""
    from mtlscope.runs.tracking import prepare_trackers

    specs: list[dict[str, object]] = []
    if args.mlflow:
        spec: dict[str, object] = {"kind": "mlflow", "uri": args.mlflow, "experiment": args.mlflow_experiment}
        if sweep:
            spec["tags"] = {"sweep": sweep}
        specs.append(spec)
    if args.tensorboard:
        specs.append({"kind": "tensorboard", "logdir": args.tensorboard})
    return prepare_trackers(specs) if specs else []


def _sweep_name(file: str) -> str:
    """The ``name`` of a sweep file (default: its file name without suffix), for tracker tags."""
    from mtlscope.runs.config import read_yaml

    data = read_yaml(Path(file))
    name = data.get("name") if isinstance(data, dict) else None
    return str(name or Path(file).stem)


def _add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow", metavar="URI", help="also log to this MLflow tracking URI (docs/tracking.md)")
    parser.add_argument("--mlflow-experiment", metavar="NAME", default="mtlscope", help="MLflow experiment")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files under DIR/<run_id>/")


def _add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="show no progress (only the result lines)")


def _add_threads_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--threads", default=None, metavar="N", help=f"torch threads {default}")


def _threads_argument(value: str | None) -> int | None:
    """``--threads`` as a positive integer (``None`` when not given), else a one-line ``UsageError``."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) < 1:
        raise UsageError(f"--threads: expected a positive integer (torch threads), got {clip(value, 40)!r}")
    return int(text)


def _add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--threads``, ``--executor``, ``--address`` and the tracking flags of commands that run
    sweeps."""
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (processes; default: 1)")
    _add_threads_argument(
        parser, "per worker (default: cores // workers; with --workers 1 torch's default; with ray 1)"
    )
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="where runs execute")
    parser.add_argument("--address", default=None, help="with --executor ray: a running cluster's HOST:PORT")
    _add_wait_argument(parser)
    _add_tracking_arguments(parser)


def _add_wait_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="if another mtlscope process is using --out (or the run), wait for it"
    )


def _results_directory(directory: str) -> Path:
    """A results directory, or a directory holding one as ``runs/`` (e.g. a demo's output)."""
    path = Path(directory)
    return path / "runs" if (path / "runs").is_dir() else path


def _check_execution(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers: expected a positive integer, got {args.workers}")
    _threads_argument(args.threads)
    if args.address is not None and args.executor != "ray":
        raise UsageError("--address: only with --executor ray (the address of a running Ray cluster)")


def _execution(args: argparse.Namespace, sweep: str) -> dict[str, Any]:
    """The sweep's executor, address and trackers from ``--executor``, ``--address``, ``--mlflow``, ... (checked)."""
    _check_execution(args)
    trackers = _tracker_specs(args, sweep)
    return {
        "executor": args.executor,
        "address": args.address,
        "trackers": trackers,
        "wait": args.wait,
        "threads_per_worker": _threads_argument(args.threads),
    }


def _cmd_report(args: argparse.Namespace) -> int:
    from mtlscope.report.html import write_report

    source = _results_directory(args.directory)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"{out}: --out is a directory; expected an HTML file path")
    try:
        written = write_report(source, out)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {written}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mtlscope.runs.locking import hold_directory
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.execution import run_sweep
    from mtlscope.sweeps.manifest import write_manifest
    from mtlscope.sweeps.spec import load_sweep

    _output_directory(args.out)
    if args.max_runs is not None and args.max_runs < 1:
        raise UsageError(f"--max-runs: expected a positive integer, got {args.max_runs}")
    execution = _execution(args, _sweep_name(args.file))
    execution.update(force=set(args.force), restart_failed=args.restart_failed)
    overrides = _with_data_dir(args)

    if protocol.has_protocol(args.file):  # a file with a protocol mapping runs the papers' protocol
        plan = protocol.load_protocol(args.file, overrides, max_runs=args.max_runs, plugins=args.plugin)
        if args.dry_run:
            seeds = len(plan.protocol.seeds)
            print(f"protocol {plan.name}: {len(plan.candidates)} selection runs of {len(plan.labels)} variants, then")
            print(f"{seeds} seeds per variant with the selected values -> {args.out}; the selection runs:")
            for candidate in plan.candidates:
                print(candidate.config.run_id())
            return 0
        with hold_directory(args.out, wait=args.wait):
            ran = protocol.run_protocol(plan, args.out, workers=args.workers, progress=not args.quiet, **execution)
        print(protocol.format_result(ran))
        ran_ids = {outcome.run_id for outcome in [*ran.selection_result.outcomes, *ran.final.outcomes]}
        _check_forced(args.force, ran_ids, "of either stage of this protocol")
        return 1 if ran.selection_result.counts.get("failed", 0) + ran.final.counts.get("failed", 0) else 0
    sweep = load_sweep(args.file, overrides, max_runs=args.max_runs, plugins=args.plugin)
    out = Path(args.out)
    extra = f" ({sweep.duplicates} duplicate configs run once)" if sweep.duplicates else ""
    print(f"sweep {sweep.name}: {len(sweep.configs)} runs{extra} -> {out}")
    if args.dry_run:
        for config in sweep.configs:
            print(config.run_id())
        return 0
    _check_forced(args.force, set(sweep.run_ids()), "of this sweep")
    with hold_directory(out, wait=args.wait):
        write_manifest(sweep, out)
        result = run_sweep(sweep.configs, out, workers=args.workers, progress=not args.quiet, **execution)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.counts.items()))
    print(f"sweep {sweep.name}: {counts} ({result.skipped} already done) in {result.elapsed_s:.1f} s")
    return 1 if result.counts.get("failed", 0) else 0


def _check_forced(forced: Sequence[str], run_ids: set[str], where: str) -> None:
    unknown = [run_id for run_id in forced if run_id not in run_ids]
    if unknown:
        raise UsageError(f"--force: {clip(unknown[0])} is not a run {where} (--dry-run lists the run ids)")


def _cmd_sweep_status(args: argparse.Namespace) -> int:
    from mtlscope.sweeps.manifest import MANIFEST_FILE, read_manifest
    from mtlscope.sweeps.status import format_status, sweep_status

    out = Path(args.directory)
    if not out.is_dir():
        raise UsageError(f"{out}: no such sweep directory")
    if not (out / MANIFEST_FILE).exists() and (out / "runs" / MANIFEST_FILE).is_file():
        out = out / "runs"  # the output directory of mtlscope reproduce (or demo): its sweep is in runs/
    print(format_status(sweep_status(read_manifest(out), out, workers=args.workers)))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from mtlscope.reproduce.preset import available_presets, load_preset
    from mtlscope.reproduce.runner import check_data, check_settings, check_stages, reproduce

    if args.list:
        from mtlscope.runs.config import ConfigError

        for name in available_presets():
            preset = load_preset(name)
            try:
                check_settings(preset)
                runnable = ""
            except ConfigError:
                runnable = f"  [needs {', '.join(preset.settings)}]"
            print(f"{name}: {preset.title}{runnable}")
        return 0
    if args.name is None:
        raise UsageError("reproduce: expected a preset name (mtlscope reproduce --list shows them) or a .yaml path")
    _check_execution(args)
    preset = load_preset(args.name)
    check_settings(preset)
    check_data(preset, args.overrides)  # a missing data file: one line, before anything is written
    out = _output_directory(args.out or f"{preset.name}-out")
    overrides = _with_data_dir(args)
    if args.dry_run:
        return _dry_run_preset(preset, out, overrides)
    from mtlscope.runs.locking import hold_directory

    _expand_preset(preset, overrides)  # a bad override is one line before anything (the lock file) is written
    check_stages(preset, overrides)  # and so is a later stage whose sweep would not expand
    execution = _execution(args, preset.name)
    command = " ".join(["mtlscope reproduce", args.name, *args.overrides, "--out", str(out)])
    if args.workers > 1:
        command += f" --workers {args.workers}"
    if args.threads is not None:
        command += f" --threads {_threads_argument(args.threads)}"
    if args.data_dir is not None:
        command += f" --data-dir {os.environ[_DATA_ENV]}"
    print(f"{preset.name}: {preset.title}")
    with hold_directory(out, wait=args.wait):
        result = reproduce(
            preset,
            out,
            workers=args.workers,
            overrides=overrides,
            progress=not args.quiet,
            command=command,
            **execution,
        )
    print(result.log)
    for output in result.outputs:
        if output.produced is None:
            print(f"not produced: {output.spec.name} ({output.spec.kind}): {output.error}")
    for path in result.files:
        print(f"wrote {path}")
    print(f"{preset.name} finished in {result.elapsed_s:.1f} s")
    failed = result.counts.get("failed", 0)
    return 1 if failed or result.failed_outputs else 0


def _expand_preset(preset: Preset, overrides: Sequence[str]) -> tuple[str, list[str]]:
    """What the preset runs with ``overrides`` (a line of counts, and the run ids); ``ConfigError`` for a bad one."""
    from mtlscope.sweeps import protocol
    from mtlscope.sweeps.spec import expand

    if preset.has_protocol:
        plan = protocol.plan_protocol(preset.sweep, preset.source, preset.base_dir, overrides)
        seeds = len(plan.protocol.seeds)
        counts = (
            f"protocol with {len(plan.candidates)} selection runs of {len(plan.labels)} variants, "
            f"then {seeds} seeds per variant"
        )
        return counts, [candidate.config.run_id() for candidate in plan.candidates]
    sweep = expand(preset.sweep, preset.source, preset.base_dir, overrides)
    return f"{len(sweep.configs)} runs", sweep.run_ids()


def _dry_run_preset(preset: Preset, out: Path, overrides: Sequence[str]) -> int:
    from mtlscope.reproduce.runner import check_stages
    from mtlscope.reproduce.stages import stage_directory

    counts, run_ids = _expand_preset(preset, overrides)
    check_stages(preset, overrides)
    print(f"{preset.name}: {counts} -> {out / 'runs'}")
    for run_id in run_ids:
        print(run_id)
    print("outputs: " + ", ".join(f"{spec.name} ({spec.kind})" for spec in preset.outputs))
    for stage in preset.stages:
        budgets = ", ".join(str(count) for count in stage.splits)
        extra = f" and the baselines {', '.join(stage.baselines)}" if stage.baselines else ""
        print(
            f"then stage {stage.name}: one set of runs per distinct group of output {stage.source} (split budgets "
            f"{budgets}){extra} -> {stage_directory(out, stage) / 'runs'}"
        )
        print("  outputs: " + ", ".join(f"{spec.name} ({spec.kind})" for spec in stage.outputs))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mtlscope.report.summary import key_tables, table_name
    from mtlscope.report.tables import to_latex, to_markdown, write_table
    from mtlscope.runs.results import load

    source = _results_directory(args.directory)
    out = _output_directory(args.out) if args.out is not None else None
    try:
        results = load(source)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if results.runs.empty:
        raise UsageError(
            f"{source}: no runs found (expected run directories, e.g. from mtlscope run or demo)"
            + _skipped_note(results.skipped)
        )
    entries = key_tables(results)
    written = []
    for title, table, reading in entries:
        if args.format == "markdown":
            print(f"## {title}\n\n{reading}\n")
            if not table.empty:
                print(to_markdown(table))
        elif args.format == "latex":
            print(f"% {title}: {reading}")
            print(to_latex(table, caption=title) if not table.empty else "")
        else:
            print(f"# {title}: {reading}")
            print(table.to_csv(index=False) if not table.empty else "")
        if out is not None and not table.empty:
            try:
                out.mkdir(parents=True, exist_ok=True)
                written += write_table(table, out / f"{table_name(title)}.csv", title=f"{title}. {reading}")
            except OSError as error:
                raise UsageError(f"{out}: cannot write the tables ({error.strerror or error})") from None
    for path in written:
        print(f"wrote {path}")
    return 0


_DATA_ENV = "MTLSCOPE_DATA"  # mtlscope.data.catalog.DATA_ENV (not imported here: the CLI starts fast)


def _with_data_dir(args: argparse.Namespace) -> list[str]:
    """The command's overrides, with ``data_dir=DIR`` when ``--data-dir DIR`` is given (every run reads its data
    there; the key is not part of run ids), which also becomes ``MTLSCOPE_DATA`` for this process and its workers."""
    overrides = list(args.overrides)
    if getattr(args, "data_dir", None) is not None:
        overrides.append(f"data_dir={json.dumps(_data_dir_argument(args.data_dir))}")
    return overrides


def _data_dir_argument(value: str) -> str:
    """``--data-dir`` as an absolute path, set as ``MTLSCOPE_DATA``; ``UsageError`` when it is a file."""
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: --data-dir is not a directory")
    os.environ[_DATA_ENV] = str(path)
    return str(path)


def _add_data_dir_argument(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    parser.add_argument(
        "--data-dir",
        default=default,
        metavar="DIR",
        help="the folder real datasets are read from (default: $MTLSCOPE_DATA, else ~/.mtlscope/data)",
    )


def _cmd_data(args: argparse.Namespace) -> int:
    import mtlscope.data.sources  # noqa: F401 (its modules register the dataset families)
    from mtlscope.data.catalog import DATASETS, data_directory_origin, dataset_info

    data_dir = _data_dir_argument(args.data_dir) if args.data_dir is not None else None
    root, origin = data_directory_origin(data_dir)
    origin = "--data-dir" if origin == "given" else origin
    if args.action is None:
        return _list_data(sorted(DATASETS), root, origin, args.verbose)
    try:
        info = dataset_info(args.name)
    except KeyError as error:
        raise UsageError(str(error.args[0])) from None
    if args.action == "check":
        return _check_data(info.name, root, origin, quiet=args.quiet)
    return _download_data(info.name, root, origin, quiet=args.quiet, wait=args.wait)


def _list_data(names: Sequence[str], root: Path, origin: str, verbose: bool) -> int:
    from mtlscope.data.catalog import dataset_info
    from mtlscope.data.check import check_dataset, key_width

    print(f"data directory: {root} ({origin})")
    if not names:
        print("no datasets in the catalog")
        return 0
    rows = []
    for name in names:
        checks = check_dataset(name, root, checksum=False)
        bad = [check for check in checks if not check.ok]
        kinds = sorted({check.status for check in bad})
        status = "; ".join(f"{kind}: {', '.join(c.key for c in bad if c.status == kind)}" for kind in kinds)
        found = f"{len(checks) - len(bad)}/{len(checks)}"
        rows.append((name, found, status or "complete", dataset_info(name).description))
    widths = [max(len(row[column]) for row in [("dataset", "files", "status", ""), *rows]) for column in range(3)]
    print(f"{'dataset':<{widths[0]}}  {'files':<{widths[1]}}  {'status':<{widths[2]}}  description")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    if verbose:
        for name in names:
            info = dataset_info(name)
            print(f"\n{name}: {info.description}")
            print(f"  from: {info.source}" + (f" ({info.reference})" if info.reference else ""))
            for check, entry in zip(check_dataset(name, root, checksum=False), info.files, strict=True):
                print(f"  {check.line(key_width(info))}")
                if check.status != "missing" and len(entry.paths) > 1:
                    print(f"    looks for: {', '.join(str(root / path) for path in entry.paths)}")
            if info.downloadable:
                print(f"  download: mtlscope data download {name}")
    print("verify the files with `mtlscope data check NAME`" + ("" if verbose else "; -v shows every file"))
    return 0


def _check_data(name: str, root: Path, origin: str, *, quiet: bool) -> int:
    from mtlscope.data.catalog import dataset_info
    from mtlscope.data.check import check_dataset, key_width

    print(f"{name} in {root} ({origin}):")
    checks = check_dataset(name, root, progress=not quiet)
    for check in checks:
        print(check.line(key_width(dataset_info(name))))
    bad = [check for check in checks if not check.ok]
    if not bad:
        print(f"{name}: all {len(checks)} files ok")
        return 0
    hint = f"; `mtlscope data download {name}` fetches them" if dataset_info(name).downloadable else ""
    print(f"{name}: {len(bad)} of {len(checks)} files not ok{hint}")
    return 1


def _download_data(name: str, root: Path, origin: str, *, quiet: bool, wait: bool) -> int:
    from mtlscope.data.download import download_dataset

    print(f"{name} -> {root} ({origin}):")
    if download_dataset(name, root, progress=not quiet, wait=wait):
        print(f"{name}: every file present and verified")
        return 0
    print(f"{name}: not complete (the lines above say why); running the command again resumes")
    return 1


def _add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, for the components it registers; recorded in the config (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlscope", description="See how multi-task learning changes optimization.")
    parser.add_argument("--version", action="version", version=f"mtlscope {mtlscope.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train one run config")
    run.add_argument("config", help="YAML run config")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optimizer.lr=0.01")
    run.add_argument("--out", default="runs-out", help="results directory (default: runs-out)")
    run.add_argument("--force", action="store_true", help="run again even when already completed")
    _add_threads_argument(run, "of the run (default: torch's)")
    _add_data_dir_argument(run)
    _add_plugin_argument(run)
    _add_wait_argument(run)
    _add_quiet_argument(run)
    _add_tracking_arguments(run)
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser("demo", help="the transfer demo on the embedded digits data")
    demo.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    demo.add_argument("--seeds", type=int, default=3, help="seeds per variant (default: 3)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    _add_quiet_argument(demo)
    demo.set_defaults(handler=_cmd_demo)

    settings = commands.add_parser("settings", help="list the settings and their tasks")
    settings.set_defaults(handler=_cmd_settings)

    runs = commands.add_parser("runs", help="list the runs stored under a directory")
    runs.add_argument("directory")
    runs.set_defaults(handler=_cmd_runs)

    analyze = commands.add_parser("analyze", help="print the key tables of stored runs, with a reading of each")
    analyze.add_argument("directory", help="results directory (or a directory containing runs/, e.g. a demo's)")
    analyze.add_argument("--out", default=None, help="also write each table as CSV, Markdown and LaTeX here")
    analyze.add_argument(
        "--format",
        choices=("markdown", "latex", "csv"),
        default="markdown",
        help="how to print the tables (default: markdown)",
    )
    analyze.set_defaults(handler=_cmd_analyze)

    report = commands.add_parser("report", help="write a self-contained HTML report of stored runs")
    report.add_argument("directory", help="results directory (or a directory containing runs/, e.g. a demo's)")
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    report.set_defaults(handler=_cmd_report)

    sweep = commands.add_parser("sweep", help="expand a sweep file and run every run (skipping finished ones)")
    sweep.add_argument("file", help="YAML sweep file (see docs/sweeps.md)")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides of the base config, e.g. training.epochs=5")
    sweep.add_argument("--out", default="sweep-out", help="results directory (default: sweep-out)")
    _add_execution_arguments(sweep)
    sweep.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="run this run again from scratch, even when completed (repeatable)",
    )
    sweep.add_argument(
        "--restart-failed", action="store_true", help="run failed runs again from scratch instead of resuming them"
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded run ids and stop")
    _add_data_dir_argument(sweep)
    _add_plugin_argument(sweep)
    _add_quiet_argument(sweep)
    sweep.add_argument(
        "--max-runs", type=int, default=None, help="refuse a sweep of more runs (default: the file's max_runs, 100000)"
    )
    sweep.set_defaults(handler=_cmd_sweep)

    status = commands.add_parser("sweep-status", help="done / running / failed / diverged / remaining, and an ETA")
    status.add_argument("directory", help="the --out of mtlscope sweep (or of mtlscope reproduce)")
    status.add_argument("--workers", type=int, default=1, help="workers assumed for the ETA (default: 1)")
    status.set_defaults(handler=_cmd_sweep_status)

    reproduce = commands.add_parser(
        "reproduce", help="run a paper preset: its sweep, figures and tables, and the report (docs/experiments.md)"
    )
    reproduce.add_argument("name", nargs="?", help="a preset name (see --list) or a preset .yaml file")
    reproduce.add_argument("overrides", nargs="*", help="key=value overrides of every run, e.g. training.epochs=5")
    reproduce.add_argument("--list", action="store_true", help="list the presets and stop")
    reproduce.add_argument("--out", default=None, help="output directory (default: <name>-out)")
    _add_execution_arguments(reproduce)
    reproduce.add_argument("--dry-run", action="store_true", help="print the runs and outputs, run nothing")
    _add_data_dir_argument(reproduce)
    _add_quiet_argument(reproduce)
    reproduce.set_defaults(handler=_cmd_reproduce)

    data = commands.add_parser("data", help="the real datasets: what is found where, check or download them")
    data.add_argument("-v", "--verbose", action="store_true", help="show every file of every dataset")
    _add_data_dir_argument(data)
    data.set_defaults(handler=_cmd_data, action=None)
    actions = data.add_subparsers(dest="action")
    check = actions.add_parser("check", help="verify every file of a dataset (sizes and known checksums)")
    download = actions.add_parser(
        "download", help="fetch a dataset's official files (checksums verified; re-running resumes)"
    )
    for action in (check, download):
        action.add_argument("name", help="a dataset (mtlscope data lists them)")
        _add_data_dir_argument(action, default=argparse.SUPPRESS)  # given before or after the action
        _add_quiet_argument(action)
    _add_wait_argument(download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; Ctrl-C anywhere ends it with one line and exit code 130, no traceback."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DamagedRunWarning)
            warnings.showwarning = _show_warning
            return _main(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """A damaged stored run is one ``warning: ...`` line on stderr; other warnings are shown as Python shows them."""
    if issubclass(category, DamagedRunWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _main(argv: Sequence[str] | None) -> int:
    from mtlscope.data.catalog import MissingDataError
    from mtlscope.data.download import DownloadError
    from mtlscope.runs.config import ConfigError
    from mtlscope.runs.locking import InUseError
    from mtlscope.runs.tracking import TrackingError

    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # as with python -m: modules of the current directory import (plugins, factories)
        sys.path.insert(0, os.getcwd())
    if getattr(args, "seeds", 1) is not None and getattr(args, "seeds", 1) < 2 and args.command == "demo":
        print(
            "error: --seeds: expected at least 2 (the transfer table needs a standard deviation)",
            file=sys.stderr,
        )
        return 2
    if args.command == "demo" and args.epochs is not None and args.epochs < 1:
        print("error: --epochs: expected a positive integer", file=sys.stderr)
        return 2
    data_env = os.environ.get(_DATA_ENV)
    try:
        code: int = args.handler(args)
        return code
    except (ConfigError, UsageError, TrackingError, InUseError, MissingDataError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:  # --data-dir set it for this command (and its workers) only
        if data_env is None:
            os.environ.pop(_DATA_ENV, None)
        else:
            os.environ[_DATA_ENV] = data_env


if __name__ == "__main__":
    sys.exit(main())
