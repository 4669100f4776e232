"""mtlscope: see how multi-task learning changes optimization, and whether that explains transfer.

The flow: config -> setting -> model -> method -> trainer (+ probes) -> run directory ->
results DataFrames -> analysis -> report.

    import mtlscope
    config = mtlscope.validate_config({"setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]}})
    outcome = mtlscope.execute(config, "runs-out")    # raises mtlscope.RunFailed if training raises
    results = mtlscope.load("runs-out")
    model = mtlscope.load_model(outcome.path)          # the trained model (final weights)
"""

from mtlscope import methods, probes, settings  # noqa: F401  (registers every built-in component)
from mtlscope.engine.backward import MultiTaskBackward, backward
from mtlscope.runs import (
    ConfigError,
    RunConfig,
    RunFailed,
    RunResults,
    execute,
    load,
    load_config,
    load_model,
    validate_config,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "MultiTaskBackward",
    "RunConfig",
    "RunFailed",
    "RunResults",
    "__version__",
    "backward",
    "execute",
    "load",
    "load_config",
    "load_model",
    "validate_config",
]
