"""Typed configs: string parsing, presets, overrides, help text, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from reverie.runs import (
    RunConfig,
    cfg,
    cfg_factory,
    config_from_dict,
    config_to_dict,
    explicit_fields,
    format_help,
    parse_value,
    resolve_config,
)


@dataclass
class DemoConfig(RunConfig):
    """A demo recipe config."""

    lr: float = cfg(1e-3, "Adam learning rate.")
    steps: int = cfg(1000, "Number of updates.")
    hidden: tuple[int, ...] = cfg((64, 64), "Hidden layer widths.")
    pair: tuple[float, float] = cfg((0.5, 2.0), "A fixed-length pair.")
    scales: list[float] = cfg_factory(lambda: [1.0], "Per-head loss scales.")
    horizon: int | None = cfg(None, "Imagination horizon (none: episode length).")
    loss: Literal["mse", "nll"] = cfg("nll", "Reward loss kind.")
    use_ensemble: bool = cfg(False, "Train an ensemble.")
    name: str = cfg("demo", "Free text.")
    weights: dict[str, float] = cfg_factory(dict, "Named weights.")

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"steps": 10, "hidden": (8,), "progress": False},
        "fast": {"steps": 100, "lr": 3e-3},
        "strings": {"hidden": "16,16", "use_ensemble": "yes"},
    }


def test_defaults_and_no_overrides():
    c = resolve_config(DemoConfig)
    assert c == DemoConfig()
    assert c.env == "Pendulum-v1" and c.seed == 0 and c.num_threads == 1 and c.device == "cpu"
    assert c.run_dir is None and c.resume is None and c.logger == "csv" and c.progress


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("lr=3e-4", "lr", 3e-4),
        ("lr=1", "lr", 1.0),
        ("steps=200", "steps", 200),
        ("steps=1e5", "steps", 100_000),
        ("steps=100_000", "steps", 100_000),
        ("hidden=32,32,16", "hidden", (32, 32, 16)),
        ("hidden=[32, 32]", "hidden", (32, 32)),
        ("hidden=(8,)", "hidden", (8,)),
        ("hidden=", "hidden", ()),
        ("pair=1,3", "pair", (1.0, 3.0)),
        ("scales=0.5,2", "scales", [0.5, 2.0]),
        ("horizon=15", "horizon", 15),
        ("horizon=none", "horizon", None),
        ("horizon=NULL", "horizon", None),
        ("loss=mse", "loss", "mse"),
        ("use_ensemble=true", "use_ensemble", True),
        ("use_ensemble=Yes", "use_ensemble", True),
        ("use_ensemble=1", "use_ensemble", True),
        ("use_ensemble=no", "use_ensemble", False),
        ("use_ensemble=0", "use_ensemble", False),
        ("use_ensemble=False", "use_ensemble", False),
        ("name=a=b c", "name", "a=b c"),
        ("name=none", "name", "none"),  # a plain str field keeps the text
        ("env=CartPole-v1", "env", "CartPole-v1"),
        ("run_dir=/tmp/x", "run_dir", "/tmp/x"),
        ("resume=none", "resume", None),
        ("progress=off", "progress", False),
        ('weights={"a": 1, "b": 0.5}', "weights", {"a": 1.0, "b": 0.5}),
    ],
)
def test_parse_each_type(override, field, expected):
    c = resolve_config(DemoConfig, [], [override])
    value = getattr(c, field)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, (tuple, list)):
        assert all(type(v) is type(e) for v, e in zip(value, expected, strict=True))


@pytest.mark.parametrize(
    "override, expected_type",
    [
        ("lr=fast", "float"),
        ("steps=1.5", "int"),
        ("steps=abc", "int"),
        ("hidden=1,a", "tuple[int, ...]"),
        ("pair=1,2,3", "tuple[float, float]"),
        ("horizon=soon", "int | None"),
        ("loss=l1", "one of 'mse', 'nll'"),
        ("use_ensemble=maybe", "bool"),
        ("weights=[1]", "dict[str, float]"),
        ("seed=none", "int"),
    ],
)
def test_unparsable_value_names_field_value_and_type(override, expected_type):
    field, _, value = override.partition("=")
    with pytest.raises(ValueError) as info:
        resolve_config(DemoConfig, [], [override])
    msg = str(info.value)
    assert field in msg and repr(value) in msg and expected_type in msg


def test_unknown_field_lists_valid_fields_and_suggests():
    with pytest.raises(ValueError, match="Unknown field 'hiden'") as info:
        resolve_config(DemoConfig, [], ["hiden=3"])
    msg = str(info.value)
    assert "Did you mean 'hidden'" in msg
    for name in ("lr", "steps", "seed", "env", "checkpoint_every"):
        assert name in msg


def test_malformed_override():
    with pytest.raises(ValueError, match="field=value"):
        resolve_config(DemoConfig, [], ["lr"])


def test_presets_compose_in_any_order_with_debug_last_then_overrides_win():
    for order in (["debug", "fast"], ["fast", "debug"]):
        c = resolve_config(DemoConfig, order, [])  # debug shrinks whatever else was chosen
        assert c.steps == 10 and c.lr == 3e-3 and c.hidden == (8,) and c.progress is False
    c = resolve_config(DemoConfig, ["debug", "fast"], ["steps=7"])
    assert c.steps == 7
    assert resolve_config(DemoConfig, ["fast", "strings"]) == resolve_config(DemoConfig, ["strings", "fast"])


def test_presets_that_are_alternatives_are_refused_naming_both_and_the_field():
    class Sized(DemoConfig):
        PRESETS: ClassVar[dict[str, dict[str, object]]] = {
            "small": {"steps": 100, "lr": 1e-3}, "large": {"steps": 1000, "lr": 1e-3}, "debug": {"steps": 1}}

    with pytest.raises(ValueError, match=r"Presets 'small' and 'large' both set steps \(100 vs 1000\)"):
        resolve_config(Sized, ["large", "small"])
    with pytest.raises(ValueError, match="alternatives"):  # debug does not settle it
        resolve_config(Sized, ["large", "small", "debug"])
    assert resolve_config(Sized, ["debug", "large"]).steps == 1
    # preset values written as strings are parsed like overrides
    c = resolve_config(DemoConfig, ["strings"])
    assert c.hidden == (16, 16) and c.use_ensemble is True


def test_unknown_preset_lists_valid_presets():
    with pytest.raises(ValueError, match="Unknown preset 'fastest'") as info:
        resolve_config(DemoConfig, ["fastest"])
    assert "debug" in str(info.value) and "fast" in str(info.value) and "strings" in str(info.value)


def test_preset_with_bad_field_is_reported():
    @dataclass
    class Broken(RunConfig):
        PRESETS: ClassVar[dict[str, dict[str, object]]] = {"debug": {"stepz": 1}}

    with pytest.raises(ValueError, match="Preset 'debug'.*unknown field 'stepz'"):
        resolve_config(Broken, ["debug"])


def test_explicit_fields_and_base():
    base = resolve_config(DemoConfig, [], ["steps=5", "horizon=3"])
    c = resolve_config(DemoConfig, [], ["horizon=none", "lr=1e-3"], base=base)
    assert c.steps == 5 and c.horizon is None
    assert explicit_fields(c) == {"horizon", "lr"}  # set even when equal to the default
    assert explicit_fields(resolve_config(DemoConfig, ["fast"])) == {"steps", "lr"}
    assert explicit_fields(DemoConfig()) == frozenset()


def test_parse_value_directly():
    assert parse_value("4,5", tuple[int, ...]) == (4, 5)
    assert parse_value(["1", 2], list[int]) == [1, 2]
    assert parse_value(3, float) == 3.0
    with pytest.raises(ValueError, match="Cannot parse x=True: expected int"):
        parse_value(True, int, "x")


def test_json_round_trip():
    c = resolve_config(
        DemoConfig,
        ["debug"],
        ["hidden=3,4", "pair=1,2", "horizon=7", "loss=mse", 'weights={"a": 2}', "run_dir=r"],
    )
    d = config_to_dict(c)
    text = json.dumps(d)
    back = config_from_dict(DemoConfig, json.loads(text))
    assert back == c
    assert isinstance(back.hidden, tuple) and isinstance(back.pair, tuple)
    assert config_from_dict(DemoConfig, {}) == DemoConfig()  # missing keys: defaults
    with pytest.raises(ValueError, match="Unknown field 'gone'"):
        config_from_dict(DemoConfig, {**d, "gone": 1})
    assert config_from_dict(DemoConfig, {**d, "gone": 1}, strict=False) == c


def test_from_future_annotations_are_resolved():
    # this module uses `from __future__ import annotations`: annotations are strings
    assert isinstance(DemoConfig.__annotations__["lr"], str)
    assert resolve_config(DemoConfig, [], ["lr=2"]).lr == 2.0


def test_help_lists_every_field_with_type_default_help_and_presets():
    text = format_help(DemoConfig, prog="reverie train demo")
    assert "reverie train demo" in text
    assert "A demo recipe config." in text
    for name in ("lr", "steps", "hidden", "pair", "scales", "horizon", "loss", "use_ensemble"):
        assert f"  {name}: " in text
    for name in ("env", "seed", "num_threads", "device", "run_dir", "checkpoint_every"):
        assert f"  {name}: " in text
    for name in ("logger", "progress", "resume"):
        assert f"  {name}: " in text
    assert "lr: float = 0.001" in text
    assert "hidden: tuple[int, ...] = 64,64" in text
    assert "horizon: int | None = None" in text
    assert "loss: one of 'mse', 'nll' = 'nll'" in text
    assert "Adam learning rate." in text and "Imagination horizon" in text
    assert "30-50x" in text  # RunConfig's help strings are shown too
    assert "debug: steps=10, hidden=8, progress=False" in text
    assert "fast: steps=100, lr=0.003" in text
    # recipe fields are listed before the shared run fields
    assert text.index("  lr: ") < text.index("  env: ")


def test_bounds_and_finiteness_are_checked_with_the_field_named():
    from reverie.runs import RunConfig

    with pytest.raises(ValueError, match=r"seed=-1 is out of range: it must be >= 0"):
        RunConfig(seed=-1)
    with pytest.raises(ValueError, match=r"checkpoint_every=-5 is out of range"):
        RunConfig(checkpoint_every=-5)
    with pytest.raises(ValueError, match=r"num_threads must be an integer >= 1, got 0"):
        RunConfig(num_threads=0)


def test_help_shows_the_range():
    from reverie.runs import RunConfig, format_help

    assert "(range: >= 0 and <= 4294967295)" in " ".join(format_help(RunConfig).split())
