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

import contextlib
import hashlib
import importlib
import inspect
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

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

from mtlscope.data.catalog import use_data_directory
from mtlscope.data.fingerprint import combine, tensor_digest
from mtlscope.engine.gramian import DEFAULT_JACOBIAN_BUDGET_MB
from mtlscope.engine.loss_scale import parse_loss_scale
from mtlscope.engine.lr_schedules import LR_SCHEDULES, build_learning_rate, canonical_schedule
from mtlscope.imports import (
    ImportPathError,
    import_plugin,
    importable_elsewhere,
    is_import_path,
    is_own_module,
    module_fingerprint,
    object_fingerprint,
    resolve_path,
    split_path,
)
from mtlscope.messages import clip, show
from mtlscope.methods.registry import METHODS
from mtlscope.models.components import check_factory_options
from mtlscope.models.encoders import ENCODERS
from mtlscope.models.heads import HEADS
from mtlscope.models.multitask import MAX_SEED
from mtlscope.probes.base import PROBES
from mtlscope.registry import OptionError, Registry
from mtlscope.rl.config import ENVIRONMENT_SETTINGS, RLConfig
from mtlscope.safe_yaml import YAMLInputError, YAMLRefusedError, parse_yaml
from mtlscope.settings.registry import SETTINGS

if TYPE_CHECKING:
    from mtlscope.settings.setting import Setting


class ConfigError(ValueError):
    """An invalid run configuration; the message is one line naming the key."""

    def restated(self, message: str) -> ConfigError:
        """The same kind of error with another message (a caller adding where it happened)."""
        return ConfigError(message)


class DataNotFoundError(ConfigError):
    """A config whose setting cannot find a data file; ``detail`` is the catalog's one line (``MissingDataError``:
    the expected path and where the data comes from), the message that line after the config's source."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail

    def restated(self, message: str) -> ConfigError:
        return DataNotFoundError(message, self.detail)


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


#: Whether validation may import what a config names (plugins, factories); off for stored configs that are only
#: read (``validate_config(..., imports=False)``), where unknown names are accepted when the config has plugins.
_IMPORTS: ContextVar[bool] = ContextVar("mtlscope_config_imports", default=True)
_LENIENT: ContextVar[bool] = ContextVar("mtlscope_config_lenient", default=False)


def _factory(value: Any, part: str, options: Mapping[str, Any]) -> str:
    """Check ``part``'s import path (imported only when validation may import) and its options."""
    if not _IMPORTS.get():
        split_path(value)
        return str(value)
    factory = resolve_path(value, what=f"{part}.factory")
    check_factory_options(part, factory, options, str(value))
    return str(value)


