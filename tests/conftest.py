"""Shared test setup: deterministic, single-threaded torch so tests are reproducible and share 2 cores fairly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import openmm.app
import pytest

if TYPE_CHECKING:  # torch and numpy stay out of conftest's import, as in the fixtures below
    import numpy as np
    import torch

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


VILLIN = Path(openmm.app.__file__).parent / "data" / "test.pdb"  # the villin headpiece shipped with OpenMM


class VillinBackbone(NamedTuple):
    """The villin headpiece's protein residues: sequence, PDB resSeq [N], aatype [N] (long), backbone atoms
    [N, 4, 3] (Angstrom, float64, N, CA, C, O order)."""

    sequence: str
    residue_index: np.ndarray
    aatype: torch.Tensor
    atoms: torch.Tensor


@pytest.fixture(scope="module")
def villin_backbone() -> VillinBackbone:
    """The one loader of the villin test structure, which `villin` and the backbone and rollout tests build on."""
    import mdtraj as md
    import torch

    from starmd.data.residues import protein_residues, sequence_to_aatype

    traj = md.load(VILLIN)
    traj = traj.atom_slice(traj.top.select("protein"))
    seq, resseq, bb = protein_residues(traj.top, str(VILLIN))
    o_idx = [next(a.index for a in res.atoms if a.name == "O") for res in traj.top.residues]
    xyz = torch.tensor(traj.xyz[0] * 10, dtype=torch.float64)
    atoms = torch.stack([xyz[bb[:, 0]], xyz[bb[:, 1]], xyz[bb[:, 2]], xyz[o_idx]], dim=-2)
    return VillinBackbone(seq, resseq, torch.tensor(sequence_to_aatype(seq), dtype=torch.long), atoms)


@pytest.fixture(scope="module")
def villin(villin_backbone):
    """(frames Rigid [N], aatype [N]) of the villin headpiece: a real chain, frames from its N, CA, C atoms."""
    from starmd.geometry import Rigid

    atoms = villin_backbone.atoms
    return Rigid.from_3_points(atoms[:, 0], atoms[:, 1], atoms[:, 2]), villin_backbone.aatype


@pytest.fixture(scope="module")
def villin_rollout(villin):
    """(frames [8], aatype [8], run): run(residue_types=True, **rollout keys) rolls out one frame x 3 samples of the
    first 8 villin residues from a tiny random-weight model (fixed seed), so a rollout flag can be compared with the
    plain rollout's same draws."""
    import torch

    from starmd.diffusion import SE3Diffuser
    from starmd.model.network import StarMD
    from starmd.rollout.config import RolloutConfig
    from starmd.rollout.sampler import run_rollout

    frames, aatype = villin[0][:8], villin[1][:8]
    torch.manual_seed(0)
    model = StarMD(c_s_in=6, c_z_in=4, c_s=16, c_z=8, n_blocks=1, n_heads=2, c_hidden=4, no_heads_ipa=2,
                   c_hidden_ipa=4, no_qk_points=2, no_v_points=2, transition_n=1, c_time=8, c_phys_time=4,
                   n_rbf=4).to(torch.float64).eval()
    single, pair = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 8, 4, dtype=torch.float64)
    diffuser = SE3Diffuser(so3={"num_sigma": 64, "num_omega": 256})

    def run(residue_types: bool = True, **keys):
        cfg = RolloutConfig(n_frames=1, n_samples=3, steps=4, progress_bar=False, delta_t_ps=10.0, **keys)
        return run_rollout(model, diffuser, single, pair, frames, cfg, aatype=aatype if residue_types else None)

    return frames, aatype, run
