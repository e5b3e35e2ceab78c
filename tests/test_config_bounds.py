"""Range checks of the recipe configs (issue 17): every numeric field has bounds, the
relations between fields are checked in ``Config.__post_init__``, and a bad value is
refused before any work is done or any run folder is created (the CLI exits 2)."""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from reverie.algorithms import ALGORITHMS, load_algorithm
from reverie.cli import main
from reverie.runs import format_help, resolve_config

RECIPES = sorted(ALGORITHMS)

PRESETS = [(algo, preset) for algo in RECIPES for preset in load_algorithm(algo).Config.PRESETS]


@pytest.mark.parametrize("algo", RECIPES)
def test_defaults_construct(algo):
    load_algorithm(algo).Config()


@pytest.mark.parametrize(("algo", "preset"), PRESETS)
def test_every_preset_constructs(algo, preset):
    config = resolve_config(load_algorithm(algo).Config, [preset], [])
    assert type(config).__name__ == "Config"


def _is_number(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_number(a) for a in typing.get_args(tp) if a is not type(None))
    return tp in (int, float)


@pytest.mark.parametrize("algo", RECIPES)
def test_every_numeric_recipe_field_has_bounds(algo):
    """Fields the recipe declares (or re-declares, such as checkpoint_every) carry bounds."""
    config_cls = load_algorithm(algo).Config
    hints = typing.get_type_hints(config_cls)
    own = config_cls.__dict__.get("__annotations__", {})
    missing = [f.name for f in dataclasses.fields(config_cls)
               if f.name in own and _is_number(hints[f.name]) and "bounds" not in f.metadata]
    assert not missing, f"{algo}: numeric fields without bounds: {missing}"


