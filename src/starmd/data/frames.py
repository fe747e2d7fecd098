"""`extract-frames`: MD trajectories -> per-residue SE(3) frames, the only representation the model sees.

Reads the ATLAS-shaped raw directory (start PDB + one xtc per replica) and writes `data/frames/{name}.h5` in the
schema of docs/architecture.md. Only the backbone N/CA/C atoms are loaded (mdtraj `atom_indices`), so a 100 ns ATLAS
replica costs megabytes, not gigabytes. Coordinates leave mdtraj in nm and are stored in Angstrom.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from starmd.config import dataclass_section, section_json
from starmd.data.residues import protein_residues, sequence_to_aatype
from starmd.data.structure import check_continuous
from starmd.errors import InputError, check_finite_dataset, open_h5, reading
from starmd.geometry import Rigid
from starmd.io import atomic_path, sha256sum

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NM_TO_ANGSTROM = 10.0
# N-CA and CA-C bonds are ~1.46 / 1.52 A; anything outside this band is a corrupted frame, not a conformation.
_BOND_RANGE_A = (0.9, 2.2)
# xtc stores times as float32 (0.2 ps reads back as 0.20000000298): round to 0.1 fs, far below any MD step
_TIME_DECIMALS = 4
# what to do about a raw MD file (start PDB, replica XTC) that cannot be used
RAW_FIX = "delete it; snakemake reruns prepare_demo or download_atlas"


@dataclass(frozen=True)
class FramesConfig:
    """The `frames` config section (see schemas/frames.schema.yaml)."""

    stride: int = 1

    @classmethod
    def from_json(cls, text: str) -> "FramesConfig":
        cfg = cls(**dataclass_section(cls, section_json(text, "frames"), "frames"))
        if not isinstance(cfg.stride, int) or cfg.stride < 1:
            raise ValueError(f"frames config: stride must be an integer >= 1, got {cfg.stride!r}")
        return cfg


def backbone_frames(backbone_nm: np.ndarray, source: str, residues: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Backbone [T, N, 3 (N, CA, C), 3] in nm -> rotations [T, N, 3, 3] and translations [T, N, 3] (A), float32.

    Frames are built in float64 (Gram-Schmidt in float32 loses ~1e-6 of orthonormality) and cast once at the end.
    """
    x = backbone_nm.astype(np.float64) * NM_TO_ANGSTROM  # [T, N, 3, 3]
    bad = ~np.isfinite(x).all(axis=(-1, -2))
    bond = np.linalg.norm(x[..., [0, 2], :] - x[..., 1:2, :], axis=-1)  # [T, N, 2]: |N-CA|, |C-CA|
    bad |= ((bond < _BOND_RANGE_A[0]) | (bond > _BOND_RANGE_A[1])).any(-1)
    if bad.any():
        t, i = np.argwhere(bad)[0]
        raise InputError(source, f"frame {t}, residue {residues[i]}: non-finite coordinates or N-CA/C-CA bond outside "
                         f"{_BOND_RANGE_A} A ({bond[t, i].round(3).tolist()}); corrupted trajectory?", RAW_FIX)
    xt = torch.from_numpy(x)
    rigid = Rigid.from_3_points(xt[..., 0, :], xt[..., 1, :], xt[..., 2, :])
    return rigid.rots.to(torch.float32).numpy(), rigid.trans.to(torch.float32).numpy()


def _n_atoms(path: Path) -> int:
    import mdtraj as md

    with reading(path, "XTC trajectory", RAW_FIX), md.open(str(path)) as f:
        xyz = f.read(n_frames=1)[0]
    if xyz.shape[0] == 0:
        raise InputError(path, "empty trajectory (0 frames)", RAW_FIX)
    return int(xyz.shape[1])


