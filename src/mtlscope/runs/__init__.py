"""Runs: configuration, execution, the run directory store and loading results.

``mtlscope.runs.load(dir)`` returns every run under ``dir`` as DataFrames (``RunResults``).
"""

from mtlscope.runs.config import ConfigError, RunConfig, load_config, resolve, validate_config
from mtlscope.runs.launch import RunOutcome, execute, prepare
from mtlscope.runs.results import DamagedRunWarning, RunResults, load, read_records
from mtlscope.runs.store import STATUSES, RunDirectory

__all__ = [
    "STATUSES",
    "ConfigError",
    "DamagedRunWarning",
    "RunConfig",
    "RunDirectory",
    "RunOutcome",
    "RunResults",
    "execute",
    "load",
    "load_config",
    "prepare",
    "read_records",
    "resolve",
    "validate_config",
]
