"""A self-contained HTML report of a results directory (``mtlscope report DIR --out report.html``).

One file, no external resources: figures are embedded as base64 PNG images, tables are HTML with every number
written by ``mtlscope.report.tables.format_number`` (4 significant digits; scientific below 0.001 and from
100000). Sections, in this order:

0. Preset outputs — only in the report of ``mtlscope reproduce``: the preset's own figures and tables, in the
   preset's order, each with its title and notes (``PresetOutput``);
1. Overview — what the directory holds;
2. Key tables — every table ``mtlscope.report.summary.key_tables`` finds support for, each with its
   plain-language reading;
3. Figures — generalization vs training loss (main paper Fig. 1) and factors vs loss (Fig. 3) for each task with
   single-task and multi-task runs, with a note under Fig. 1 for each phase of the comparable-loss analysis that
   holds too few checkpoints to compare (``mtlscope.analysis.phases.phase_notes``); SMTO quadrants (Fig. 4);
   similarity scatter (Figs. 5–6); temperature curves (temperature paper); the affinity heatmap and the task
   grouping (Fifty et al.) — each only where the results support it;
4. Run inventory — every run with its status, seed, hyperparameters, steps and wall time (the table scrolls
   within its box on narrow pages), the software versions found in the runs' ``environment.json``, and the
   config of one run per variant;
5. Not shown — one short list of every table, figure or preset output the results cannot support, each with
   what to run to get it (a list at the end, so a report starts with what it has).

The report never fails because an analysis lacks inputs; it fails (``ValueError``) only when the directory
holds no runs.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

import mtlscope
from mtlscope.report.tables import formatted
from mtlscope.runs.results import RunResults, load
from mtlscope.runs.store import ENVIRONMENT_FILE

#: The longest run message shown in the inventory (the run's status.json has it all).
MESSAGE_CHARS = 80

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d1d1f; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { margin-top: 1.6rem; }
.table { max-width: 100%; overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .85rem; }
.inventory table { font-size: .78rem; } .inventory td:first-child { white-space: nowrap; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.reading { background: #f6f8fa; border-left: 4px solid #4c8bf5; padding: .4rem .8rem; }
.missing li { margin: .2rem 0; } .note { font-size: .85rem; color: #555; } .warning { color: #a0322b; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
nav ul { columns: 2; } pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
"""


@dataclass(frozen=True)
class Section:
    """One ``<section>`` of the report."""

    anchor: str
    title: str
    body: str


@dataclass(frozen=True)
class PresetOutput:
    """One output of a paper preset, shown in the report's first section: its name and title, the PNG figures
    and the table it wrote (None for a figure), its notes, and ``missing`` — why it could not be produced
    (empty when it was; such an output is listed under "Not shown")."""

    name: str
    title: str
    images: tuple[Path, ...] = ()
    table: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()
    missing: str = ""


#: (what, why it is not shown / what to run), collected while the sections are built.
Missing = list[tuple[str, str]]


def write_report(
    directory: str | Path | RunResults,
    out: str | Path,
    title: str | None = None,
    outputs: Sequence[PresetOutput] = (),
) -> Path:
    """Write the report of the runs below ``directory`` (or of already loaded results, e.g. a protocol's
    final runs) to ``out`` (one HTML file); returns its path. ``outputs``: a preset's outputs, shown first.

    Raises ``FileNotFoundError`` for a missing directory and ``ValueError`` when it holds no runs; nothing is
    written then. The file is written at once (to a temporary name, then renamed).
    """
    if isinstance(directory, RunResults):
        results, name, empty = directory, Path(out).stem, "no runs to report"
    else:
        root = Path(directory)
        results, name = load(root), root.name
        empty = f"{root}: no runs found (expected run directories with status.json)"
    if results.runs.empty:
        raise ValueError(empty)
    page = build_report(results, title or f"mtlscope report: {name}", outputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)
    return out


def build_report(results: RunResults, title: str, outputs: Sequence[PresetOutput] = ()) -> str:
    """The report's HTML for ``results`` (module docstring), led by the preset's ``outputs`` when given."""
    missing: Missing = []
    sections = [_preset_outputs(outputs, missing)] if outputs else []
    with tempfile.TemporaryDirectory(prefix="mtlscope-report-") as scratch:
        sections += [
            _overview(results),
            _key_tables(results, missing),
            _figures(results, Path(scratch), missing),
            _inventory(results),
        ]
    if missing:
        sections.append(_not_shown(missing))
    contents = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>Generated by mtlscope {html.escape(mtlscope.__version__)}.</p>"
        f"<nav><ul>{contents}</ul></nav>{body}</body></html>\n"
    )


