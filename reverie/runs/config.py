"""Typed run configurations: dataclass fields, presets, ``field=value`` overrides, help text.

Every recipe describes its hyper-parameters as a dataclass that subclasses
:class:`RunConfig`. Each field carries a help string (declare fields with :func:`cfg`
or :func:`cfg_factory`), and the class attribute ``PRESETS`` names bundles of values
(at least ``"debug"``: a run that finishes in seconds).

A configuration is built in layers by :func:`resolve_config`: the dataclass defaults,
then a config file's values (:func:`read_config_file`, JSON or YAML), then the named
presets (in the recipe's order with ``debug`` last, so they compose in any order; two
presets that are alternatives are an error), then ``field=value`` overrides parsed from
strings with the field's type annotation.

>>> from dataclasses import dataclass
>>> from typing import ClassVar, Literal
>>> @dataclass
... class Config(RunConfig):
...     lr: float = cfg(1e-3, "Adam learning rate.")
...     hidden: tuple[int, ...] = cfg((64, 64), "Hidden layer widths.")
...     loss: Literal["mse", "nll"] = cfg("nll", "Reward loss.")
...     PRESETS: ClassVar[dict[str, dict[str, object]]] = {
...         "debug": {"hidden": (8,), "progress": False},
...     }
>>> c = resolve_config(Config, ["debug"], ["lr=3e-4", "hidden=32,32", "seed=1"])
>>> c.lr, c.hidden, c.progress, c.seed
(0.0003, (32, 32), False, 1)
>>> resolve_config(Config, [], ["lr=fast"])
Traceback (most recent call last):
...
ValueError: Cannot parse lr='fast': expected float.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

__all__ = [
    "check_bounds",
    "RunConfig",
    "cfg",
    "cfg_factory",
    "resolve_config",
    "apply_overrides",
    "apply_preset",
    "parse_value",
    "config_to_dict",
    "config_from_dict",
    "format_help",
    "explicit_fields",
    "read_config_file",
]

C = TypeVar("C", bound="RunConfig")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}


def cfg(default: Any, help: str, *, low: float | None = None, high: float | None = None,  # noqa: A002
        low_open: bool = False) -> Any:
    """Declare a config field with a default value, a help string and optional bounds.

    Use it for immutable defaults (numbers, strings, ``None``, tuples); use
    :func:`cfg_factory` for mutable ones (lists, dicts).

    Args:
        default: the field's default value.
        help: one or two sentences shown by ``reverie train ALGO --help``.

    Keyword Args:
        low, high: inclusive bounds of a numeric field (``None``: unbounded on that side),
            checked by :meth:`RunConfig.__post_init__` before any work is done and shown
            in ``--help``. Float fields must always be finite (no NaN or inf).
        low_open: ``low`` is exclusive (``> low`` rather than ``>= low``).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = cfg(1e-3, "Learning rate.", low=0, low_open=True)
    >>> C().lr
    0.001
    >>> check_bounds(C(lr=0.0))
    Traceback (most recent call last):
    ...
    ValueError: lr=0.0 is out of range: it must be > 0.
    """
    meta: dict[str, Any] = {"help": help}
    if low is not None or high is not None:
        meta["bounds"] = (low, high, low_open)
    return dataclasses.field(default=default, metadata=meta)


def cfg_factory(factory: Callable[[], Any], help: str) -> Any:  # noqa: A002
    """Declare a config field whose default is built by ``factory()`` (e.g. a list).

    Args:
        factory: zero-argument callable returning a fresh default value.
        help: help string shown by ``reverie train ALGO --help``.
    """
    return dataclasses.field(default_factory=factory, metadata={"help": help})


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _range_text(bounds: tuple) -> str:
    low, high, low_open = bounds
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_number(low)}")
    if high is not None:
        parts.append(f"<= {_number(high)}")
    return " and ".join(parts)


def check_bounds(config: Any) -> None:
    """Check every field of a config dataclass against its :func:`cfg` bounds, and that
    every float is finite; ``None`` values (optional fields) are skipped.

    Raises:
        ValueError: naming the field, its value and the allowed range.
    """
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name}={value!r}: it must be a finite number.")
        bounds = f.metadata.get("bounds")
        if bounds is None:
            continue
        low, high, low_open = bounds
        if ((low is not None and (value <= low if low_open else value < low))
                or (high is not None and value > high)):
            raise ValueError(f"{f.name}={value!r} is out of range: it must be "
                             f"{_range_text(bounds)}.")


@dataclass
class RunConfig:
    """Fields every recipe shares. Recipes subclass it and add their own fields.

    Subclasses define ``PRESETS: ClassVar[dict[str, dict[str, object]]]`` mapping a
    preset name to ``{field: value}``; values may be Python values or strings (parsed
    like command-line overrides). Every recipe has at least a ``"debug"`` preset.
    """

    env: str = cfg("Pendulum-v1", "Environment id (a Gymnasium id such as Pendulum-v1).")
    seed: int = cfg(0, "Seed for python `random`, numpy and torch (also the env seed).",
                    low=0, high=2**32 - 1)
    num_threads: int = cfg(
        1,
        "torch.set_num_threads value. Keep 1 for small models on CPU: small ops run "
        "30-50x slower when they are split across threads.",
    )
    device: str = cfg(
        "cpu",
        "Torch device of the models, sampled batches, losses and planners (cpu, cuda, cuda:1, "
        "mps, or auto: cuda when present). Environments always run on the CPU.",
    )
    num_envs: int = cfg(1, "Environments stepped together as one batched env by each collector.")
    vector_env: Literal["serial", "parallel"] = cfg(
        "serial", "How num_envs > 1 envs run: serial (one process) or parallel (one process each)."
    )
    collector_workers: int = cfg(
        0,
        "Collector processes (TorchRL MultiSyncCollector, policy weights synced after every "
        "update); 0 collects in the training process.",
    )
    run_dir: str | None = cfg(
        None,
        "Run folder. Default: runs/<algo>/<env>/<YYYYmmdd-HHMMSS>-s<seed> under the "
        "current directory.",
    )
    checkpoint_every: int = cfg(
        10_000,
        "Save checkpoint.pt every this many recipe steps (the `step` counter passed to "
        "run.log, i.e. environment steps for online recipes, gradient updates for offline "
        "ones). 0 saves only at the end.",
        low=0,
    )
    logger: str = cfg(
        "csv", "Loggers beside metrics.csv (always written), comma-separated: csv (none), "
        "tensorboard, wandb, mlflow (TorchRL's loggers, under logs/; extras reverie[tensorboard], "
        "reverie[wandb], reverie[mlflow])."
    )
    logger_offline: bool = cfg(
        True, "W&B and MLflow write inside the run folder (sync later: wandb sync logs/wandb/...); "
        "false: W&B logs online, MLflow to MLFLOW_TRACKING_URI."
    )
    progress: bool = cfg(True, "Show a tqdm progress bar.")
    verbose: bool = cfg(False, "Show TorchRL's INFO log lines (off: its warnings and errors only).")
    video: bool = cfg(True, "At the end, write diagnostics/eval_episode.mp4 (.gif without an MP4 "
                      "encoder): evaluation episode 0 rendered by the env; pixel world models also "
                      "write their open-loop real-vs-imagined clip.")
    resume: str | None = cfg(
        None, "Run folder to continue from its checkpoint.pt (uses that run's saved config)."
    )

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {}

    def __post_init__(self) -> None:
        for name, low in (("num_threads", 1), ("num_envs", 1), ("collector_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        check_bounds(self)
        from .loggers import parse_loggers

        parse_loggers(self.logger, check_packages=True)  # before any folder is created


# ----------------------------------------------------------------------------- types


def _field_types(config_cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of ``config_cls`` (handles string annotations)."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation: ``int``, ``tuple[int, ...]``, ``str | None``."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", str(tp))


class _ParseError(Exception):
    """Internal: a value does not match a type (converted to ValueError with context)."""


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _ParseError


def _parse_int(text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:  # "1e5" and "100000.0" are integers written as floats
        x = float(text)
    except ValueError:
        raise _ParseError from None
    if x.is_integer():
        return int(x)
    raise _ParseError


def _split_sequence(text: str) -> list[Any]:
    """Items of a comma-separated list or of a JSON / Python-literal list or tuple."""
    text = text.strip()
    if text[:1] in ("[", "("):
        body = text
        if body.startswith("(") and body.endswith(")"):  # Python tuple syntax: (8,) or (1, 2)
            body = "[" + body[1:-1].strip().rstrip(",") + "]"
        try:
            items = json.loads(body)
        except json.JSONDecodeError:
            raise _ParseError from None
        if not isinstance(items, list):
            raise _ParseError
        return items
    if text == "":
        return []
    return [item.strip() for item in text.split(",")]


def _convert(value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string, or a Python/JSON value) to the annotation ``tp``.

    Raises:
        _ParseError: if the value does not fit.
    """
    if tp is Any:
        return value
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _ParseError
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
            return None
        # Prefer an exact match for non-strings (e.g. an int for ``int | str``).
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _ParseError:
                continue
        raise _ParseError
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        if isinstance(value, str):
            for choice in choices:
                if value.strip() == str(choice) or (
                    isinstance(choice, bool) and value.strip().lower() == str(choice).lower()
                ):
                    return choice
        raise _ParseError
    if origin in (tuple, list):
        items = _split_sequence(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _ParseError
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _ParseError
            out = [_convert(v, a) for v, a in zip(items, args, strict=True)]
        else:
            elem = args[0] if args else Any
            out = [_convert(v, elem) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _ParseError from None
        if not isinstance(value, dict):
            raise _ParseError
        key_t, val_t = typing.get_args(tp) or (Any, Any)
        return {_convert(k, key_t): _convert(v, val_t) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            return _parse_bool(value)
        raise _ParseError
    if tp is int:
        if isinstance(value, bool):
            raise _ParseError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return _parse_int(value)
        raise _ParseError
    if tp is float:
        if isinstance(value, bool):
            raise _ParseError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _ParseError from None
        raise _ParseError
    if tp is str:
        if isinstance(value, str):
            return value
        raise _ParseError
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):  # e.g. pathlib.Path
            try:
                return tp(value)
            except Exception:
                raise _ParseError from None
    raise _ParseError


def parse_value(text: str | Any, tp: Any, name: str = "value") -> Any:
    """Parse ``text`` into a value of the type annotation ``tp``.

    Supported: ``int`` (also ``1e5``), ``float``, ``bool`` (true/false, 1/0, yes/no,
    on/off), ``str``, ``X | None`` (``none`` / ``null``), ``Literal[...]`` (validated),
    ``tuple[...]`` / ``list[...]`` (comma-separated ``64,64`` or JSON ``[64, 64]``),
    ``dict[...]`` (JSON). Non-string values are checked and coerced the same way (an
    int for a float field, a list for a tuple field).

    Args:
        text: the string (or Python value) to convert.
        tp: the type annotation.
        name: the field name, used in the error message.

    Raises:
        ValueError: naming the field, the value and the expected type.

    >>> parse_value("32,32", tuple[int, ...])
    (32, 32)
    >>> parse_value("none", int | None) is None
    True
    """
    try:
        return _convert(text, tp)
    except _ParseError:
        raise ValueError(f"Cannot parse {name}={text!r}: expected {_type_name(tp)}.") from None


# ----------------------------------------------------------------------------- presets


def _unknown(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}.")


def _presets(config_cls: type) -> dict[str, dict[str, object]]:
    return dict(getattr(config_cls, "PRESETS", {}) or {})


def apply_preset(values: dict[str, Any], config_cls: type, preset: str) -> dict[str, Any]:
    """Return ``values`` (field name -> value) updated with the named preset of ``config_cls``.

    Raises:
        ValueError: unknown preset (the message lists the valid presets), or a preset
            that sets an unknown field or a value of the wrong type.
    """
    presets = _presets(config_cls)
    if preset not in presets:
        raise _unknown("preset", preset, presets)
    types_ = _field_types(config_cls)
    out = dict(values)
    for name, value in presets[preset].items():
        if name not in types_:
            raise ValueError(
                f"Preset {preset!r} of {config_cls.__name__} sets unknown field {name!r}. "
                f"Valid fields: {', '.join(types_)}."
            )
        out[name] = parse_value(value, types_[name], name)
    return out


#: the preset that shrinks any run to a smoke test: applied after the others, whatever the order
DEBUG_PRESET = "debug"


def order_presets(config_cls: type, presets: Sequence[str]) -> list[str]:
    """The presets in the order they apply: the recipe's declaration order (``PRESETS``), with
    ``debug`` last, whatever order they were given in -- so presets compose in any order.

    Raises:
        ValueError: an unknown preset, or two presets other than ``debug`` that set one field
            to different values (they are alternatives: the message names both and the field).

    >>> order_presets(RunConfig, [])
    []
    """
    declared = _presets(config_cls)
    for name in presets:
        if name not in declared:
            raise _unknown("preset", name, declared)
    names = list(dict.fromkeys(presets))
    order = list(declared)
    names.sort(key=lambda n: (n == DEBUG_PRESET, order.index(n)))
    plain = [n for n in names if n != DEBUG_PRESET]
    for i, a in enumerate(plain):
        for b in plain[i + 1:]:
            for field in declared[a].keys() & declared[b].keys():
                if declared[a][field] != declared[b][field]:
                    raise ValueError(
                        f"Presets {a!r} and {b!r} both set {field} ({declared[a][field]!r} vs "
                        f"{declared[b][field]!r}): they are alternatives. Give one of them and set "
                        f"single fields with field=value (e.g. {field}={declared[b][field]}).")
    return names


def _split_override(item: str) -> tuple[str, str]:
    """``"field=value"`` -> ``("field", "value")`` (``--field-name=v`` is accepted too)."""
    name, sep, text = item.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if not sep or not name:
        raise ValueError(f"Override {item!r} is not of the form field=value.")
    return name, text


def apply_overrides(
    values: dict[str, Any], config_cls: type, overrides: Iterable[str]
) -> dict[str, Any]:
    """Return ``values`` updated with ``field=value`` strings parsed by type annotation.

    Raises:
        ValueError: malformed override, unknown field (lists the valid fields), or a
            value that does not parse (names the field, value and expected type).
    """
    types_ = _field_types(config_cls)
    out = dict(values)
    for item in overrides:
        name, text = _split_override(item)
        if name not in types_:
            raise _unknown("field", name, types_)
        out[name] = parse_value(text, types_[name], name)
    return out


def _defaults(config_cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


#: fields a config file never sets: they name the run a file came from, not settings
RUN_IDENTITY_FIELDS = ("run_dir", "resume")


def read_config_file(path: str | os.PathLike, algo: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """Read config values from a JSON or YAML file (``.yaml``/``.yml`` needs PyYAML).

    The file is either a mapping ``{field: value}`` or a run's ``config.json``
    (``{"algo": ..., "config": {...}}``). ``run_dir`` and ``resume`` are left out: a file
    holds settings, and a new run gets its own folder.

    Args:
        path: the file.
        algo: the recipe the values are for; a run's ``config.json`` of another recipe is
            an error.

    Returns:
        ``(algo, values)``: the recipe the file names (``None`` for a plain mapping) and
        the field values (unparsed; :func:`resolve_config` checks names and types).

    Raises:
        ValueError: the file is missing, does not parse, is not a mapping, or names
            another recipe.

    Examples:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "my.json"
        >>> _ = f.write_text(json.dumps({"seed": 3, "run_dir": "runs/old"}))
        >>> read_config_file(f)
        (None, {'seed': 3})
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist (or is not a file).")
    text = path.read_text()
    loads = json.loads
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"config file {str(path)!r} is YAML, which needs PyYAML: pip install "
                             "pyyaml (or 'reverie[yaml]'), or give a .json file.") from None
        loads = yaml.safe_load
    try:
        data = loads(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"config file {str(path)!r} does not parse: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} holds a {type(data).__name__}, not a mapping "
                         "of field: value (or a run's config.json).")
    named = None
    if "config" in data and isinstance(data["config"], dict) and set(data) <= {"algo", "config"}:
        named, data = data.get("algo"), data["config"]
        if algo is not None and named is not None and named != algo:
            raise ValueError(f"config file {str(path)!r} is the config of a {named!r} run, not {algo!r}.")
    return named, {k: v for k, v in data.items() if k not in RUN_IDENTITY_FIELDS}


def apply_file_values(values: dict[str, Any], config_cls: type, file_values: Mapping[str, Any],
                      source: str = "config file") -> dict[str, Any]:
    """Return ``values`` updated with ``file_values`` (field -> value, parsed by type).

    Raises:
        ValueError: an unknown field (names the source and lists the valid fields) or a value
            of the wrong type.
    """
    types_ = _field_types(config_cls)
    out = dict(values)
    for name, value in file_values.items():
        if name not in types_:
            err = _unknown("field", name, types_)
            raise ValueError(f"{source}: {err}") from None
        out[name] = parse_value(value, types_[name], name)
    return out


def resolve_config(
    config_cls: type[C],
    presets: Sequence[str] = (),
    overrides: Sequence[str] = (),
    *,
    base: C | None = None,
    file_values: Mapping[str, Any] | None = None,
    file_source: str = "config file",
) -> C:
    """Build a config: dataclass defaults, then ``file_values`` (a config file), then
    ``presets`` in order, then ``overrides``.

    Args:
        config_cls: a :class:`RunConfig` subclass (every field needs a default).
        presets: names from ``config_cls.PRESETS``; they apply in the recipe's order with
            ``debug`` last (:func:`order_presets`), so the order given does not matter.
        overrides: ``"field=value"`` strings, parsed with the field's annotation.
        base: start from this config instead of the defaults (used to resume a run
            with a few fields changed).
        file_values: field values read from a file (:func:`read_config_file`).
        file_source: how errors name the file.

    Returns:
        An instance of ``config_cls``. It remembers the names of the fields the presets
        and overrides set (see :func:`explicit_fields`); :class:`~reverie.runs.Run` uses
        them when resuming, so ``stop_after=none`` wins over a saved value even though
        ``None`` is the default.

    Raises:
        ValueError: unknown preset or field (the message lists valid names) or an
            unparsable value (the message names the field, value and expected type).
    """
    if base is not None:
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    else:
        values = _defaults(config_cls)
    explicit: set[str] = set()
    if file_values:
        values = apply_file_values(values, config_cls, file_values, file_source)
        explicit.update(file_values)
    for preset in order_presets(config_cls, presets):
        values = apply_preset(values, config_cls, preset)
        explicit.update(_presets(config_cls)[preset])
    values = apply_overrides(values, config_cls, overrides)
    explicit.update(_split_override(item)[0] for item in overrides)
    config = config_cls(**values)
    object.__setattr__(config, _EXPLICIT_ATTR, frozenset(explicit))
    return config


_EXPLICIT_ATTR = "_reverie_explicit_fields"


def explicit_fields(config: Any) -> frozenset[str]:
    """Names of the fields that :func:`resolve_config` set from presets or overrides.

    Empty for a config built any other way.

    >>> sorted(explicit_fields(resolve_config(RunConfig, [], ["seed=0", "env=CartPole-v1"])))
    ['env', 'seed']
    """
    return getattr(config, _EXPLICIT_ATTR, frozenset())


# ----------------------------------------------------------------------------- JSON


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The init fields of a config dataclass as a JSON-ready dict (tuples become lists).

    >>> config_to_dict(RunConfig(seed=3))["seed"]
    3
    """
    return {
        f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init
    }


def config_from_dict(config_cls: type[C], data: Mapping[str, Any], *, strict: bool = True) -> C:
    """Rebuild a config from :func:`config_to_dict` output (lists become tuples again).

    Fields missing from ``data`` take their default.

    Args:
        config_cls: the config dataclass.
        data: field name -> JSON value.
        strict: raise on keys that are not fields of ``config_cls``; if False, ignore them.

    Raises:
        ValueError: unknown field (when ``strict``) or a value of the wrong type.

    >>> c = RunConfig(seed=3, run_dir="runs/x")
    >>> config_from_dict(RunConfig, config_to_dict(c)) == c
    True
    """
    types_ = _field_types(config_cls)
    values = _defaults(config_cls)
    data = dict(data)
    if "tensorboard" in data and "tensorboard" not in types_ and "logger" in types_:
        # runs saved before `logger` existed: tensorboard=true logged to TensorBoard when installed
        legacy = data.pop("tensorboard")
        if legacy is True and "logger" not in data and importlib.util.find_spec("tensorboard"):
            data["logger"] = "tensorboard"
    for name, value in data.items():
        if name not in types_:
            if strict:
                raise _unknown("field", name, types_)
            continue
        values[name] = parse_value(value, types_[name], name)
    return config_cls(**values)


# ----------------------------------------------------------------------------- help


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "()"
    return repr(value) if isinstance(value, str) else str(value)


def format_help(config_cls: type, prog: str | None = None) -> str:
    """Help text listing every field (type, default, help string) and every preset.

    Recipe-specific fields come first, then the fields shared by all recipes
    (:class:`RunConfig`). Used by ``reverie train ALGO --help``.

    Args:
        config_cls: the config dataclass.
        prog: optional usage prefix, e.g. ``"reverie train worldmodel"``.
    """
    types_ = _field_types(config_cls)
    defaults = _defaults(config_cls)
    base = {f.name for f in dataclasses.fields(RunConfig)}
    lines: list[str] = []
    if prog:
        lines += [f"usage: {prog} [--env ENV] [--seed N] [--preset NAME ...] [field=value ...]", ""]
    doc = (config_cls.__doc__ or "").strip()
    if doc and not doc.startswith(config_cls.__name__ + "("):  # skip dataclass auto-docs
        lines += [textwrap.dedent(doc).strip(), ""]

    def block(title: str, names: list[str]) -> None:
        if not names:
            return
        lines.append(title)
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        for name in names:
            default = _format_value(defaults.get(name, "<required>"))
            lines.append(f"  {name}: {_type_name(types_[name])} = {default}")
            text = fields[name].metadata.get("help", "")
            bounds = fields[name].metadata.get("bounds")
            if bounds is not None:
                text = f"{text} (range: {_range_text(bounds)})".strip()
            if text:
                lines.extend(
                    textwrap.wrap(
                        text, width=88, initial_indent="      ", subsequent_indent="      "
                    )
                )
        lines.append("")

    own = [n for n in types_ if n not in base]
    shared = [n for n in types_ if n in base]
    block("Recipe fields (override with field=value):", own)
    block("Run fields, shared by all recipes (override with field=value):", shared)

    presets = _presets(config_cls)
    lines.append("Presets (--preset NAME, repeatable, in any order: they apply in the order listed,")
    lines.append("debug last; two that set one field to different values are alternatives):")
    if not presets:
        lines.append("  (none)")
    for name, values in presets.items():
        setting = ", ".join(f"{k}={_format_value(v)}" for k, v in values.items()) or "(nothing)"
        lines += textwrap.wrap(
            f"{name}: {setting}", width=92, initial_indent="  ", subsequent_indent="      "
        )
    return "\n".join(lines).rstrip() + "\n"
