"""Constructed evaluation inputs with known structure, shared by tests/test_metrics.py and tests/test_figures.py.

A real all-atom helix from PeptideBuilder is moved by two smooth collective modes driven by AR(1) processes (so
replicas have a real PCA/TICA structure and time correlation); files are written in the formats of
docs/architecture.md: raw pdb + `_prod_R{k}_fit.xtc`, frames HDF5, rollout HDF5 + backbone pdb/xtc.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import PeptideBuilder
import torch
from Bio.PDB import PDBIO

from starmd.data.residues import sequence_to_aatype
from starmd.evaluation.metrics import ca_valid
from starmd.geometry import Rigid
from starmd.rollout.writers import RolloutRecord, write_rollout_h5

SEQUENCE = "AEAAAKEAAAKEAAAKAAGAEAAK"  # 24 residues
RAW_DT_PS = 5.0
STRIDE = 2  # stored frames = every 2nd raw frame -> dt_ps 10


def ideal_helix_ca(n: int) -> np.ndarray:
    """[n, 3] ideal alpha-helix CA trace: radius 2.3 A, rise 1.5 A, 100 deg per residue (CA-CA 3.83 A)."""
    k = np.arange(n)
    ang = np.deg2rad(100.0) * k
    return np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * k], axis=1)


def helix_topology_traj() -> md.Trajectory:
    """All-atom alpha helix of SEQUENCE (PeptideBuilder, phi -57, psi -47) as an mdtraj Trajectory."""
    n = len(SEQUENCE)
    structure = PeptideBuilder.make_structure(SEQUENCE, [-57.0] * (n - 1), [-47.0] * (n - 1))
    pdbio = PDBIO()
    pdbio.set_structure(structure)
    buf = io.StringIO()
    pdbio.save(buf)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "helix.pdb"
        path.write_text(buf.getvalue())
        return md.load(str(path))


def md_like(start: md.Trajectory, n_frames: int, seed: int, amplitude_A: float = 0.5, phi: float = 0.97,
            jitter_A: float = 0.03) -> np.ndarray:
    """[n_frames, n_atoms, 3] Angstrom: every atom of residue i moves with a smooth 2-mode displacement of residue i
    driven by AR(1) amplitudes (correlation phi per frame), plus small per-atom jitter."""
    rng = np.random.default_rng(seed)
    n_res = start.n_residues
    s = np.zeros((n_frames, 2))
    for t in range(1, n_frames):
        s[t] = phi * s[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=2)
    u = np.arange(n_res) / (n_res - 1)
    modes = np.zeros((2, n_res, 3))
    modes[0, :, 2] = np.cos(np.pi * u)  # stretch along the helix axis (changes CA distances to first order)
    modes[1, :, 0] = np.sin(np.pi * u)  # bend in x ...
    modes[1, :, 2] = 0.5 * np.sin(2 * np.pi * u)  # ... with a shear along the axis
    disp = amplitude_A * np.einsum("tm,mrx->trx", s, modes)  # [T, R, 3]
    res_of_atom = np.array([a.residue.index for a in start.topology.atoms])
    xyz0 = start.xyz[0].astype(np.float64) * 10.0
    return xyz0[None] + disp[:, res_of_atom] + jitter_A * rng.normal(size=(n_frames,) + xyz0.shape)


def _backbone_index(top: md.Topology) -> np.ndarray:
    """[N, 4] atom indices of N, CA, C, O per residue."""
    return np.array([[next(a.index for a in r.atoms if a.name == nm) for nm in ("N", "CA", "C", "O")]
                     for r in top.residues])


def write_reference(root: Path, name: str = "helix", n_stored: int = 200, replicas=(1, 2, 3)) -> tuple[Path, Path]:
    """Raw dir (pdb + 3 replica xtc) and frames HDF5 for `name`; returns (raw_dir, frames_path)."""
    start = helix_topology_traj()
    raw_dir = root / "raw" / name
    raw_dir.mkdir(parents=True)
    start.save_pdb(str(raw_dir / f"{name}.pdb"))
    bb = _backbone_index(start.topology)
    frames = root / "frames" / f"{name}.h5"
    frames.parent.mkdir(parents=True)
    with h5py.File(frames, "w") as h5:
        h5.attrs.update(name=name, sequence=SEQUENCE, n_residues=len(SEQUENCE), stride=STRIDE,
                        dt_ps=RAW_DT_PS * STRIDE, format_version=1)
        h5["residue_index"] = np.arange(1, len(SEQUENCE) + 1, dtype=np.int32)
        h5["aatype"] = sequence_to_aatype(SEQUENCE)
        _write_frames(h5, "start", start.xyz[:1].astype(np.float64) * 10.0, bb, single=True)
        for k in replicas:
            xyz = md_like(start, n_stored * STRIDE, seed=100 + k)
            traj = md.Trajectory(xyz / 10.0, start.topology, time=np.arange(len(xyz)) * RAW_DT_PS)
            traj.save_xtc(str(raw_dir / f"{name}_prod_R{k}_fit.xtc"))
            stored = md.load(str(raw_dir / f"{name}_prod_R{k}_fit.xtc"), top=start.topology, stride=STRIDE)
            grp = h5.create_group(f"replicas/R{k}")
            _write_frames(grp, None, stored.xyz.astype(np.float64) * 10.0, bb)
            grp["time_ps"] = np.arange(n_stored) * RAW_DT_PS * STRIDE
    return raw_dir, frames


def _write_frames(h5, group: str | None, xyz_A: np.ndarray, bb: np.ndarray, single: bool = False) -> None:
    """rotations/translations of frames [T, N] from all-atom coordinates [T, A, 3] (Rigid.from_3_points)."""
    pos = torch.as_tensor(xyz_A[:, bb])  # [T, N, 4, 3]
    rigid = Rigid.from_3_points(pos[:, :, 0], pos[:, :, 1], pos[:, :, 2])
    g = h5.create_group(group) if group else h5
    rots, trans = rigid.rots.numpy().astype(np.float32), rigid.trans.numpy().astype(np.float32)
    g["rotations"] = rots[0] if single else rots
    g["translations"] = trans[0] if single else trans


def write_rollout(root: Path, name: str = "helix", n_samples: int = 2, n_frames: int = 100,
                  delta_t_ps: float = 20.0, seed: int = 7, amplitude_A: float = 0.5) -> Path:
    """Rollout HDF5 + backbone pdb + per-sample xtc. The "model" is a fresh realisation of the same process at
    delta_t_ps spacing (its AR correlation per frame matches the reference's at that spacing)."""
    start = helix_topology_traj()
    bb_top = start.atom_slice(_backbone_index(start.topology).ravel())
    out = root / "rollouts"
    out.mkdir(parents=True, exist_ok=True)
    bb_top.save_pdb(str(out / f"{name}.pdb"))
    phi = 0.97 ** (delta_t_ps / RAW_DT_PS)
    rots, trans = [], []
    for k in range(n_samples):
        xyz = md_like(bb_top, n_frames, seed=seed + k, amplitude_A=amplitude_A, phi=phi)  # [F, 4N, 3]
        md.Trajectory(xyz / 10.0, bb_top.topology).save_xtc(str(out / f"{name}_s{k}.xtc"))
        pos = torch.as_tensor(md.load(str(out / f"{name}_s{k}.xtc"), top=bb_top.topology).xyz.astype(np.float64)
                              * 10.0).reshape(n_frames, -1, 4, 3)
        rigid = Rigid.from_3_points(pos[:, :, 0], pos[:, :, 1], pos[:, :, 2])
        rots.append(rigid.rots.numpy())
        trans.append(rigid.trans.numpy())
    start_pos = torch.as_tensor(bb_top.xyz[0].astype(np.float64) * 10.0).reshape(-1, 4, 3)
    start_rigid = Rigid.from_3_points(start_pos[:, 0], start_pos[:, 1], start_pos[:, 2])
    translations = np.stack(trans)
    path = out / f"{name}.h5"
    write_rollout_h5(path, RolloutRecord(
        rotations=np.stack(rots), translations=translations,
        time_ps=np.arange(1, n_frames + 1) * delta_t_ps,  # time after the start frame, as rollout writes
        validity=np.stack([ca_valid(t) for t in translations]),
        start_rotations=start_rigid.rots.numpy(), start_translations=start_rigid.trans.numpy(),
        aatype=sequence_to_aatype(SEQUENCE), residue_index=np.arange(1, len(SEQUENCE) + 1),
        attrs={"sequence": SEQUENCE, "delta_t_ps": delta_t_ps}))
    return path