BAD = [
    # worldmodel
    ("worldmodel", ["random_episodes=0"], r"random_episodes=0 is out of range: it must be >= 1"),
    ("worldmodel", ["iterations=0"], r"iterations=0 is out of range"),
    ("worldmodel", ["iterations=-3"], r"iterations=-3 is out of range"),
    ("worldmodel", ["max_episode_steps=0"], r"max_episode_steps=0 is out of range"),
    ("worldmodel", ["eval_episodes=0"], r"eval_episodes=0 is out of range"),
    ("worldmodel", ["lr=inf"], r"lr=inf: it must be a finite number"),
    ("worldmodel", ["lr=0"], r"lr=0.0 is out of range: it must be > 0"),
    ("worldmodel", ["plan_candidates=0"], r"plan_candidates=0"),
    ("worldmodel", ["buffer_size=1"], r"buffer_size=1 is out of range: it must be >= 2"),
    ("worldmodel", ["checkpoint_every=-1"], r"checkpoint_every=-1 is out of range"),
    ("worldmodel", ["random_episodes=1", "max_episode_steps=1"],
     r"random_episodes=1 x max_episode_steps=1"),
    # pets
    ("pets", ["episodes=0"], r"episodes=0 is out of range"),
    ("pets", ["episodes=-3"], r"episodes=-3 is out of range"),
    ("pets", ["episodes=1"], r"episodes=1 must be more than random_episodes=1"),
    ("pets", ["episodes=3", "random_episodes=5"], r"episodes=3 must be more than random_episodes=5"),
    ("pets", ["random_episodes=0"], r"random_episodes=0 is out of range"),
    ("pets", ["max_episode_steps=0"], r"max_episode_steps=0 is out of range"),
    ("pets", ["eval_episodes=0"], r"eval_episodes=0 is out of range"),
    ("pets", ["num_elites=6"], r"num_elites=6 must be <= num_members=5"),
    ("pets", ["num_elites=0"], r"num_elites=0 is out of range"),
    ("pets", ["elites=300"], r"elites=300 must be <= candidates=200"),
    ("pets", ["planner=icem", "candidates=8", "elites=9"], r"elites=9 must be <= candidates=8"),
    ("pets", ["particles=7"], r"particles=7 must be a multiple of num_elites=5"),
    ("pets", ["holdout=1"], r"holdout=1.0 must be in \[0, 1\)"),
    ("pets", ["holdout=-0.1"], r"holdout=-0.1 is out of range"),
    ("pets", ["lr=inf"], r"lr=inf: it must be a finite number"),
    ("pets", ["weight_decay=-1e-4"], r"weight_decay=-0.0001 is out of range"),
    ("pets", ["mppi_temperature=0"], r"mppi_temperature=0.0 is out of range: it must be > 0"),
    ("pets", ["horizon=0"], r"horizon=0 is out of range"),
    # pilco
    ("pilco", ["trials=0"], r"trials=0 is out of range"),
    ("pilco", ["trials=-3"], r"trials=-3 is out of range"),
    ("pilco", ["random_trials=0"], r"random_trials=0 is out of range"),
    ("pilco", ["trial_steps=-1"], r"trial_steps=-1 is out of range: it must be >= 0"),
    ("pilco", ["horizon=-1"], r"horizon=-1 is out of range"),
    ("pilco", ["n_basis=-1"], r"n_basis=-1 is out of range"),
    ("pilco", ["eval_episodes=0"], r"eval_episodes=0 is out of range"),
    ("pilco", ["policy_lengthscale=-1"], r"policy_lengthscale=-1.0 is out of range"),
    ("pilco", ["lr=inf"], r"lr=inf: it must be a finite number"),
    ("pilco", ["lr=0"], r"lr=0.0 is out of range"),
    ("pilco", ["max_gp_points=0"], r"max_gp_points=0 is out of range"),
    ("pilco", ["policy_iters=0"], r"policy_iters=0 is out of range"),
    # dreamer
    ("dreamer", ["env_steps=0"], r"env_steps=0 is out of range"),
    ("dreamer", ["max_episode_steps=0"], r"max_episode_steps=0 is out of range"),
    ("dreamer", ["action_repeat=0"], r"action_repeat=0 is out of range"),
    ("dreamer", ["max_episode_steps=1"], r"max_episode_steps=1 must be >= action_repeat=2"),
    ("dreamer", ["batch_length=60", "buffer_size=50"],
     r"batch_length=60 must be <= buffer_size=50"),
    ("dreamer", ["seed_episodes=0"], r"seed_episodes=0 is out of range"),
    ("dreamer", ["eval_episodes=0"], r"eval_episodes=0 is out of range"),
    ("dreamer", ["gamma=0"], r"gamma=0.0 is out of range: it must be > 0 and <= 1"),
    ("dreamer", ["gamma=1.5"], r"gamma=1.5 is out of range"),
    ("dreamer", ["lmbda=-0.1"], r"lmbda=-0.1 is out of range"),
    ("dreamer", ["model_lr=inf"], r"model_lr=inf: it must be a finite number"),
    ("dreamer", ["actor_lr=nan"], r"actor_lr=nan: it must be a finite number"),
    ("dreamer", ["train_ratio=0"], r"train_ratio=0.0 is out of range"),
    ("dreamer", ["free_nats=-1"], r"free_nats=-1.0 is out of range"),
    # dreamer_v3
    ("dreamer_v3", ["env_steps=0"], r"env_steps=0 is out of range"),
    ("dreamer_v3", ["batch_length=1"], r"batch_length=1 is out of range: it must be >= 2"),
    ("dreamer_v3", ["classes=1"], r"classes=1 is out of range: it must be >= 2"),
    ("dreamer_v3", ["max_episode_steps=-1"], r"max_episode_steps=-1 is out of range"),
    ("dreamer_v3", ["max_episode_steps=1", "action_repeat=2"],
     r"max_episode_steps=1 must be 0 \(the task's limit\) or >= action_repeat=2"),
    ("dreamer_v3", ["eval_episodes=0"], r"eval_episodes=0 is out of range"),
    ("dreamer_v3", ["gamma=0"], r"gamma=0.0 is out of range"),
    ("dreamer_v3", ["lmbda=2"], r"lmbda=2.0 is out of range"),
    ("dreamer_v3", ["lr=inf"], r"lr=inf: it must be a finite number"),
    ("dreamer_v3", ["train_ratio=0"], r"train_ratio=0.0 is out of range"),
    ("dreamer_v3", ["eps=0"], r"eps=0.0 is out of range"),
    ("dreamer_v3", ["agc=0"], r"agc=0.0 is out of range"),
    ("dreamer_v3", ["slow_critic_rate=1.5"], r"slow_critic_rate=1.5 is out of range"),
    ("dreamer_v3", ["unimix=1"], r"unimix=1.0 must be in \[0, 1\)"),
    ("dreamer_v3", ["deter=30", "blocks=8"], r"deter=30 must be a multiple of blocks=8"),
    ("dreamer_v3", ["imagine_last=1"], r"imagine_last=1"),
    ("dreamer_v3", ["imagine_last=65"], r"imagine_last=65.*batch_length=64"),
    ("dreamer_v3", ["buffer_size=10"], r"batch_length=64 must be <= buffer_size=10"),
]


