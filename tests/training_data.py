"""Small real inputs for the training tests: a PeptideBuilder peptide, jittered into short xtc replicas, run through
the real `extract-frames` writer (starmd.data.frames), plus a features file in the documented schema."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def make_protein(root: Path, name: str, sequence: str, n_frames: int, n_replicas: int = 2, seed: int = 0,
                 c_s: int = 8, c_z: int = 4, dt_ps: float = 10.0) -> tuple[Path, Path]:
    """Write root/{name}.pdb, xtcs, root/frames/{name}.h5 and root/features/{name}.h5; return (frames, features)."""
    import mdtraj as md
    from Bio.PDB import PDBIO
    from PeptideBuilder import PeptideBuilder

    from starmd.data.frames import FramesConfig, extract_frames

    rng = np.random.default_rng(seed)
    raw = root / "raw" / name
    raw.mkdir(parents=True, exist_ok=True)
    structure = PeptideBuilder.make_structure(sequence, [-60.0] * (len(sequence) - 1), [-45.0] * (len(sequence) - 1))
    io = PDBIO()
    io.set_structure(structure)
    pdb = raw / f"{name}.pdb"
    io.save(str(pdb))
    start = md.load(str(pdb))
    xtcs = []
    for k in range(1, n_replicas + 1):
        # an Ornstein-Uhlenbeck jitter of every atom (stationary std 0.01 nm): correlated in time, bonds intact
        walk = np.zeros((n_frames, start.n_atoms, 3))
        walk[0] = rng.normal(0, 0.01, walk.shape[1:])
        for i in range(1, n_frames):
            walk[i] = 0.9 * walk[i - 1] + np.sqrt(1 - 0.81) * rng.normal(0, 0.01, walk.shape[1:])
        traj = md.Trajectory(start.xyz + walk.astype(np.float32), start.topology,
                             time=np.arange(n_frames) * dt_ps)
        xtc = raw / f"{name}_prod_R{k}_fit.xtc"
        traj.save_xtc(str(xtc))
        xtcs.append(xtc)
    frames = extract_frames(pdb, xtcs, root / "frames" / f"{name}.h5", FramesConfig(stride=1), name=name)
    features = root / "features" / f"{name}.h5"
    features.parent.mkdir(parents=True, exist_ok=True)
    n = len(sequence)
    with h5py.File(features, "w") as f:
        f.create_dataset("single", data=rng.normal(size=(n, c_s)).astype(np.float32))
        f.create_dataset("pair", data=rng.normal(size=(n, n, c_z)).astype(np.float32))
        f.attrs.update({"featurizer": "test-random", "sequence": sequence, "c_s": c_s, "c_z": c_z})
    return frames, features


# ~14k parameters: fast on one CPU thread, but every block type of the real network is exercised.
TINY_MODEL = {"c_s": 16, "c_z": 8, "n_blocks": 2, "n_heads": 2, "c_hidden": 8, "no_heads_ipa": 2, "c_hidden_ipa": 8,
              "no_qk_points": 2, "no_v_points": 2, "c_time": 8, "c_phys_time": 8, "n_rbf": 8}


def tiny_demo_dataset() -> dict:
    """Config keys of the smallest demo dataset a real snakemake run carries through every rule: two 5-residue
    proteins (one train, one test), 2 ps of MD each at 0.5 ps frames, offline features (tests/test_workflow.py,
    tests/test_slurm_profile.py). A new dict on every call, so a test cannot change another's."""
    return {
        "dataset": "demo",
        "demo": {
            "proteins": [
                {"name": "tinya_A", "sequence": "GAWKA", "split": "train"},
                {"name": "tinyb_A", "sequence": "AEWKG", "split": "test"},
            ],
            "equilibration_ps": 0.0,
            "production_ps": 2.0,
            "frame_interval_ps": 0.5,
            "minimize_max_iterations": 50,
        },
        "frames": {"stride": 1},
        "features": {"featurizer": "offline"},
    }


def make_two_proteins(root: Path) -> tuple[list[Path], list[Path]]:
    """Two peptides of different lengths (10 and 13 residues; padding and cropping both happen), 12 frames x 2."""
    a = make_protein(root, "pa_A", "ACDEFGHIKL", n_frames=12, seed=1)
    b = make_protein(root, "pb_B", "MNPQRSTVWYACD", n_frames=12, seed=2)
    return [a[0], b[0]], [a[1], b[1]]