def _uniform_spacing(time_ps: np.ndarray, source: str) -> float:
    if len(time_ps) < 2:
        raise InputError(source, f"{len(time_ps)} frame(s) after striding; need >= 2 to define dt_ps",
                         "lower frames.stride, or regenerate a longer trajectory")
    diffs = np.diff(time_ps)
    dt = round(float(np.median(diffs)), _TIME_DECIMALS)
    # xtc stores time as float32: allow its rounding (~1e-2 ps at 1e5 ps), nothing more
    if dt <= 0 or not np.allclose(diffs, dt, rtol=1e-4, atol=2e-2):
        k = int(np.argmax(np.abs(diffs - dt)))
        raise InputError(source, f"frame times are not evenly spaced (frame {k} -> {k + 1}: {diffs[k]} ps vs median "
                         f"{dt} ps)", RAW_FIX)
    return dt


def extract_frames(pdb: str | Path, xtcs: list[str | Path], out: str | Path, cfg: FramesConfig,
                   name: str | None = None) -> Path:
    """Write `out` (frames HDF5) from the start `pdb` and one trajectory per replica (stored as R1, R2, ...)."""
    import mdtraj as md

    pdb, xtcs, out = Path(pdb), [Path(x) for x in xtcs], Path(out)
    name = name or out.stem
    with reading(pdb, "PDB structure", RAW_FIX):
        start = md.load(str(pdb))
    top = start.topology
    sequence, residue_index, bb_idx = protein_residues(top, str(pdb))
    check_continuous(start, pdb)
    residues = [f"{r.name} {r.resSeq}" for r in top.residues]
    n_res = len(sequence)
    start_rots, start_trans = backbone_frames(start.xyz[:1, bb_idx], str(pdb), residues)

    replicas, dts = {}, []
    for k, xtc in enumerate(xtcs, start=1):
        t0 = time.perf_counter()
        n_atoms = _n_atoms(xtc)
        if n_atoms != top.n_atoms:
            raise InputError(xtc, f"{n_atoms} atoms, but {pdb} has {top.n_atoms}: trajectory and topology do not "
                             f"belong together (or one is truncated)", RAW_FIX)
        with reading(xtc, "XTC trajectory (truncated?)", RAW_FIX):
            traj = md.load(str(xtc), top=top, stride=cfg.stride, atom_indices=bb_idx.ravel())
        if traj.n_frames == 0:
            raise InputError(xtc, "empty trajectory (0 frames)", RAW_FIX)
        rots, trans = backbone_frames(traj.xyz.reshape(traj.n_frames, n_res, 3, 3), str(xtc), residues)
        time_ps = np.round(np.asarray(traj.time, dtype=np.float64), _TIME_DECIMALS)
        dts.append(_uniform_spacing(time_ps, str(xtc)))
        replicas[f"R{k}"] = (rots, trans, time_ps)
        log.info("%s R%d: %d frames (stride %d) from %s in %.1f s", name, k, traj.n_frames, cfg.stride, xtc.name,
                 time.perf_counter() - t0)
    if not np.allclose(dts, dts[0], rtol=1e-3):
        raise InputError(pdb, f"its replicas have different frame spacings {dts} ps; cannot share one dt_ps",
                         "regenerate the raw MD with one frame spacing")

    provenance_file = pdb.parent / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
    sources = {p.name: sha256sum(p) for p in [pdb, *xtcs]}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"name": name, "sequence": sequence, "n_residues": n_res, "stride": cfg.stride,
                        "dt_ps": dts[0], "source_sha256": json.dumps(sources, sort_keys=True),
                        "provenance": json.dumps(provenance, sort_keys=True), "format_version": FORMAT_VERSION})
        f.create_dataset("aatype", data=sequence_to_aatype(sequence))
        f.create_dataset("residue_index", data=residue_index)
        f.create_dataset("start/rotations", data=start_rots[0])
        f.create_dataset("start/translations", data=start_trans[0])
        for key, (rots, trans, time_ps) in replicas.items():
            f.create_dataset(f"replicas/{key}/rotations", data=rots)
            f.create_dataset(f"replicas/{key}/translations", data=trans)
            f.create_dataset(f"replicas/{key}/time_ps", data=time_ps)
    log.info("%s: wrote %s (%d residues, %d replicas, dt %.3g ps)", name, out, n_res, len(replicas), dts[0])
    return out


