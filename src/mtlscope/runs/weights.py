"""A run's trained weights: written in the run directory at the end of the run, loaded back as a model.

A completed run keeps its final weights in ``model.safetensors``; a diverged run keeps none (its parameters may
no longer be finite). With ``training.keep_best: true`` a completed or diverged run also keeps
``best.safetensors``: the weights at its best validation checkpoint (``BestCheckpoint``). Both are written
atomically before the run is marked finished, and the summary's ``weights`` entry records, for each, its sha256
and the step it comes from (``mtlscope.runs.store.damage`` reports a run whose weights file is missing or
changed as damaged).

The format is safetensors: tensors and a small string header, nothing that can run code. ``load_model(run_dir)``
rebuilds the model from the run's stored ``config.yaml`` with the builders a run uses (``launch.prepare``) and
loads the weights into it; a weights file that is missing, changed since the run recorded it, not a safetensors
file or not the model's (other keys, shapes or dtypes) raises ``WeightsError`` with one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from mtlscope.engine.evaluation import Scores
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.runs.store import (
    CONFIG_FILE,
    FINISHED,
    SUMMARY_FILE,
    WEIGHTS_FILES,
    StoreError,
    brief,
    stored_status,
    weights_entry,
    write_atomic_bytes,
)
from mtlscope.settings.setting import Setting

Which = Literal["final", "best"]


class WeightsError(StoreError):
    """A run's weights cannot be loaded: missing, changed, not safetensors or not the model's (one line)."""


def cpu_copy(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's ``state_dict`` as CPU tensors that share no memory with it (or with each other)."""
    return {name: value.detach().to("cpu", copy=True).contiguous() for name, value in model.state_dict().items()}


def save_weights(path: Path, which: Which, weights: Mapping[str, Tensor], step: int) -> dict[str, Any]:
    """Write ``weights`` to the run directory ``path`` as its ``which`` weights file (atomically); returns the
    summary's record of it, ``{"sha256", "step"}``."""
    data = save_safetensors(
        {name: tensor.contiguous() for name, tensor in weights.items()},
        # one key: safetensors writes a header's metadata in no fixed order, and the same weights must give the
        # same bytes (a resumed run's files equal an uninterrupted run's)
        metadata={"mtlscope": json.dumps({"which": which, "step": step})},
    )
    write_atomic_bytes(path / WEIGHTS_FILES[which], data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "step": step}


