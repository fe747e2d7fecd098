"""Shared test setup: deterministic, single-threaded torch so tests are reproducible and share 2 cores fairly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _torch_single_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def repo_root() -> Path:
    return REPO
