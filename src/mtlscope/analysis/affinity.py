"""Inter-task affinity matrices from stored probe records (Fifty et al., "Measuring and Harnessing
Transference in Multi-Task Learning", arXiv:2010.15413, 2020, eq. 1).

The ``affinity`` probe stores ``Z_{source -> target}`` as records with the target in the ``task`` column and
the source in the metric name (``affinity/<source>``, ``affinity_overall/<source>``, and the same with
``_first_order``). ``affinity_matrix`` turns them back into ``A[source, target]``.
"""

from __future__ import annotations

import pandas as pd

AFFINITY_KINDS: tuple[str, ...] = (
    "affinity",
    "affinity_overall",
    "affinity_first_order",
    "affinity_first_order_overall",
)


def affinity_matrix(records: pd.DataFrame, kind: str = "affinity_overall", step: int | None = None) -> pd.DataFrame:
    """``A[source, target]`` at ``step`` (default: each run's last step with affinity records), averaged over
    the runs in ``records`` (e.g. the seeds of one variant).

    ``kind``: ``affinity_overall`` (mean over training up to the step, the default), ``affinity`` (mean
    since the previous checkpoint, i.e. per epoch with the default checkpoints), or their ``_first_order``
    versions. Raises ``ValueError`` when ``records`` hold no such affinities.
    """
    if kind not in AFFINITY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(AFFINITY_KINDS)}, got {kind!r}")
    rows = records[(records["split"] == "probe") & records["metric"].str.startswith(f"{kind}/")].copy()
    if rows.empty:
        raise ValueError(f"no {kind} records: run with the 'affinity' probe (probes: {{affinity: {{}}}})")
    rows["source"] = rows["metric"].str.slice(len(kind) + 1)
    runs = rows["run_id"] if "run_id" in rows else pd.Series("run", index=rows.index)
    rows["run"] = runs
    if step is None:
        last = rows.groupby("run")["step"].transform("max")
        rows = rows[rows["step"] == last]
    else:
        rows = rows[rows["step"] == step]
        if rows.empty:
            raise ValueError(f"no {kind} records at step {step}")
    order = list(dict.fromkeys([*rows["task"], *rows["source"]]))
    matrix = rows.pivot_table(index="source", columns="task", values="value", aggfunc="mean")
    matrix = matrix.reindex(index=order, columns=order)
    matrix.index.name, matrix.columns.name = "source", "target"
    return matrix