def table_html(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as an escaped HTML table in a box that scrolls when the table is wider than the page;
    numbers by ``format_number`` (``digits`` significant digits), missing values as "–"."""
    table = formatted(frame, digits, na="–").to_html(index=False, escape=True, border=0)
    return f'<div class="table">{table}</div>'


def _preset_outputs(outputs: Sequence[PresetOutput], missing: Missing) -> Section:
    parts = []
    for output in outputs:
        if output.missing:
            missing.append((f"Preset output {output.name}", output.missing))
            continue
        parts.append(f"<h3>{html.escape(output.name)}</h3><p>{html.escape(output.title)}.</p>")
        parts += [_embed_png(image, f"{output.name}: {image.stem}") for image in output.images]
        if output.table is not None and not output.table.empty:
            parts.append(table_html(output.table))
        parts += [f'<p class="note warning">Note: {html.escape(note)}</p>' for note in output.notes]
    if not parts:
        parts.append("<p>None of the preset's outputs could be produced (see Not shown).</p>")
    return Section("preset", "Preset outputs", "".join(parts))


def _not_shown(missing: Missing) -> Section:
    items = "".join(f"<li><b>{html.escape(what)}</b>: {html.escape(why)}</li>" for what, why in missing)
    intro = "<p>The results cannot support these; each says what would.</p>"
    return Section("not-shown", "Not shown", f'{intro}<ul class="missing">{items}</ul>')


def _overview(results: RunResults) -> Section:
    runs = results.runs
    statuses = runs["status"].value_counts().to_dict()
    status_text = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    settings = ", ".join(sorted(str(s) for s in runs["setting"].dropna().unique()))
    variants = runs.groupby("variant", sort=False)["seed"].nunique()
    rows = pd.DataFrame({"variant": variants.index, "seeds": variants.to_numpy()})
    probes = sorted(
        {str(m).split("/")[0] for m in results.records.loc[results.records["split"] == "probe", "metric"].unique()}
    )
    body = (
        f"<p>{len(runs)} runs ({html.escape(status_text)}) on setting(s) {html.escape(settings)}. "
        f"Probe values recorded: {html.escape(', '.join(probes) or 'none')}.</p>{table_html(rows)}"
    )
    if results.skipped:
        damaged = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in results.skipped)
        body += (
            f'<p class="missing">{len(results.skipped)} damaged run director'
            f"{'ies were' if len(results.skipped) != 1 else 'y was'} skipped (not in any table or figure):</p>"
            f"<ul>{damaged}</ul>"
        )
    return Section("overview", "Overview", body)


def _key_tables(results: RunResults, missing: Missing) -> Section:
    from mtlscope.report.summary import key_tables

    parts = []
    for title, table, reading in key_tables(results):
        if table is None or table.empty:
            missing.append((f"Key table: {title}", reading))
        else:
            parts.append(
                f'<h3>{html.escape(title)}</h3><p class="reading">{html.escape(reading)}</p>{table_html(table)}'
            )
    if not parts:
        parts.append("<p>The results support none of the key tables (see Not shown).</p>")
    return Section("tables", "Key tables", "".join(parts))


def _embed_png(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


class _Figures:
    """The figures section being built: drawn figures under their headings, the rest to ``missing``."""

    def __init__(self, scratch: Path, missing: Missing) -> None:
        self.scratch, self.missing = scratch, missing
        self.parts: list[str] = []
        self.heading = self.pending = ""

    def start(self, heading: str) -> None:
        """Begin a group of figures; its heading is written with the group's first drawn figure."""
        self.heading, self.pending = heading, f"<h3>{html.escape(heading)}</h3>"

    def notes(self, notes: Sequence[str]) -> None:
        """Notes under the figure drawn last."""
        self.parts += [f'<p class="note warning">Note: {html.escape(note)}</p>' for note in notes]

    def cannot(self, reason: str) -> None:
        self.missing.append((f"Figures: {self.heading}", reason))

    def draw(self, name: str, caption: str, draw: Callable[[Path], list[Path]], reason: str) -> bool:
        """Draw one figure into the scratch directory and embed it (True), or record why it cannot be drawn."""
        try:
            paths = draw(self.scratch / f"{name}.png")
        except (ValueError, KeyError) as error:
            detail = f" ({error})" if str(error) else ""
            self.missing.append((f"Figure: {caption}", reason + detail))
            return False
        self.parts.append(self.pending + _embed_png(next(p for p in paths if p.suffix == ".png"), caption))
        self.pending = ""
        return True


def _figures(results: RunResults, scratch: Path, missing: Missing) -> Section:
    from mtlscope.analysis import (
        affinity_matrix,
        conflict_table,
        group_tasks,
        method_changes,
        temperature_table,
    )
    from mtlscope.analysis.conflict import MIN_POINTS
    from mtlscope.analysis.phases import phase_notes
    from mtlscope.analysis.transfer import primary_metric
    from mtlscope.report import plots
    from mtlscope.report.figures import factors_vs_loss, generalization_vs_loss
    from mtlscope.report.summary import affinity_runs

    runs = results.runs[results.runs["status"] == "completed"]
    figures = _Figures(scratch, missing)
    singles = {str(t) for t in runs.loc[runs["num_tasks"] == 1, "tasks"]}
    multi_tasks = {t for tasks in runs.loc[runs["num_tasks"] > 1, "tasks"] for t in str(tasks).split("+")}
    compared = sorted(singles & multi_tasks)
    figures.start("Generalization and factors vs training loss (main paper, Figs. 1 and 3)")
    if not compared:
        figures.cannot(
            "needs single-task and multi-task runs of the same task (e.g. a variant with tasks [a] and one with "
            "[a, b])."
        )
    has_probes = bool((results.records["split"] == "probe").any())
    for index, task in enumerate(compared):
        if figures.draw(
            f"generalization-{index}",
            f"{task}: test metric vs full training loss, mean ± 2 std over seeds (Fig. 1)",
            partial(generalization_vs_loss, results, task, metric=primary_metric(results, None, task)),
            "no checkpoints to draw.",
        ):
            figures.notes(phase_notes(results, task, "test"))
        if has_probes:
            figures.draw(
                f"factors-{index}",
                f"{task}: trajectory factors vs full training loss (Fig. 3)",
                partial(factors_vs_loss, results, task),
                "no probe values to draw.",
            )
    if compared and not has_probes:
        missing.append(("Figure: factors vs loss (Fig. 3)", "run with probes (see docs/probes.md)."))

    figures.start("Specialized multi-task optimizers vs UMTG (main paper, Fig. 4)")
    methods = set(runs["method"].dropna())
    if "umtg" in methods and len(methods) > 1:
        changes = method_changes(results)
        factors = [f for f in changes["factor"].unique() if f != "generalization"] if not changes.empty else []
        if not factors:
            figures.cannot("record probes in the method runs to place them in quadrants.")
        for index, factor in enumerate(factors):
            figures.draw(
                f"quadrants-{index}",
                f"% change of {factor} and of generalization vs UMTG, per task and variant (Fig. 4)",
                partial(plots.smto_quadrants, changes, factor),
                f"no {factor} changes to draw.",
            )
    else:
        figures.cannot("needs UMTG runs and runs of at least one other method (sweep method).")

    figures.start("Gradient conflict vs factors and generalization (main paper, Figs. 5–6)")
    conflict = conflict_table(results)
    if conflict["similarity"].notna().any():
        for index, quantity in enumerate(["generalization", *[c for c in ("sharpness", "fim_trace") if c in conflict]]):
            figures.draw(
                f"conflict-{index}",
                f"mean gradient similarity over training vs {quantity}, per target task (a line and Pearson's r "
                f"only for targets with at least {MIN_POINTS} points)",
                partial(plots.similarity_scatter, conflict, quantity),
                f"no points with a finite {quantity}.",
            )
    else:
        figures.cannot(
            f"needs multi-task runs with the grad_similarity probe (at least {MIN_POINTS} per target task for a "
            "correlation, e.g. random auxiliary task sets for a target task)."
        )

    figures.start("Temperature (temperature paper, Figs. 1–3)")
    if runs["temperature"].dropna().nunique() >= 2:
        table = temperature_table(results)
        figures.draw(
            "temperature",
            "generalization (mean over tasks) vs temperature lr/B, mean ± 2 std over seeds; stars: best",
            lambda path: plots.temperature_curves(table, path),
            "no temperature curves to draw.",
        )
    else:
        figures.cannot("needs runs at two or more temperatures lr/B (sweep lr or batch size).")

    figures.start("Inter-task affinity and task grouping (Fifty et al. 2020)")
    chosen, left_out = affinity_runs(results)  # one variant per task set: variants are never averaged
    try:
        matrix = affinity_matrix(results.records[results.records["run_id"].isin(set(chosen["run_id"]))])
    except ValueError:
        matrix = None
    if matrix is not None and len(matrix) >= 2:
        grey = " Grey cells: not measured (no run trained both tasks with the affinity probe)."
        variants = ", ".join(sorted(chosen["variant"].astype(str).unique()))
        other = f"; {left_out} other variant{'s' if left_out > 1 else ''} with affinities not shown" if left_out else ""
        figures.draw(
            "affinity",
            f"inter-task affinity A[source, target] averaged over training and over the runs of {variants}{other}."
            + (grey if matrix.isna().to_numpy().any() else ""),
            lambda path: plots.affinity_heatmap(matrix, path),
            "no affinity matrix to draw.",
        )
        splits = min(3, len(matrix) - 1) if len(matrix) > 2 else 1
        figures.draw(
            "grouping",
            f"best grouping into at most {splits} groups by the affinities",
            lambda path: plots.grouping_diagram(group_tasks(matrix.fillna(0.0), splits), path),
            "no grouping to draw.",
        )
    else:
        figures.cannot("needs multi-task runs with the affinity probe (probes: {affinity: {}}).")
    parts = figures.parts or ["<p>The results support none of the figures (see Not shown).</p>"]
    return Section("figures", "Figures", "".join(parts))


#: The inventory's columns (those the runs table has), in this order; ``steps`` is "done/planned".
INVENTORY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "variant",
    "method",
    "seed",
    "status",
    "steps",
    "lr",
    "batch_size",
    "loss_scale",
    "wall_time_s",
    "message",
)


