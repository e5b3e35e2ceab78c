"""Smoke test of benchmarks/bench_dreamer_v3.py: tiny sizes, correctness only (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dreamer_v3.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dreamer_v3", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_dreamer_v3", module)
    spec.loader.exec_module(module)
    return module


def test_reverie_rows_at_tiny_sizes(bench, tmp_path):
    rows, params = bench.run_benchmark(
        "debug", batch_size=2, batch_length=8, rounds=2, warmup=1,
        impls=("reverie", "reverie-bf16", "torchrl", "sheeprl"),
        sheeprl_python=tmp_path / "no-such-venv" / "python")
    by_impl = {row["impl"]: row for row in rows}
    for name in ("reverie", "reverie-bf16"):
        row = by_impl[name]
        assert row["status"] == "ok", row
        assert len(row["all_seconds"]) == 2 and row["seconds"] > 0
        assert row["bf16"] == (name == "reverie-bf16")
    assert by_impl["torchrl"]["status"] == "ok", by_impl["torchrl"]  # the published wiring runs
    # Reverie and TorchRL differ only by the biases TorchRL keeps before its norms
    assert 0 < params["torchrl"]["world_model"] - params["reverie"]["world_model"] < 1000
    # SheepRL's venv is missing: the row is skipped with the install command, never a failure
    assert by_impl["sheeprl"]["status"] == "skipped"
    assert "pip install sheeprl==0.8.4" in by_impl["sheeprl"]["error"]
    p = params["reverie"]
    assert p["world_model"] == sum(p["parts"].values())
    assert p["critic"] == p["slow_critic"] > 0 and p["actor"] > 0
    table = bench.format_table(rows, params)
    assert "Reverie (float32)" in table and "skipped" in table
    assert "trainable total" in bench.format_params(params)


def test_main_quick_writes_the_table(bench, tmp_path):
    out = tmp_path / "dreamer_v3_update.json"
    assert bench.main(["--quick", "--impls", "reverie", "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "DreamerV3 learner update" in text and "Reverie (float32)" in text
