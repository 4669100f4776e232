"""Sweeps: many run configs into one results directory, run on a local process pool and resumable.

- ``load_sweep(path)`` / ``expand(mapping)`` turn a sweep file into run configs (``spec``);
- ``write_manifest`` / ``read_manifest`` keep them in ``DIR/sweep.json`` (``manifest``);
- ``run_sweep(configs, out, workers=N)`` runs them (skipping completed runs, resuming unfinished ones);
- ``sweep_status(configs, out)`` says how far a sweep has got.

See docs/sweeps.md.
"""

from mtlscope.sweeps.execution import SweepResult, run_sweep
from mtlscope.sweeps.manifest import read_manifest, write_manifest
from mtlscope.sweeps.spec import Sweep, expand, load_sweep
from mtlscope.sweeps.status import SweepStatus, format_status, sweep_status

__all__ = [
    "Sweep",
    "SweepResult",
    "SweepStatus",
    "expand",
    "format_status",
    "load_sweep",
    "read_manifest",
    "run_sweep",
    "sweep_status",
    "write_manifest",
]
