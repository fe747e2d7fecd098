"""Rollout outputs: HDF5 round trip, PDB + per-sample XTC that mdtraj opens with the right units."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from starmd.geometry import Rigid, random_rotation
from starmd.evaluation.metrics import ca_valid
from starmd.rollout.writers import RolloutRecord, read_rollout_h5, sample_xtc_path, write_outputs


def _helix_frames(n: int, dtype=torch.float64) -> Rigid:
    """Frames of an ideal alpha helix's N/CA/C (3.6 residues/turn, CA-CA 3.8 A): a chain-like test object."""
    i = torch.arange(n, dtype=dtype)
    ang = i * (2 * torch.pi / 3.6)

    def at(phase: float, radius: float, rise: float) -> torch.Tensor:
        return torch.stack([radius * torch.cos(ang + phase), radius * torch.sin(ang + phase), 1.5 * i + rise], -1)

    return Rigid.from_3_points(at(-0.28, 1.55, -0.5), at(0.0, 2.3, 0.0), at(0.28, 1.65, 0.5))


@pytest.fixture
def record() -> RolloutRecord:
    s, f, n = 2, 3, 7
    g = torch.Generator().manual_seed(1)
    start = _helix_frames(n)
    rots, trans = [], []
    for _ in range(s * f):  # rigidly moved copies of the helix: valid chains, different poses
        r = random_rotation((), generator=g, dtype=torch.float64)
        rots.append(r @ start.rots)
        trans.append(start.trans @ r.T + torch.randn(3, generator=g, dtype=torch.float64))
    rotations = torch.stack(rots).reshape(s, f, n, 3, 3).numpy()
    translations = torch.stack(trans).reshape(s, f, n, 3).numpy()
    return RolloutRecord(
        rotations=rotations, translations=translations, time_ps=100.0 * np.arange(1, f + 1),
        validity=ca_valid(translations.reshape(s * f, n, 3)).reshape(s, f), start_rotations=start.rots.numpy(),
        start_translations=start.trans.numpy(), aatype=np.array([0, 7, 14, 19, 4, 5, 6]),
        residue_index=np.arange(1, n + 1), attrs={"sequence": "AGPVCQE", "delta_t_ps": 100.0, "seed": 3,
                                                   "cache": {"peak_bytes": 10}})


def test_outputs_load_with_mdtraj_in_nm(tmp_path, record):
    h5 = tmp_path / "rollouts" / "prot.h5"
    written = write_outputs(h5, record)
    assert [p.name for p in written] == ["prot.h5", "prot.pdb", "prot_s0.xtc", "prot_s1.xtc"]
    assert sorted(p.name for p in h5.parent.iterdir()) == sorted(p.name for p in written)  # no temp files left
    pdb = md.load(tmp_path / "rollouts" / "prot.pdb")
    assert (pdb.n_residues, pdb.n_atoms, pdb.n_frames) == (7, 28, 1)
    assert [r.name for r in pdb.top.residues] == ["ALA", "GLY", "PRO", "VAL", "CYS", "GLN", "GLU"]
    np.testing.assert_allclose(pdb.xyz[0, 1::4] * 10, record.start_translations, atol=2e-3)  # PDB: 3 decimals in A
    for k in range(2):
        traj = md.load(sample_xtc_path(h5, k), top=tmp_path / "rollouts" / "prot.pdb")
        assert (traj.n_frames, traj.n_atoms) == (3, 28)
        np.testing.assert_allclose(traj.time, record.time_ps)
        np.testing.assert_allclose(traj.xyz[:, 1::4] * 10, record.translations[k], atol=0.02)  # CA = frame origin
        ca_ca = np.linalg.norm(np.diff(traj.xyz[:, 1::4], axis=1), axis=-1)  # nm
        assert np.all((ca_ca > 0.3) & (ca_ca < 0.42))


def test_h5_round_trip(tmp_path, record):
    h5 = tmp_path / "prot.h5"
    write_outputs(h5, record)
    back = read_rollout_h5(h5)
    np.testing.assert_allclose(back.rotations, record.rotations, atol=1e-6)
    np.testing.assert_allclose(back.translations, record.translations, atol=1e-5)
    np.testing.assert_array_equal(back.validity, record.validity)
    assert back.attrs["sequence"] == "AGPVCQE" and back.attrs["seed"] == 3 and back.attrs["format_version"] == 1
    assert back.attrs["cache"] == '{"peak_bytes": 10}'


def test_record_shape_mismatch_names_the_field(record):
    with pytest.raises(ValueError, match="time_ps"):
        RolloutRecord(**{**record.__dict__, "time_ps": np.zeros(5)})

