"""Run configuration: the YAML schema, validation with one-line errors, overrides and resolution.

A run config names a setting (and optionally a task subset), a model, a method, an optimizer and the
training schedule. ``load_config`` reads a YAML file (with ``mtlscope.safe_yaml``: duplicate keys and alias bombs
are refused), applies ``key=value`` overrides and validates it, raising ``ConfigError`` with a single line naming
the key and what was expected (long keys and values cut, ``mtlscope.messages``). The options of registered
components (setting, encoder, head, method, probes) are checked against their builders' declared types and
ranges (``Registry.check_options``), so ``probes.sharpness.rho: expected a number > 0 (got -1)`` is raised here.
``resolve`` fills in every default that depends on the setting (the task list, the setting's default model),
giving the *resolved* config the run id is derived from, and checks ``training.batch_size`` against the
training sets. See docs/configuration.md for every key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mtlscope.engine.loss_scale import parse_loss_scale
from mtlscope.engine.lr_schedules import LR_SCHEDULES, build_learning_rate, canonical_schedule
from mtlscope.messages import clip, show
from mtlscope.methods.registry import METHODS
from mtlscope.models.encoders import ENCODERS
from mtlscope.models.heads import HEADS
from mtlscope.models.multitask import MAX_SEED
from mtlscope.probes.base import PROBES
from mtlscope.registry import OptionError, Registry
from mtlscope.safe_yaml import YAMLInputError, YAMLRefusedError, parse_yaml
from mtlscope.settings.registry import SETTINGS


class ConfigError(ValueError):
    """An invalid run configuration; the message is one line naming the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _option_error(error: OptionError, prefix: str = "") -> PydanticCustomError:
    """A pydantic error carrying the option's key below the validated field (``_describe`` joins them)."""
    return PydanticCustomError("component_option", "{problem}", {"key": prefix + error.key, "problem": error.problem})


def _check_component(registry: Registry[Any], name: str, options: Mapping[str, Any], prefix: str = "") -> None:
    """``registry.check_options`` with its errors turned into pydantic errors naming the option's key."""
    try:
        registry.check_options(name, options)
    except KeyError as error:
        raise ValueError(str(error.args[0])) from None
    except OptionError as error:
        raise _option_error(error, prefix) from None