def _component(registry: Registry[Any], value: Any, *, field: str) -> dict[str, Any]:
    """Validate ``{"name": ..., **options}`` against ``registry``."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError(f"expected a mapping with a 'name' ({', '.join(registry.available())})")
    if _LENIENT.get() and value["name"] not in registry.available():
        return dict(value)  # a stored config read without importing its plugins, which may register the name
    _check_component(registry, value["name"], {k: v for k, v in value.items() if k != "name"})
    return dict(value)


def _part(registry: Registry[Any], value: Any, *, field: str) -> dict[str, Any]:
    """An encoder or head: a registered ``{"name": ..., **options}``, ``{"factory": "pkg.mod:fn", **options}``
    (a bare ``"pkg.mod:fn"`` string too), or ``{"object": label}`` (a Python object given to ``execute``)."""
    if is_import_path(value):
        value = {"factory": value}
    if isinstance(value, Mapping) and "factory" in value:
        if "name" in value or "object" in value:
            raise ValueError("give either name or factory, not both")
        options = {k: v for k, v in value.items() if k != "factory"}
        _factory(value["factory"], field, options)
        return dict(value)
    if isinstance(value, Mapping) and "object" in value:
        if set(value) != {"object"} or not isinstance(value["object"], str):
            raise ValueError("a part given as a Python object is recorded as {object: label} only")
        return dict(value)
    return _component(registry, value, field=field)


class SettingConfig(_Strict):
    """The setting: a registered ``name``, or a ``factory`` import path called with ``options`` (returning a
    ``Setting``), or ``object``: the label of a ``Setting`` given to ``execute(..., setting=)`` in Python."""

    name: str | None = None
    factory: str | None = None
    object: str | None = None
    tasks: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is None or name in SETTINGS.available() or name in ENVIRONMENT_SETTINGS or _LENIENT.get():
            return name
        available = sorted([*SETTINGS.available(), *ENVIRONMENT_SETTINGS])
        raise ValueError(f"unknown setting {name!r}; available: {', '.join(available)}")

    @model_validator(mode="after")
    def _options(self) -> SettingConfig:
        given = [key for key in ("name", "factory", "object") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of name (a registered setting) or factory (an import path 'pkg.mod:fn')"
                + (f", got {' and '.join(given)}" if given else "")
            )
        if self.is_environment:
            if self.options:
                raise ValueError(f"the {self.name} setting takes no options (its run options are the rl section)")
        elif self.name is not None and not (_LENIENT.get() and self.name not in SETTINGS.available()):
            _check_component(SETTINGS, self.name, self.options, prefix="options.")
        if self.factory is not None:
            _factory(self.factory, "setting", self.options)
        if self.object is not None and self.options:
            raise ValueError("a setting given as a Python object takes no options")
        if self.tasks is not None and not self.tasks:
            raise ValueError("tasks must name at least one task (or be left out for all tasks)")
        return self

    @property
    def is_environment(self) -> bool:
        """Whether the setting is an environment trained by reinforcement learning (``mtlscope.rl``), not data."""
        return self.name in ENVIRONMENT_SETTINGS

    @property
    def label(self) -> str:
        """The setting's name, or the attribute an import path names, or the object's label."""
        if self.factory is not None:
            return split_path(self.factory)[1]
        return self.name or self.object or "setting"

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("name", "factory", "object"):  # the one given is kept; registered settings dump as before
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ModelConfig(_Strict):
    encoder: dict[str, Any] | None = None
    head: dict[str, Any] | None = None

    @field_validator("encoder", mode="before")
    @classmethod
    def _encoder(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else _part(ENCODERS, value, field="encoder")

    @field_validator("head", mode="before")
    @classmethod
    def _head(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else _part(HEADS, value, field="head")


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


#: Checkpoints per factor of 10 in steps of ``training.eval_every: log`` when ``checkpoints_per_decade`` is not given.
DEFAULT_CHECKPOINTS_PER_DECADE = 10


class TrainingConfig(_Strict):
    batch_size: int = Field(default=32, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=1)
    loss_scale: float | str = 1.0
    eval_every: int | Literal["epoch", "log"] = "epoch"
    #: With ``eval_every: log``: checkpoints per factor of 10 in steps (default ``DEFAULT_CHECKPOINTS_PER_DECADE``).
    checkpoints_per_decade: int | None = Field(default=None, ge=1)
    train_eval_limit: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    diagnostics_every: int | None = Field(default=None, ge=1)
    jacobian_mode: Literal["auto", "per_task", "batched", "loop"] = "auto"
    jacobian_chunk: int | None = Field(default=None, ge=1)
    gradient_path: Literal["auto", "jacobian", "gramian"] = "auto"
    jacobian_budget_mb: float = Field(default=DEFAULT_JACOBIAN_BUDGET_MB, gt=0)
    save_state: bool = True
    keep_best: bool = False
    #: ``bf16``: forward passes of training steps under bfloat16 autocast (``mtlscope.engine.precision``).
    autocast: Literal["off", "bf16"] = "off"

    @field_validator("loss_scale", mode="before")
    @classmethod
    def _loss_scale(cls, value: Any) -> float | str:
        return parse_loss_scale(value)

    @field_validator("eval_every")
    @classmethod
    def _eval_every(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("expected 'epoch', 'log' or a positive number of steps")
        return value

    @model_validator(mode="after")
    def _checkpoints_per_decade(self) -> TrainingConfig:
        if self.eval_every == "log" and self.checkpoints_per_decade is None:
            object.__setattr__(self, "checkpoints_per_decade", DEFAULT_CHECKPOINTS_PER_DECADE)
        if self.eval_every != "log" and self.checkpoints_per_decade is not None:
            raise ValueError(
                f"checkpoints_per_decade applies to eval_every: log only (eval_every is {self.eval_every!r})"
            )
        return self

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
        if self.checkpoints_per_decade is None:  # only with eval_every: log, which came after these run ids
            data.pop("checkpoints_per_decade", None)
        if self.gradient_path == "auto":  # configs at the defaults keep the run ids they had before the options
            data.pop("gradient_path", None)
        if self.jacobian_budget_mb == DEFAULT_JACOBIAN_BUDGET_MB:
            data.pop("jacobian_budget_mb", None)
        if self.autocast == "off":  # runs without autocast keep the run ids they had before the option
            data.pop("autocast", None)
        return data


#: The sections of a supervised run, which a run on an environment setting neither takes nor dumps.
_SUPERVISED_SECTIONS: tuple[str, ...] = ("model", "method", "optimizer", "training", "probes")


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
    #: Modules imported before the config is validated, for the components they register (in every process
    #: that runs the config: sweep and Ray workers too). ``resolve`` adds the modules of registered components
    #: the config uses that are not mtlscope's own.
    plugins: list[str] = Field(default_factory=list)
    #: What defines the run besides its keys, filled in by ``resolve`` (so in the run id and ``config.yaml``):
    #: ``{"mtlscope": version, "sources": {module: sha256}, "data": sha256}`` (``objects`` for Python objects).
    identity: dict[str, Any] | None = None
    #: The folder the setting's data files are read from (``mtlscope.data.catalog``; ``--data-dir`` sets it for
    #: every run of a command). Where the data are is not what they are: the key is left out of the run id (the
    #: data fingerprint in ``identity`` covers the data), and out of the dumped config when not given.
    data_dir: str | None = None
    #: The options of a run on an environment setting (``mtlscope.rl.config``; filled in with its defaults there,
    #: refused elsewhere). Such a run takes no model, method, optimizer, training or probes sections.
    rl: RLConfig | None = None

    @model_validator(mode="after")
    def _environment(self) -> RunConfig:
        if not self.setting.is_environment:
            if self.rl is not None:
                raise ValueError(f"rl: applies to environment settings ({', '.join(ENVIRONMENT_SETTINGS)}) only")
            return self
        unused = [key for key in _SUPERVISED_SECTIONS if key in self.model_fields_set]
        if unused:
            raise ValueError(
                f"{unused[0]}: not used by the {self.setting.name} setting (a reinforcement-learning run takes its "
                "options from the rl section)"
            )
        if self.rl is None:
            object.__setattr__(self, "rl", RLConfig())
        return self

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a folder path (or leave the key out)")
        return value

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.plugins:
            data.pop("plugins", None)
        if self.identity is None:
            data.pop("identity", None)
        if self.data_dir is None:
            data.pop("data_dir", None)
        if self.rl is None:  # supervised configs keep the run ids they had before the rl section
            data.pop("rl", None)
        else:
            for key in _SUPERVISED_SECTIONS:
                data.pop(key, None)
        return data

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
        label = "+".join(self.setting.tasks or [self.setting.label])
        return label if self.method["name"] == "umtg" else f"{label}:{self.method['name']}"

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON/YAML-ready) dict of this config."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data

    def run_id(self) -> str:
        """Stable id: a readable prefix and a hash of the canonical JSON of the config.

        For a resolved config (``resolve``) the JSON includes ``identity``: the mtlscope version, the source
        fingerprints of the user modules the config imports and the setting's data fingerprint, so a change to
        any of them gives a new run id. Runs are stored under the run id of their resolved config.
        """
        data = self.to_dict()
        data.pop("data_dir", None)  # where the data are, not what they are (identity's data fingerprint)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
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


def validate_config(data: Any, source: str = "config", *, imports: bool = True) -> RunConfig:
    """Validate a config mapping; raises ``ConfigError`` with a one-line message.

    The config's ``plugins`` are imported first (their components are then known) and import paths are
    resolved. ``imports=False`` (reading a stored run's config) imports nothing: import paths are only checked
    for their form, and names that no registry knows are accepted when the config lists plugins.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    plugins = data.get("plugins")
    if plugins is not None and (not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins)):
        raise ConfigError(f"{source}: plugins: expected a list of module names (got {show(plugins)})")
    if imports:
        for index, plugin in enumerate(plugins or []):
            try:
                import_plugin(plugin)
            except ImportPathError as error:
                raise ConfigError(f"{source}: plugins[{index}]: {error}") from None
    imports_token = _IMPORTS.set(imports)
    lenient_token = _LENIENT.set(not imports and bool(plugins))
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error.errors()[0])}") from None
    finally:
        _LENIENT.reset(lenient_token)
        _IMPORTS.reset(imports_token)


