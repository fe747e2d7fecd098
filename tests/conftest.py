"""Shared test setup: deterministic, single-threaded torch so tests are reproducible and share 2 cores fairly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

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


class DemoProtein(NamedTuple):
    """A real (very short) OpenMM demo protein in ATLAS shape: `raw_dir/{name}.pdb` + `{name}_prod_R{1,2,3}_fit.xtc`."""

    raw_dir: Path
    name: str

    @property
    def pdb(self) -> Path:
        return self.raw_dir / f"{self.name}.pdb"

    @property
    def xtcs(self) -> list[Path]:
        return [self.raw_dir / f"{self.name}_prod_R{k}_fit.xtc" for k in (1, 2, 3)]


# 6 residues, 3 replicas x 300 steps of 4 fs (1.2 ps, a frame every 0.2 ps): ~4 s, once per test session.
DEMO_TEST_CONFIG = {
    "proteins": [{"name": "tpep_A", "sequence": "GAWKEA", "split": "train"}],
    "minimize_max_iterations": 100, "equilibration_ps": 0.2, "production_ps": 1.2, "frame_interval_ps": 0.2,
    "replica_seeds": [11, 12, 13],
}


@pytest.fixture(scope="session")
def demo_protein(tmp_path_factory) -> DemoProtein:
    """Shared by data/features/training/rollout/evaluation tests: run prepare-demo once, reuse the raw directory."""
    from starmd.data.demo import DemoConfig, prepare_demo

    name = DEMO_TEST_CONFIG["proteins"][0]["name"]
    raw_dir = tmp_path_factory.mktemp("demo_raw") / name
    prepare_demo(name, raw_dir, DemoConfig(**DEMO_TEST_CONFIG))
    return DemoProtein(raw_dir, name)
