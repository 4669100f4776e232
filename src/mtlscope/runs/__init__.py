"""Runs: configuration, execution, the run directory store and loading results.

``mtlscope.runs.load(dir)`` returns every run under ``dir`` as DataFrames (``RunResults``);
``mtlscope.runs.load_model(run_dir)`` returns a run's trained model.
"""

from mtlscope.runs.config import ConfigError, RunConfig, load_config, resolve, validate_config
from mtlscope.runs.launch import RunFailed, RunOutcome, execute, prepare
from mtlscope.runs.results import DamagedRunWarning, RunResults, load, read_records
from mtlscope.runs.store import STATUSES, RunDirectory
from mtlscope.runs.weights import WeightsError, load_model

__all__ = [
    "STATUSES",
    "ConfigError",
    "DamagedRunWarning",
    "RunConfig",
    "RunDirectory",
    "RunFailed",
    "RunOutcome",
    "RunResults",
    "WeightsError",
    "execute",
    "load",
    "load_config",
    "load_model",
    "prepare",
    "read_records",
    "resolve",
    "validate_config",
]
