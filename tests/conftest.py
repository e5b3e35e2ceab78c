"""Shared test setup: one torch thread (small ops on 2 cores are 30-50x slower with more),
and the ``toy`` fixture registering the test suite's toy recipe."""

import importlib
from pathlib import Path

import pytest
import torch

from reverie.algorithms import ALGORITHMS, register_algorithm

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def toy(monkeypatch):
    """Register ``tests/toy_recipe.py`` as algorithm ``toy`` for the duration of a test."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    module = importlib.import_module("toy_recipe")
    register_algorithm("toy", module.__name__, "toy regression recipe for the tests")
    yield module
    ALGORITHMS.pop("toy", None)