def with_plugins(data: Mapping[str, Any], plugins: Sequence[str]) -> dict[str, Any]:
    """``data`` with ``plugins`` (e.g. ``--plugin`` arguments) added to its ``plugins`` list (no repeats)."""
    result = dict(data)
    if not plugins:
        return result
    listed = result.get("plugins") or []
    if not isinstance(listed, list):
        return result  # validate_config names the bad value
    result["plugins"] = [*listed, *(plugin for plugin in plugins if plugin not in listed)]
    return result


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


def load_config(path: str | Path, overrides: Sequence[str] = (), *, plugins: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a YAML run config (``plugins`` added to its ``plugins`` list)."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return validate_config(with_plugins(apply_overrides(data, overrides), plugins), str(path))


# -- resolution and identity --------------------------------------------------------------------------------

_CACHE: ContextVar[dict[Any, Any] | None] = ContextVar("mtlscope_resolve_cache", default=None)


@contextlib.contextmanager
def cached_settings() -> Iterator[None]:
    """Within this block ``resolve`` builds each setting (by its spec), computes each data and source fingerprint
    once, and reuses them: what expanding and checking a sweep of many runs does. Outside it every ``resolve``
    builds afresh, so a changed data file or module is seen by the next run."""
    if _CACHE.get() is not None:
        yield
        return
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def _cached(key: Any, compute: Any) -> Any:
    cache = _CACHE.get()
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _build_setting(spec: SettingConfig, source: str, objects: Mapping[str, Any]) -> Setting:
    """The whole setting ``spec`` names (all its tasks)."""
    from mtlscope.settings.registry import get as get_setting
    from mtlscope.settings.setting import Setting

    if spec.object is not None:
        given = objects.get("setting")
        if not isinstance(given, Setting):
            raise ConfigError(
                f"{source}: setting: given as a Python object ({clip(spec.object)}), which only reaches the process "
                "it was given in; pass it with setting=, or give the setting by import path (setting.factory)"
            )
        return given
    if spec.factory is not None:
        factory = resolve_path(spec.factory, what="setting.factory")
        built = factory(**spec.options)
        if not isinstance(built, Setting):
            raise ConfigError(
                f"{source}: setting.factory {spec.factory!r} returned a {type(built).__name__}, expected a "
                "mtlscope Setting"
            )
        return built
    assert spec.name is not None
    return get_setting(spec.name, **spec.options)


def _build_in(spec: SettingConfig, source: str, objects: Mapping[str, Any], data_dir: str | None) -> Setting:
    """``_build_setting`` with the data directory ``data_dir`` (a run config's key; None: the usual one)."""
    with use_data_directory(data_dir):
        return _build_setting(spec, source, objects)


def _data_error(error: OSError, source: str) -> ConfigError:
    """A data file the setting needs is missing (``MissingDataError``: its one line) or unreadable."""
    if isinstance(error, FileNotFoundError) and error.filename is None and error.args:
        detail = clip(str(error.args[0]), 600)
        return DataNotFoundError(f"{source}: setting: {detail}", detail)
    else:
        where = f"{error.filename}: " if error.filename else ""
        message = f"cannot read the data ({where}{error.strerror or error})"
    return ConfigError(f"{source}: setting: {clip(message, 600)}")


def build_setting(spec: SettingConfig, source: str = "config", *, data_dir: str | None = None) -> Setting:
    """The whole setting (every task) of a validated setting spec: registered, or by import path, its data read
    from ``data_dir`` (a run config's ``data_dir``; None: ``mtlscope.data.catalog.data_directory()``);
    ``ConfigError`` (one line) when it cannot be built, a missing data file included. Cached within
    ``cached_settings``."""
    try:
        key = ("setting", _setting_key(spec, {}), data_dir)
        built: Setting = _cached(key, lambda: _build_in(spec, source, {}, data_dir))
        return built
    except ConfigError:
        raise
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if error.args else str(error)
        raise ConfigError(f"{source}: setting: {clip(str(message), 400)}") from None
    except OSError as error:
        raise _data_error(error, source) from None


def _setting_key(spec: SettingConfig, objects: Mapping[str, Any]) -> str:
    data = spec.model_dump(exclude={"tasks"})
    if spec.object is not None:
        data["object"] = id(objects.get("setting"))
    return json.dumps(data, sort_keys=True, default=str)


def _module_sources(module: str) -> str | None:
    fingerprint: str | None = _cached(("module", module), lambda: module_fingerprint(module))
    return fingerprint


def _sources(data: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``({module or module:qualname: sha256}, modules to import as plugins)`` of the resolved config ``data``:
    its plugins, the modules of its import paths, and those of the registered components it uses by name that
    are not mtlscope's (a module a fresh process cannot import, ``__main__``, is keyed ``module:qualname`` and
    fingerprinted by the builder's source)."""
    sources: dict[str, str] = {}
    plugins: list[str] = list(data.get("plugins") or [])
    modules = list(plugins)
    setting = data["setting"]
    parts = [("setting", setting), ("encoder", data["model"]["encoder"]), ("head", data["model"]["head"])]
    for _, spec in parts:
        if isinstance(spec.get("factory"), str):
            modules.append(split_path(spec["factory"])[0])
    used: list[tuple[Registry[Any], str]] = [(METHODS, data["method"]["name"])]
    used += [(PROBES, name) for name in data.get("probes") or {}]
    registries: list[Registry[Any]] = [SETTINGS, ENCODERS, HEADS]
    used += [(registry, spec["name"]) for (_, spec), registry in zip(parts, registries) if "name" in spec]
    for registry, name in used:
        builder = registry.entry(name).builder
        module = getattr(builder, "__module__", "") or ""
        if is_own_module(module):
            continue
        if importable_elsewhere(module):
            modules.append(module)
            if module not in plugins:
                plugins.append(module)
        else:
            sources[f"{module}:{getattr(builder, '__qualname__', name)}"] = object_fingerprint(builder)
    for module in modules:
        if is_own_module(module):
            continue
        fingerprint = _module_sources(module)
        if fingerprint is not None:
            sources[module] = fingerprint
    return sources, plugins


def _object_fingerprint(value: Any) -> str:
    """A Python encoder or head: its code, and for an instance its initial weights."""
    import torch

    parts: dict[str, Any] = {"code": object_fingerprint(value)}
    if isinstance(value, torch.nn.Module):
        parts["state"] = {name: tensor_digest(tensor) for name, tensor in value.state_dict().items()}
    return combine(parts)


def _version() -> str:
    return str(importlib.import_module("mtlscope").__version__)


def resolve(config: RunConfig, source: str = "config", *, objects: Mapping[str, Any] | None = None) -> RunConfig:
    """Fill in the defaults that depend on the setting (its task list, its default model) and the run's
    ``identity`` (the mtlscope version, source fingerprints of the user modules the config imports, the data
    fingerprint of the setting): the *resolved* config the run id is derived from.

    ``objects``: the Python objects of a config whose setting, encoder or head is ``{object: label}`` (given to
    ``execute``). Raises ``ConfigError`` when the setting cannot be built from the config (bad task name or option
    value), or when ``training.batch_size`` is larger than the smallest training set of the run's tasks (a batch
    draws each example at most once).
    """
    if config.setting.is_environment:
        from mtlscope.rl.run import resolve_environment

        return resolve_environment(config, source)
    return resolve_with_setting(config, source, objects=objects)[0]


def _absolute(data_dir: str | None) -> str | None:
    return None if data_dir is None else str(Path(data_dir).expanduser().absolute())


def resolve_with_setting(
    config: RunConfig, source: str = "config", *, objects: Mapping[str, Any] | None = None
) -> tuple[RunConfig, Setting]:
    """``resolve`` and the run's setting (its tasks only), built once."""
    objects = dict(objects or {})
    key = _setting_key(config.setting, objects)
    data_dir = _absolute(config.data_dir)
    try:
        full = _cached(("setting", key, data_dir), lambda: _build_in(config.setting, source, objects, data_dir))
        setting = full.subset(config.setting.tasks) if config.setting.tasks is not None else full
    except ConfigError:
        raise
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if error.args else str(error)
        raise ConfigError(f"{source}: setting: {clip(str(message), 400)}") from None
    except OSError as error:  # a missing data file (MissingDataError: one line naming it), an unreadable one
        raise _data_error(error, source) from None
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
    if data_dir is not None:  # absolute, so a worker with another working directory finds the same folder
        data["data_dir"] = data_dir
    data["setting"]["tasks"] = list(setting.task_names)
    if config.setting.name is not None:  # every option with its value: the defaults, then the config's
        defaults = SETTINGS.entry(config.setting.name).options()
        declared = {key: value for key, value in defaults.items() if value is not inspect.Parameter.empty}
        data["setting"]["options"] = json.loads(json.dumps({**declared, **config.setting.options}, default=list))
    data["model"]["encoder"] = data["model"]["encoder"] or dict(setting.default_model["encoder"])
    data["model"]["head"] = data["model"]["head"] or dict(setting.default_model["head"])
    try:
        sources, plugins = _sources(data)
    except ImportPathError as error:
        raise ConfigError(f"{source}: {error}") from None
    if plugins:
        data["plugins"] = plugins
    tasks = tuple(setting.task_names)
    identity: dict[str, Any] = {
        "mtlscope": _version(),
        "sources": sources,
        "data": _cached(
            ("data", key, data_dir, tasks),
            lambda: combine({"tasks": setting.fingerprint(), "epoch_examples": setting.epoch_examples}),
        ),
    }
    given = {part: objects[part] for part in ("encoder", "head") if data["model"][part].get("object") is not None}
    if given:
        identity["objects"] = {part: _object_fingerprint(value) for part, value in given.items()}
    data["identity"] = identity
    return validate_config(data, source), setting


def in_process_only(config: RunConfig) -> str | None:
    """What of the resolved ``config`` another process cannot rebuild (a Python object, a component defined in
    ``__main__``), as a phrase; ``None`` when a sweep or Ray worker can run it."""
    for part, spec in (
        ("setting", config.setting.model_dump()),
        ("encoder", config.model.encoder or {}),
        ("head", config.model.head or {}),
    ):
        if spec.get("object") is not None:
            return f"its {part} is a Python object ({clip(str(spec['object']))})"
    for key in (config.identity or {}).get("sources", {}):
        if ":" in key:
            return f"{clip(key)} is defined in a module other processes cannot import"
    return None