def _component(registry: Registry[Any], value: Any, *, field: str) -> dict[str, Any]:
    """Validate ``{"name": ..., **options}`` against ``registry``."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError(f"expected a mapping with a 'name' ({', '.join(registry.available())})")
    _check_component(registry, value["name"], {k: v for k, v in value.items() if k != "name"})
    return dict(value)


class SettingConfig(_Strict):
    name: str
    tasks: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SETTINGS.available():
            raise ValueError(f"unknown setting {name!r}; available: {', '.join(SETTINGS.available())}")
        return name

    @model_validator(mode="after")
    def _options(self) -> SettingConfig:
        _check_component(SETTINGS, self.name, self.options, prefix="options.")
        if self.tasks is not None and not self.tasks:
            raise ValueError("tasks must name at least one task (or be left out for all tasks)")
        return self


class ModelConfig(_Strict):
    encoder: dict[str, Any] | None = None
    head: dict[str, Any] | None = None

    @field_validator("encoder", mode="before")
    @classmethod
    def _encoder(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else _component(ENCODERS, value, field="encoder")

    @field_validator("head", mode="before")
    @classmethod
    def _head(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else _component(HEADS, value, field="head")


#: Adam's decay rates of the moment estimates.
Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimizerConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    #: The learning-rate schedule ``{name, **options}`` (``mtlscope.engine.lr_schedules``), every default filled
    #: in; ``None``: constant, and then the key is left out of the dumped config (so of the run id).
    schedule: dict[str, Any] | None = None

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        return canonical_schedule(_component(LR_SCHEDULES, value, field="schedule"))

    @model_validator(mode="after")
    def _sgd_only(self) -> OptimizerConfig:
        if self.name != "sgd" and (self.momentum != 0 or self.nesterov):
            raise ValueError(f"momentum and nesterov apply to sgd only, not {self.name}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        try:  # options checked against the lr (a cosine's min_lr)
            build_learning_rate(self.lr, self.schedule, steps=1, steps_per_epoch=1)
        except OptionError as error:
            raise _option_error(error, prefix="schedule.") from None
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.schedule is None:  # configs without a schedule keep the run ids they had before schedules
            data.pop("schedule", None)
        return data


class TrainingConfig(_Strict):
    batch_size: int = Field(default=32, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1)
    loss_scale: float | str = 1.0
    eval_every: int | Literal["epoch"] = "epoch"
    train_eval_limit: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    diagnostics_every: int | None = Field(default=None, ge=1)
    jacobian_mode: Literal["auto", "per_task", "batched", "loop"] = "auto"
    jacobian_chunk: int | None = Field(default=None, ge=1)
    save_state: bool = True
    keep_best: bool = False

    @field_validator("loss_scale", mode="before")
    @classmethod
    def _loss_scale(cls, value: Any) -> float | str:
        return parse_loss_scale(value)

    @field_validator("eval_every")
    @classmethod
    def _eval_every(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("expected 'epoch' or a positive number of steps")
        return value

    @model_validator(mode="after")
    def _length(self) -> TrainingConfig:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give either epochs or steps, not both")
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 20)
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.keep_best:  # configs that keep no best checkpoint keep the run ids they had before the option
            data.pop("keep_best", None)
        return data


class RunConfig(_Strict):
    """A whole run. ``name`` labels the variant (default: its tasks joined by '+', plus the method)."""

    name: str | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    setting: SettingConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "umtg"})
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    probes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> dict[str, Any]:
        return _component(METHODS, value, field="method")

    @field_validator("probes", mode="before")
    @classmethod
    def _probes(cls, value: Any) -> dict[str, dict[str, Any]]:
        if value is None:
            return {}
        if isinstance(value, list):
            value = {name: {} for name in value}
        if not isinstance(value, Mapping):
            raise ValueError("expected a mapping {probe name: options} or a list of probe names")
        checked = {}
        for name, options in value.items():
            key = clip(str(name))
            if options is not None and not isinstance(options, Mapping):
                raise ValueError(f"options of probe {key!r} must be a mapping, got {show(options)}")
            if str(name) not in PROBES.available():
                raise PydanticCustomError(
                    "component_option",
                    "{problem}",
                    {"key": key, "problem": f"unknown probe; available: {', '.join(PROBES.available())}"},
                )
            _check_component(PROBES, str(name), options or {}, prefix=f"{name}.")
            checked[str(name)] = dict(options or {})
        return checked

    @property
    def variant(self) -> str:
        """The label of this run's variant: ``name`` if given, else tasks joined by '+' (+ method)."""
        if self.name:
            return self.name
        label = "+".join(self.setting.tasks or [self.setting.name])
        return label if self.method["name"] == "umtg" else f"{label}:{self.method['name']}"

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON/YAML-ready) dict of this config."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data

    def run_id(self) -> str:
        """Stable id: a readable prefix and a hash of the canonical JSON of the config."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.variant)[:60]
        return f"{slug}-s{self.seed}-{digest}"


# -- errors ---------------------------------------------------------------------------------------------


def _model_at(location: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = RunConfig
    for key in location:
        if model is None or key not in model.model_fields:
            return None
        annotation = model.model_fields[key].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


#: What a value must be, by pydantic error type (the bounds come from the error's context).
_EXPECTED: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "finite_number": "a finite number",
    "greater_than": "a value > {gt}",
    "greater_than_equal": "a value >= {ge}",
    "less_than": "a value < {lt}",
    "less_than_equal": "a value <= {le}",
}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(error: Mapping[str, Any]) -> str:
    """One line for a pydantic error: the full dotted key, what was expected and (cut short) what was given."""
    location = [clip(str(part)) for part in error["loc"]]
    kind = error["type"]
    if kind == "component_option":  # a registered component's option: the key continues below the field
        location.append(str(error["ctx"]["key"]))
        return f"{'.'.join(location)}: {error['ctx']['problem']}"
    key = ".".join(location) or "config"
    if kind == "extra_forbidden":
        parent = _model_at(error["loc"][:-1])
        known = ", ".join(parent.model_fields) if parent is not None else ""
        return f"{key}: unknown key" + (f"; expected one of: {known}" if known else "")
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind in _EXPECTED:
        bounds = {name: _number(value) for name, value in (error.get("ctx") or {}).items()}
        message = "expected " + _EXPECTED[kind].format(**bounds)
    else:
        message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "expected")
    value = error.get("input")
    shown = "" if isinstance(value, Mapping) or value is None or repr(value) in message else f" (got {show(value)})"
    return f"{key}: {clip(message, 400)}{shown}"


def validate_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a config mapping; raises ``ConfigError`` with a one-line message."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error.errors()[0])}") from None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    result: dict[str, Any] = json.loads(json.dumps(data, default=list))
    for override in overrides:
        key, sep, raw = override.partition("=")
        shown = show(override)
        if not sep or not key.strip():
            raise ConfigError(f"override {shown}: expected key=value, e.g. optimizer.lr=0.01")
        if not raw.strip():
            raise ConfigError(f"override {shown}: expected a value after '=' (write {clip(key.strip())}=null for null)")
        value = parse_override_value(raw, shown)
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {shown}: {clip(part)} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def parse_override_value(raw: str, shown: str) -> Any:
    """The value of an override's ``raw`` text: YAML (``0.01``, ``[a, b]``, ``{x: 1}``), else the text itself.

    A value refused for its size, nesting or a duplicate key is a ``ConfigError``, not text.
    """
    try:
        return parse_yaml(raw)
    except YAMLRefusedError as error:
        raise ConfigError(f"override {shown}: {error}") from None
    except YAMLInputError:
        return raw


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (``mtlscope.safe_yaml``); a one-line ``ConfigError`` naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{data[error.start]:02x} at position {error.start}); "
            "expected a YAML file"
        ) from None
    try:
        return parse_yaml(text)
    except YAMLInputError as error:
        raise ConfigError(f"{path}: {error}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a YAML run config."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return validate_config(apply_overrides(data, overrides), str(path))


def resolve(config: RunConfig, source: str = "config") -> RunConfig:
    """Fill in the defaults that depend on the setting: its task list and its default model.

    Raises ``ConfigError`` when the setting cannot be built from the config (bad task name or option
    value), or when ``training.batch_size`` is larger than the smallest training set of the run's tasks (a batch
    draws each example at most once).
    """
    from mtlscope.settings.registry import get as get_setting

    try:
        setting = get_setting(config.setting.name, **config.setting.options)
        if config.setting.tasks is not None:
            setting = setting.subset(config.setting.tasks)
    except (KeyError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        raise ConfigError(f"{source}: setting: {message}") from None
    except (MemoryError, RuntimeError) as error:  # e.g. synthetic data too large to allocate
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{source}: setting: cannot build the setting ({clip(reason, 200)})") from None
    largest = min(len(task.train) for task in setting.tasks)
    if config.training.batch_size > largest:
        raise ConfigError(
            f"{source}: training.batch_size: expected at most {largest}, the smallest training set of the run's "
            f"tasks (got {config.training.batch_size})"
        )
    data = config.to_dict()
    data["setting"]["tasks"] = list(setting.task_names)
    data["setting"]["options"] = dict(setting.options)
    data["model"]["encoder"] = data["model"]["encoder"] or dict(setting.default_model["encoder"])
    data["model"]["head"] = data["model"]["head"] or dict(setting.default_model["head"])
    return validate_config(data, source)