@pytest.mark.parametrize(("algo", "overrides", "match"), BAD,
                         ids=[f"{a}:{','.join(o)}" for a, o, _ in BAD])
def test_bad_values_are_refused_with_the_field_named(algo, overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(load_algorithm(algo).Config, [], overrides)


def test_every_recipe_has_at_least_four_bad_values():
    counts = {algo: sum(a == algo for a, _, _ in BAD) for algo in RECIPES}
    assert min(counts.values()) >= 4, counts


GOOD = [  # edges that stay allowed: 0 with a documented meaning, relations that do not apply
    ("pets", ["planner=mppi", "elites=300"]),  # MPPI has no elites
    ("pets", ["propagation=mean", "particles=7"]),  # only fixed propagation pairs particles
    ("pets", ["num_elites=2", "particles=4", "holdout=0"]),
    ("pets", ["episodes=2"]),
    ("pilco", ["trial_steps=0", "horizon=0", "n_basis=0", "policy_lengthscale=0"]),
    ("worldmodel", ["iterations=1", "random_episodes=1", "checkpoint_every=0"]),
    ("dreamer", ["eval_every=0", "exploration_noise=0", "gamma=1", "lmbda=0"]),
    ("dreamer_v3", ["max_episode_steps=0", "random_steps=0", "warmup=0", "eval_every=0"]),
    ("dreamer_v3", ["imagine_last=64", "unimix=0"]),
]


@pytest.mark.parametrize(("algo", "overrides"), GOOD, ids=[f"{a}:{','.join(o)}" for a, o in GOOD])
def test_edge_values_stay_allowed(algo, overrides):
    resolve_config(load_algorithm(algo).Config, [], overrides)


CLI_BAD = [
    ("worldmodel", "iterations=0"),
    ("pets", "episodes=0"),
    ("pets", "eval_episodes=0"),
    ("pilco", "trials=0"),
    ("dreamer", "max_episode_steps=0"),
    ("dreamer_v3", "lr=inf"),
]


@pytest.mark.parametrize(("algo", "override"), CLI_BAD)
def test_cli_refuses_a_bad_value_before_creating_a_run_folder(algo, override, tmp_path,
                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", algo, "--preset", "debug", override, "progress=false"]) == 2
    assert not (tmp_path / "runs").exists()
    assert override.split("=")[0] in capsys.readouterr().err


def test_help_shows_recipe_ranges():
    text = " ".join(format_help(load_algorithm("pets").Config).split())
    assert "(range: >= 0 and <= 1)" in text  # holdout
    assert "(range: > 0)" in text  # lr