class BestCheckpoint:
    """Keeps the weights of the best validation checkpoint (a ``CheckpointHook`` of the trainer).

    A checkpoint's score is the mean over the run's tasks of each task's primary metric on the validation split
    (``Task.primary_metric``: accuracy for classification, R² for regression), a metric where lower is better
    counted negated. The best checkpoint is the one with the highest finite score, the earliest among equals.
    The kept weights are part of the training state, so a resumed run keeps the same best checkpoint.
    """

    name = "best_checkpoint"

    def __init__(self, setting: Setting) -> None:
        self.metrics = {task.name: (task.primary_metric, task.higher_is_better) for task in setting.tasks}
        self.step: int | None = None
        self.score = -math.inf
        self.weights: dict[str, Tensor] = {}

    def score_of(self, scores: Scores) -> float:
        values = [
            scores[(task, "val")][metric] * (1.0 if higher else -1.0) for task, (metric, higher) in self.metrics.items()
        ]
        return sum(values) / len(values)

    def at_checkpoint(self, step: int, scores: Scores, model: MultiTaskModel) -> None:
        score = self.score_of(scores)
        if math.isfinite(score) and score > self.score:
            self.step, self.score, self.weights = step, score, cpu_copy(model)

    def record(self) -> dict[str, Any]:
        """What the summary says about the best checkpoint besides its file: the score and its metrics."""
        return {"score": self.score, "metrics": {task: metric for task, (metric, _) in self.metrics.items()}}

    def state_dict(self) -> dict[str, Any]:
        if self.step is None:
            return {}
        return {"step": self.step, "score": self.score, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.step, self.score, self.weights = None, -math.inf, {}
            return
        step, score, weights = state["step"], state["score"], state["weights"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"best checkpoint: step is {str(step)[:40]!r}, not a step")
        if not isinstance(score, float) or not math.isfinite(score):
            raise ValueError(f"best checkpoint: score is {str(score)[:40]!r}, not a finite number")
        if not isinstance(weights, dict) or not all(
            isinstance(name, str) and isinstance(value, Tensor) for name, value in weights.items()
        ):
            raise ValueError("best checkpoint: the weights are not tensors by name")
        self.step, self.score, self.weights = step, score, dict(weights)


def read_weights(file: Path, sha256: str | None = None) -> dict[str, Tensor]:
    """The tensors in the safetensors file ``file`` (checked against ``sha256`` when given); ``WeightsError``."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{file}: missing") from None
    except OSError as error:
        raise WeightsError(f"{file}: unreadable ({brief(error)})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError(f"{file}: changed or corrupted (its sha256 is not the one recorded in {SUMMARY_FILE})")
    try:
        return load_safetensors(data)
    except Exception as error:  # the safetensors parser's errors for a file that is not one
        raise WeightsError(f"{file}: not a safetensors weights file ({brief(error)})") from None


def _recorded(path: Path, which: str) -> dict[str, Any]:
    """The summary's record of the ``which`` weights of the finished run at ``path``; ``WeightsError`` else."""
    if not path.is_dir():
        raise WeightsError(f"{path}: not a run directory")
    status = stored_status(path)
    if status not in FINISHED:
        state = f"the run is {status}" if status else "no readable status.json"
        raise WeightsError(f"{path}: {state}; only completed or diverged runs keep weights")
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path / SUMMARY_FILE}: unreadable ({brief(error)})") from None
    if not isinstance(summary, dict):
        raise WeightsError(f"{path / SUMMARY_FILE}: holds a {type(summary).__name__}, not a summary")
    try:
        entry = weights_entry(summary, which)
    except StoreError as error:
        raise WeightsError(f"{path}: {error}") from None
    if entry is None:
        if which == "best":
            why = "the run was not run with training.keep_best: true, or no checkpoint had a finite validation score"
        elif status == "diverged":
            why = "a diverged run keeps no final weights; with training.keep_best it keeps its best ones"
        else:
            why = "the run was written before mtlscope kept weights; run it again with force=True"
        raise WeightsError(f"{path}: no {which} weights recorded in {SUMMARY_FILE} ({why})")
    return entry


def load_model(run_dir: str | Path, which: Which = "final", *, device: str | torch.device = "cpu") -> MultiTaskModel:
    """The trained model of the finished run at ``run_dir`` (in eval mode, on ``device``): ``which="final"`` its
    weights at the end of training (completed runs), ``"best"`` those of its best validation checkpoint (runs with
    ``training.keep_best``). Built from the run's ``config.yaml`` as the run built it; raises ``WeightsError`` (or
    ``ConfigError`` for a stored config that no longer builds) with one line naming the file."""
    from mtlscope.runs.config import ConfigError, read_yaml, validate_config
    from mtlscope.runs.launch import prepare

    if which not in WEIGHTS_FILES:
        raise ValueError(f"which: expected 'final' or 'best', got {str(which)[:40]!r}")
    path = Path(run_dir)
    entry = _recorded(path, which)
    file = path / WEIGHTS_FILES[which]
    weights = read_weights(file, entry["sha256"])
    config_file = path / CONFIG_FILE
    data = read_yaml(config_file)
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: expected a mapping of keys at the top level, got {type(data).__name__}")
    if isinstance(data.get("training"), dict):  # built on the CPU whatever the run used; moved to ``device`` below
        data = {**data, "training": {**data["training"], "device": "cpu"}}
    model = prepare(validate_config(data, str(config_file)), str(config_file)).model
    _check_fit(file, model.state_dict(), weights)
    model.load_state_dict(weights)
    return model.eval().to(device)


def _check_fit(file: Path, expected: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> None:
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        listed = (("missing", missing), ("unexpected", unexpected))
        parts = [
            f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for label, names in listed if names
        ]
        raise WeightsError(f"{file}: not the weights of the model in {CONFIG_FILE} ({'; '.join(parts)})")
    for name, tensor in expected.items():
        found = weights[name]
        if found.shape != tensor.shape or found.dtype != tensor.dtype:
            raise WeightsError(
                f"{file}: {name} is {found.dtype} {tuple(found.shape)}, the model in {CONFIG_FILE} has "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