ROOT_ATTRS = ("name", "sequence", "n_residues", "stride", "dt_ps")
# what to do about a frames file a reader cannot use
FRAMES_FIX = "delete it; snakemake reruns extract_frames"


def _check_shape(h5: h5py.File, path: str | Path, key: str, shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """Dataset `key` must exist with `shape` (None = any length, written T); returns its shape."""
    got = h5[key].shape if key in h5 else None
    if got is None or len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
        dims = ", ".join("T" if s is None else str(s) for s in shape)
        raise InputError(path, f"{key} must be [{dims}], got {got or 'missing'} (frames schema, docs/architecture.md)",
                         FRAMES_FIX)
    return got


def check_frames(h5: h5py.File, path: str | Path) -> int:
    """Check an open frames HDF5 against the schema of docs/architecture.md, values included; returns N.

    The one check every reader (training, rollout, evaluation) runs, so a malformed file fails the same way
    everywhere, naming the file and the key, before any reader indexes into it or computes with a NaN.
    """
    for key in ROOT_ATTRS:
        if key not in h5.attrs:
            raise InputError(path, f"missing root attribute {key!r} (frames schema, docs/architecture.md)", FRAMES_FIX)
    n = int(h5.attrs["n_residues"])
    if len(str(h5.attrs["sequence"])) != n:
        raise InputError(path, f"attr sequence has {len(str(h5.attrs['sequence']))} residues, n_residues is {n}",
                         FRAMES_FIX)
    if "replicas" not in h5 or not len(h5["replicas"]):
        raise InputError(path, "no group 'replicas/R*' with frames", FRAMES_FIX)
    for rep in sorted(h5["replicas"]):
        t = _check_shape(h5, path, f"replicas/{rep}/rotations", (None, n, 3, 3))[0]
        _check_shape(h5, path, f"replicas/{rep}/translations", (t, n, 3))
        _check_shape(h5, path, f"replicas/{rep}/time_ps", (t,))
    for key, shape in (("aatype", (n,)), ("residue_index", (n,)), ("start/rotations", (n, 3, 3)),
                       ("start/translations", (n, 3))):
        _check_shape(h5, path, key, shape)
    for rep in sorted(h5["replicas"]):
        for key in ("rotations", "translations", "time_ps"):
            check_finite_dataset(path, h5[f"replicas/{rep}/{key}"], FRAMES_FIX)
    for key in ("start/rotations", "start/translations"):
        check_finite_dataset(path, h5[key], FRAMES_FIX)
    return n


def read_frames(path: str | Path) -> dict:
    """Frames HDF5 -> {'attrs': {...}, 'aatype', 'residue_index', 'start': {rotations, translations},
    'replicas': {'R1': {rotations, translations, time_ps}, ...}} as numpy arrays (JSON attrs decoded)."""
    with open_h5(path, "frames HDF5", FRAMES_FIX) as f:
        if f.attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(path, f"frames format_version {f.attrs.get('format_version')!r}, expected "
                             f"{FORMAT_VERSION}", FRAMES_FIX)
        check_frames(f, path)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        for k in ("source_sha256", "provenance"):
            attrs[k] = json.loads(attrs[k])
        return {
            "attrs": attrs,
            "aatype": f["aatype"][()],
            "residue_index": f["residue_index"][()],
            "start": {k: f["start"][k][()] for k in ("rotations", "translations")},
            "replicas": {r: {k: g[k][()] for k in ("rotations", "translations", "time_ps")}
                         for r, g in f["replicas"].items()},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd extract-frames", description=__doc__.split("\n")[0])
    parser.add_argument("--pdb", required=True, type=Path, help="start structure / topology ({name}.pdb)")
    parser.add_argument("--xtc", required=True, nargs="+", type=Path, help="replica trajectories, stored as R1, R2..")
    parser.add_argument("--out", required=True, type=Path, help="data/frames/{name}.h5")
    parser.add_argument("--name", help="protein name stored in the file (default: the output file's stem)")
    parser.add_argument("--config-json", required=True, help="JSON of the `frames` config section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    extract_frames(args.pdb, args.xtc, args.out, FramesConfig.from_json(args.config_json), name=args.name)
    return 0