def _inventory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The run inventory: ``INVENTORY_COLUMNS`` with steps as "done/planned" and messages cut to
    ``MESSAGE_CHARS``, so it fits a 1400-pixel page (a wider table scrolls within its box)."""
    table = runs[[c for c in INVENTORY_COLUMNS if c in runs]].copy()
    if "steps" in table and "planned_steps" in runs:
        table["steps"] = [
            f"{_count(done)}/{_count(planned)}" for done, planned in zip(runs["steps"], runs["planned_steps"])
        ]
    if "message" in table:
        table["message"] = table["message"].map(_shortened)
    return table


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _count(value: object) -> str:
    return "?" if _missing(value) else str(int(float(str(value))))


def _shortened(message: object) -> str:
    text = "" if _missing(message) else str(message)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _inventory(results: RunResults) -> Section:
    runs = results.runs
    versions: dict[str, set[str]] = {}
    for path in runs["path"]:
        environment = Path(str(path)) / ENVIRONMENT_FILE
        if environment.exists():
            data = json.loads(environment.read_text())
            found = {"python": data.get("python"), "device": data.get("device"), **(data.get("packages") or {})}
            for name, version in found.items():
                versions.setdefault(str(name), set()).add(str(version))
    version_table = pd.DataFrame(
        {"software": list(versions), "version": [", ".join(sorted(v)) for v in versions.values()]}
    )
    configs = []
    for variant, group in runs.groupby("variant", sort=False):
        config = group.iloc[0]["config"]
        configs.append(
            f"<details><summary>{html.escape(str(variant))} (config of seed {html.escape(str(group.iloc[0]['seed']))})"
            f"</summary><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></details>"
        )
    body = (
        f'<div class="inventory">{table_html(_inventory_table(runs))}</div><h3>Software versions</h3>'
        + (table_html(version_table) if versions else "<p>No environment.json in the runs.</p>")
        + "<h3>Configs (one run per variant)</h3>"
        + "".join(configs)
    )
    return Section("inventory", "Run inventory", body)
