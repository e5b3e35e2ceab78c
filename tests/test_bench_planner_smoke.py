"""Smoke test of benchmarks/bench_planner.py: tiny sizes, correctness only (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_planner.py"
TINY = {"candidates": 8, "elites": 2, "iterations": 2}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_planner", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_planner", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(bench):
    return bench.build(3, **TINY)


def test_objective_equals_plain_loop(bench, setup):
    check = bench.check_objectives(setup)
    assert check["ok"], check
    assert check["candidates"] == 8
    assert setup.dynamics.sample  # the check switches sampling off only for itself


def test_objective_check_catches_a_difference(bench, setup):
    plain = setup.plain
    saved = plain.out_mean
    plain.out_mean = saved + 0.1  # the plain loop's own reference; the model is untouched
    try:
        assert not bench.check_objectives(setup)["ok"]
    finally:
        plain.out_mean = saved
    assert bench.check_objectives(setup)["ok"]


def test_both_decisions_are_valid_actions(setup):
    with torch.no_grad():
        plain_action = setup.plain.plan(setup.td["observation"])
        td = setup.policy(setup.td)
    for action in (plain_action, td["action"]):
        assert action.shape == (1,)
        assert torch.isfinite(action).all()
        assert (action.abs() <= 2.0).all()  # Pendulum's torque bounds
    assert setup.plain.solution.shape == setup.policy.planner.solution.shape == (3, 1)


def test_run_benchmark_tiny(bench):
    rows = bench.run_benchmark(
        (3,), rounds=1, min_time=0.0, warmup_time=0.0, warmup_calls=1, **TINY
    )
    by_impl = {row["impl"]: row for row in rows}
    assert set(by_impl) == {"plain", "reverie"}
    for row in rows:
        assert row["objective_check"]["ok"]
        assert row["decisions_per_s"] > 0
        assert row["horizon"] == 3
    assert by_impl["reverie"]["status"] in ("PASS", "FAIL")  # a timing, never asserted
    settings = bench.settings_for(rows, (3,), rounds=1, min_time=0.0, seed=0)
    meta = {
        "command": "python benchmarks/bench_planner.py", "machine": bench.machine_info(1),
        "load_before": "-", "load_after": "-", "elapsed_s": 0.0, "settings": settings,
    }
    assert "reverie" in bench.format_table(rows)
    markdown = bench.format_markdown(rows, meta)
    assert "| reverie | 3 |" in markdown and "8 candidates" in markdown
