"""Shared test setup: one torch thread (small ops on 2 cores are 30-50x slower with more)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
