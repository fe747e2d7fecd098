"""On-disk image of a rollout: rigids in HDF5 (what evaluation reads) plus backbone PDB/XTC (what people open).

Layout (`runs/{run}/rollouts/{name}.h5`, documented in docs/architecture.md):
- `rotations` [S, F, N, 3, 3] float32, `translations` [S, F, N, 3] float32 (Angstrom), `time_ps` [F] float64
  (time after the start structure: delta_t, 2 delta_t, ...), `validity` [S, F] bool (CA validity per frame);
- `start/rotations` [N, 3, 3], `start/translations` [N, 3]: the frame the rollout started from (time 0);
- `aatype` [N] int8, `residue_index` [N] int32; root attrs: sequence, delta_t_ps, seed, steps, tau, ... (JSON-able).
Beside it: `{name}.pdb` (backbone topology, start structure) and `{name}_s{k}.xtc` per sample (mdtraj: nm, ps).
Every file is written to a temp name and renamed, so an interrupted rollout never leaves a plausible-looking output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import mdtraj as md
import numpy as np
import torch

from starmd.errors import InputError, open_h5
from starmd.geometry import Rigid
from starmd.io import atomic_path
from starmd.geometry.backbone import backbone_atoms
from starmd.rollout.backbone import backbone_topology

FORMAT_VERSION = 1
_NM_PER_A = 0.1
# what to do about a rollout file a reader cannot use
ROLLOUT_FIX = "delete it; snakemake reruns the rollout"


@dataclass(frozen=True)
class RolloutRecord:
    """Everything a rollout writes; arrays are numpy, Angstrom and ps."""

    rotations: np.ndarray  # [S, F, N, 3, 3]
    translations: np.ndarray  # [S, F, N, 3]
    time_ps: np.ndarray  # [F]
    validity: np.ndarray  # [S, F] bool
    start_rotations: np.ndarray  # [N, 3, 3]
    start_translations: np.ndarray  # [N, 3]
    aatype: np.ndarray  # [N]
    residue_index: np.ndarray  # [N]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s, f, n = self.translations.shape[:3]
        expected = {"rotations": (s, f, n, 3, 3), "time_ps": (f,), "validity": (s, f), "start_rotations": (n, 3, 3),
                    "start_translations": (n, 3), "aatype": (n,), "residue_index": (n,)}
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise ValueError(f"RolloutRecord.{key} has shape {getattr(self, key).shape}, expected {shape} "
                                 f"(S={s} samples, F={f} frames, N={n} residues)")


def sample_xtc_path(h5_path: str | Path, k: int) -> Path:
    h5_path = Path(h5_path)
    return h5_path.with_name(f"{h5_path.stem}_s{k}.xtc")


def backbone_xyz_nm(rotations: np.ndarray, translations: np.ndarray, aatype: np.ndarray) -> np.ndarray:
    """Rigids [..., N, 3, 3] / [..., N, 3] (Angstrom) -> backbone atoms [..., 4N, 3] in nm, topology atom order."""
    frames = Rigid(torch.from_numpy(np.asarray(rotations, np.float64)), torch.from_numpy(np.asarray(translations,
                                                                                                   np.float64)))
    atoms = backbone_atoms(frames, torch.from_numpy(np.asarray(aatype, np.int64)))  # [..., N, 4, 3]
    return (atoms.flatten(-3, -2).numpy() * _NM_PER_A).astype(np.float32)


def write_rollout_h5(path: str | Path, rec: RolloutRecord) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("rotations", data=rec.rotations.astype(np.float32))
        h5.create_dataset("translations", data=rec.translations.astype(np.float32))
        h5.create_dataset("time_ps", data=rec.time_ps.astype(np.float64))
        h5.create_dataset("validity", data=rec.validity.astype(bool))
        h5.create_dataset("start/rotations", data=rec.start_rotations.astype(np.float32))
        h5.create_dataset("start/translations", data=rec.start_translations.astype(np.float32))
        h5.create_dataset("aatype", data=rec.aatype.astype(np.int8))
        h5.create_dataset("residue_index", data=rec.residue_index.astype(np.int32))
        h5.attrs["format_version"] = FORMAT_VERSION
        for key, value in rec.attrs.items():
            h5.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


ROLLOUT_DATASETS = ("rotations", "translations", "time_ps", "validity", "start/rotations", "start/translations",
                    "aatype", "residue_index")


def read_rollout_h5(path: str | Path) -> RolloutRecord:
    """Inverse of `write_rollout_h5` (non-scalar attrs come back as their JSON strings); the one reader of the format."""
    with open_h5(path, "rollout HDF5", ROLLOUT_FIX) as h5:
        missing = [key for key in ROLLOUT_DATASETS if key not in h5]
        if missing:
            raise InputError(path, f"missing dataset(s) {missing} (rollout format, docs/architecture.md)",
                             ROLLOUT_FIX)
        return RolloutRecord(
            rotations=h5["rotations"][()], translations=h5["translations"][()], time_ps=h5["time_ps"][()],
            validity=h5["validity"][()], start_rotations=h5["start/rotations"][()],
            start_translations=h5["start/translations"][()], aatype=h5["aatype"][()],
            residue_index=h5["residue_index"][()],
            attrs={k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()})


def write_outputs(h5_path: str | Path, rec: RolloutRecord) -> list[Path]:
    """HDF5 + start-structure PDB + one XTC per sample; returns the paths written."""
    h5_path = Path(h5_path)
    top = backbone_topology(rec.aatype, rec.residue_index)
    write_rollout_h5(h5_path, rec)
    written = [h5_path, write_start_pdb(h5_path, rec.start_rotations, rec.start_translations, rec.aatype,
                                        rec.residue_index)]
    xyz = backbone_xyz_nm(rec.rotations, rec.translations, rec.aatype)  # [S, F, 4N, 3] nm
    for k in range(xyz.shape[0]):
        path = sample_xtc_path(h5_path, k)
        with atomic_path(path) as tmp:
            md.Trajectory(xyz[k], top, time=rec.time_ps).save_xtc(str(tmp))
        written.append(path)
    return written


def write_start_pdb(h5_path: str | Path, rotations: np.ndarray, translations: np.ndarray, aatype: np.ndarray,
                    residue_index: np.ndarray) -> Path:
    """`{name}.pdb` beside the HDF5: the backbone topology with the start structure (rigids [N], Angstrom)."""
    pdb_path = Path(h5_path).with_suffix(".pdb")
    start = md.Trajectory(backbone_xyz_nm(rotations, translations, aatype)[None],
                          backbone_topology(aatype, residue_index))
    with atomic_path(pdb_path) as tmp:
        start.save_pdb(str(tmp))
    return pdb_path
