"""Read the evaluation inputs into plain arrays (Angstrom) and check they describe the same protein.

Formats (docs/architecture.md): rollout HDF5 `translations` [S, F, N, 3] + `time_ps` [F] + attrs `sequence`,
`delta_t_ps`, with backbone `{name}.pdb` + `{name}_s{k}.xtc` (N, CA, C, O) beside it; frames HDF5
`replicas/R{k}/translations` [T, N, 3] + `start/translations` [N, 3] + attrs `dt_ps`, `stride`, `sequence`; raw MD
`{raw_dir}/{name}.pdb` + `{name}_prod_R{k}_fit.xtc`, whose every `stride`-th frame is a stored frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mdtraj as md
import numpy as np

from starmd.data.frames import FRAMES_FIX, RAW_FIX, check_frames
from starmd.errors import InputError, open_h5, reading
from starmd.evaluation.metrics import BACKBONE_ATOM_NAMES, NM_PER_ANGSTROM, rmsd_to
from starmd.rollout.writers import ROLLOUT_FIX, read_rollout_h5

# a stored CA frame and the same raw-xtc frame may differ by the xtc precision (0.01 A) and re-fitting
_CA_MATCH_TOL_A = 0.05


@dataclass(frozen=True)
class Rollout:
    ca: np.ndarray  # [S, F, N, 3] Angstrom
    backbone: np.ndarray  # [S, F, N, 4, 3] Angstrom, atom order N, CA, C, O
    time_ps: np.ndarray  # [F], time after the start structure
    delta_t_ps: float
    sequence: str
    start_ca: np.ndarray  # [N, 3] the frame the rollout started from (`start/translations`)


@dataclass(frozen=True)
class Reference:
    start_ca: np.ndarray  # [N, 3]
    start_backbone: np.ndarray  # [N, 4, 3] from the raw PDB
    ca: dict[str, np.ndarray]  # replica -> [T, N, 3]
    backbone: dict[str, np.ndarray]  # replica -> [T, N, 4, 3]
    dt_ps: float
    sequence: str
    residue_index: np.ndarray  # [N]


def backbone_indices(topology: md.Topology, source: str) -> np.ndarray:
    """[N, 4] atom indices of N, CA, C, O of every protein residue; a residue missing one is an error naming it."""
    index = []
    for res in topology.residues:
        if not res.is_protein:
            continue
        names = {a.name: a.index for a in res.atoms}
        missing = [a for a in BACKBONE_ATOM_NAMES if a not in names]
        if missing:
            raise ValueError(f"{source}: residue {res.name} {res.resSeq} has no {'/'.join(missing)} "
                             f"(backbone validity needs N, CA, C, O)")
        index.append([names[a] for a in BACKBONE_ATOM_NAMES])
    if not index:
        raise ValueError(f"{source}: no protein residues")
    return np.array(index)


def load_backbone(xtc: Path, pdb: Path, fix: str, stride: int = 1) -> np.ndarray:
    """[F, N, 4, 3] Angstrom backbone of a trajectory, reading only the backbone atoms (ATLAS xtcs hold all atoms).
    A missing or unreadable file is an InputError naming it, with `fix`."""
    with reading(pdb, "PDB structure", fix):
        topology = md.load_topology(str(pdb))
    index = backbone_indices(topology, str(pdb))
    with reading(xtc, "trajectory (truncated?)", fix):
        traj = md.load(str(xtc), top=topology, stride=stride, atom_indices=index.ravel())
    return traj.xyz.reshape(traj.n_frames, len(index), 4, 3).astype(np.float64) / NM_PER_ANGSTROM


def load_rollout(path: str | Path) -> Rollout:
    """Rollout HDF5 plus its per-sample backbone xtc files `{stem}_s{k}.xtc` on topology `{stem}.pdb` beside it."""
    path = Path(path)
    rec = read_rollout_h5(path)
    for key in ("delta_t_ps", "sequence"):
        if key not in rec.attrs:
            raise InputError(path, f"missing root attribute {key!r}", ROLLOUT_FIX)
    ca = np.asarray(rec.translations, dtype=np.float64)
    if ca.ndim != 4 or ca.shape[-1] != 3:
        raise InputError(path, f"dataset 'translations' has shape {ca.shape}, expected [S, F, N, 3]", ROLLOUT_FIX)
    if not np.isfinite(ca).all():
        s, f = np.argwhere(~np.isfinite(ca))[0][:2]
        raise InputError(path, f"translations of sample {s} are non-finite (NaN/inf) from frame {f} on",
                         "the model diverged: check the checkpoint and rollout.steps, then rerun the rollout")
    time_ps = np.asarray(rec.time_ps, dtype=np.float64)
    delta_t, sequence = float(rec.attrs["delta_t_ps"]), str(rec.attrs["sequence"])
    start_ca = np.asarray(rec.start_translations, dtype=np.float64)
    if time_ps.shape != (ca.shape[1],):
        raise InputError(path, f"dataset 'time_ps' must have shape [{ca.shape[1]}] (one time per frame)", ROLLOUT_FIX)
    if len(sequence) != ca.shape[2]:
        raise InputError(path, f"attr sequence has {len(sequence)} residues but translations has {ca.shape[2]}",
                         ROLLOUT_FIX)
    pdb = path.with_suffix(".pdb")
    backbones = []
    for k in range(ca.shape[0]):
        xtc = path.with_name(f"{path.stem}_s{k}.xtc")
        bb = load_backbone(xtc, pdb, ROLLOUT_FIX)
        if bb.shape[:3] != ca.shape[1:3] + (4,) or np.abs(bb[:, :, 1] - ca[k]).max() > _CA_MATCH_TOL_A:
            raise InputError(xtc, f"backbone {bb.shape[:2]} does not match translations sample {k} {ca.shape[1:3]} "
                             f"of {path} (CA positions must agree within {_CA_MATCH_TOL_A} A)", ROLLOUT_FIX)
        backbones.append(bb)
    return Rollout(ca, np.stack(backbones), time_ps, delta_t, sequence, start_ca)


def load_reference(frames_path: str | Path, raw_dir: str | Path, name: str) -> Reference:
    """Frames HDF5 (CA of every replica) plus the raw MD backbone, every `stride`-th raw frame per stored frame."""
    frames_path, raw_dir = Path(frames_path), Path(raw_dir)
    with open_h5(frames_path, "frames HDF5", FRAMES_FIX) as h5:
        check_frames(h5, frames_path)
        dt_ps = float(h5.attrs["dt_ps"])
        stride = int(h5.attrs["stride"])
        sequence = str(h5.attrs["sequence"])
        start_ca = np.asarray(h5["start/translations"][()], dtype=np.float64)
        ca = {rep: np.asarray(h5["replicas"][rep]["translations"][()], dtype=np.float64)
              for rep in sorted(h5["replicas"])}
        residue_index = np.asarray(h5["residue_index"][()])
    pdb = raw_dir / f"{name}.pdb"
    start_backbone = load_backbone(pdb, pdb, RAW_FIX)[0]
    backbone = {}
    stale = f"the frames file was made from other MD: delete {frames_path}; snakemake reruns extract_frames"
    for rep, rep_ca in ca.items():
        xtc = raw_dir / f"{name}_prod_{rep}_fit.xtc"
        bb = load_backbone(xtc, pdb, RAW_FIX, stride)
        if bb.shape[:2] != rep_ca.shape[:2]:
            raise InputError(xtc, f"every {stride}th frame gives {bb.shape[:2]} (frames, residues), but {frames_path} "
                             f"replicas/{rep} has {rep_ca.shape[:2]}", stale)
        ends = [0, len(bb) - 1]
        mismatch = max(float(rmsd_to(bb[[f], :, 1], rep_ca[f])[0]) for f in ends)
        if mismatch > _CA_MATCH_TOL_A:
            raise InputError(xtc, f"frames do not match {frames_path} replicas/{rep} (CA RMSD {mismatch:.3f} A > "
                             f"{_CA_MATCH_TOL_A} A at the first or last frame; is attr stride={stride} right?)", stale)
        backbone[rep] = bb
    return Reference(start_ca, start_backbone, ca, backbone, dt_ps, sequence, residue_index)
