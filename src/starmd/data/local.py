"""`prepare-local`: your own MD (any format mdtraj reads) -> the raw layout every later step reads.

`data/raw/local/{name}/{name}.pdb` (start structure) and `{name}_prod_R{k}_fit.xtc` (trajectory k of the manifest
entry), the shape ATLAS ships, so frame extraction, features, training and evaluation cannot tell them apart. Raw MD
output is not ready to use as is: it holds solvent and ions (only amino-acid residues are kept; the rest is logged and
written to provenance.json), a molecule split across the periodic boundary (made whole, mdtraj
`make_molecules_whole`, whenever the file has a unit cell), and the protein tumbles (every frame is superposed on the
start structure's CA atoms). The start structure is frame 0 of the first trajectory, so structure and trajectories
share one topology and one origin.

The manifest is the `local` config section: `proteins` (a list) or `manifest` (a CSV with the same columns; paths
relative to the CSV; several trajectories separated by `;`). Each entry: name, topology, trajectories, split, and
`dt_ps` where the format stores no frame times (DCD and the other formats in `_NO_TIME`; given anyway, it wins).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from starmd.config import section_json, section_keys
from starmd.data.residues import protein_residues
from starmd.data.structure import check_continuous, protein_atoms, select_protein
from starmd.errors import InputError, reading
from starmd.io import atomic_path, write_json

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9]+_[A-Za-z0-9]+")  # the workflow's {name} wildcard
SPLITS = ("train", "val", "test")
# Formats whose frames carry their simulation time in the file (mdtraj reads it); every other one needs dt_ps.
_TIMED = (".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".h5")
_CHUNK_FRAMES = 500  # frames in memory at once: bounded memory for trajectories of any length
LOCAL_FIX = "fix the `local` manifest entry or the file it names"


@dataclass(frozen=True)
class LocalEntry:
    """One protein of the manifest; `where` names it in errors (e.g. `local.proteins[1]`, `runs.csv row 3`)."""

    name: str
    topology: Path
    trajectories: tuple[Path, ...]
    split: str
    dt_ps: float | None
    where: str

    def as_section(self) -> dict[str, Any]:
        """This entry alone as a `local` section, paths resolved: what a prepare job reads, so its params, and adding
        or editing another protein never reruns this one's conversion."""
        entry: dict[str, Any] = {"name": self.name, "topology": str(self.topology), "split": self.split,
                                 "trajectories": [str(p) for p in self.trajectories]}
        if self.dt_ps is not None:
            entry["dt_ps"] = self.dt_ps
        return {"proteins": [entry]}


def _entry(raw: Mapping[str, Any], where: str, base: Path) -> LocalEntry:
    row = section_keys(raw, ("name", "topology", "trajectories", "split", "dt_ps"), where)
    missing = [k for k in ("name", "topology", "trajectories", "split") if row.get(k) in (None, "", [])]
    if missing:
        raise ValueError(f"{where}: missing {missing} (each entry needs name, topology, trajectories, split)")
    name, split, dt = str(row["name"]), row["split"], row.get("dt_ps")
    where = f"{where} ({name})"
    if not NAME.fullmatch(name):
        raise ValueError(f"{where}: name must look like 'abc_A' (letters/digits, one underscore, letters/digits)")
    if split not in SPLITS:
        raise ValueError(f"{where}: split {split!r} is not one of {list(SPLITS)}")
    if dt is not None and (isinstance(dt, bool) or not isinstance(dt, (int, float)) or dt <= 0):
        raise ValueError(f"{where}: dt_ps must be a number > 0 (ps between frames), got {dt!r}")
    trajs = row["trajectories"]
    trajs = [trajs] if isinstance(trajs, str) else trajs
    paths = [base / str(p) for p in [row["topology"], *trajs]]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{where}: no such file {path}")
    for path in paths[1:]:
        if dt is None and path.suffix.lower() not in _TIMED:
            raise ValueError(f"{where}: {path} ({path.suffix}) stores no frame times; set dt_ps (ps between frames)")
    return LocalEntry(name, paths[0], tuple(paths[1:]), split, None if dt is None else float(dt), where)


def _manifest_rows(path: Path) -> list[tuple[dict[str, Any], str]]:
    with reading(path, "manifest CSV", LOCAL_FIX), open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        row = {k: v.strip() for k, v in row.items() if k is not None and v is not None and v.strip()}
        if "trajectories" in row:
            row["trajectories"] = [t.strip() for t in row["trajectories"].split(";") if t.strip()]
        if "dt_ps" in row:
            try:
                row["dt_ps"] = float(row["dt_ps"])
            except ValueError:
                raise ValueError(f"{path} row {i}: dt_ps {row['dt_ps']!r} is not a number") from None
        out.append((row, f"{path} row {i}"))
    return out


def load_entries(section: Mapping[str, Any]) -> list[LocalEntry]:
    """Every protein of the `local` section (its `proteins` list or its `manifest` CSV), checked: names unique and
    wildcard-safe, files present, a split each, dt_ps wherever a format has no frame times."""
    section = section_keys(section, ("proteins", "manifest"), "local")
    proteins, manifest = section.get("proteins") or [], section.get("manifest")
    if bool(proteins) == bool(manifest):
        raise ValueError("local: give exactly one of `proteins` (a list) and `manifest` (a CSV path)")
    if manifest:
        entries = [_entry(row, where, Path(manifest).parent) for row, where in _manifest_rows(Path(manifest))]
    else:
        entries = [_entry(raw, f"local.proteins[{i}]", Path(".")) for i, raw in enumerate(proteins)]
    if not entries:
        raise ValueError(f"local: {manifest} lists no proteins")
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ValueError(f"{e.where}: duplicate protein name")
        seen.add(e.name)
    return entries


def find_entry(entries: list[LocalEntry], name: str) -> LocalEntry:
    for e in entries:
        if e.name == name:
            return e
    raise ValueError(f"local: protein {name!r} is not in the manifest ({[e.name for e in entries]})")


def _load(entry: LocalEntry, path: Path, **kw):
    """mdtraj iterload of `path` with the entry's topology (a mismatch names both files)."""
    import mdtraj as md

    with reading(path, f"trajectory of {entry.where}", LOCAL_FIX):
        yield from md.iterload(str(path), top=str(entry.topology), **kw)


def _whole(traj) -> bool:
    """Make every molecule whole across the periodic boundary when the frames have a unit cell; True if they had."""
    if traj.unitcell_vectors is None:
        return False
    if traj.topology.n_bonds == 0:  # e.g. a GRO topology: bonds from the residue templates
        traj.topology.create_standard_bonds()
    traj.make_molecules_whole(inplace=True)
    return True


def prepare_start(entry: LocalEntry, out_dir: Path) -> Path:
    """Write `{name}.pdb` (frame 0 of the first trajectory: protein only, whole) and provenance.json."""
    import mdtraj as md

    with reading(entry.topology, f"topology of {entry.where}", LOCAL_FIX):
        topology = md.load_topology(str(entry.topology))
    keep, removed = protein_atoms(topology)
    with reading(entry.trajectories[0], f"trajectory of {entry.where}", LOCAL_FIX):
        first = md.load_frame(str(entry.trajectories[0]), 0, top=str(entry.topology))
    start, _ = select_protein(first, entry.topology)
    periodic = _whole(start)
    protein_residues(start.topology, str(entry.topology))  # every kept residue has its backbone
    check_continuous(start, entry.trajectories[0])
    log.info("%s: kept %d protein residues (%d atoms); removed %s; unit cell %s", entry.name, start.n_residues,
             len(keep), removed or "nothing", "present: molecules made whole" if periodic else "absent")
    pdb = out_dir / f"{entry.name}.pdb"
    with atomic_path(pdb) as tmp:
        start.save_pdb(str(tmp))
    write_json(out_dir / "provenance.json", {
        "dataset": "local", "name": entry.name, "manifest_entry": entry.where, "topology": str(entry.topology),
        "trajectories": [str(p) for p in entry.trajectories], "dt_ps": entry.dt_ps,
        "start": f"frame 0 of {entry.trajectories[0]}", "removed_residues": removed,
        "n_protein_atoms": int(len(keep)), "made_whole": periodic, "fit": "superposed on the start structure's CA"})
    return pdb


def prepare_replica(entry: LocalEntry, index: int, start_pdb: Path, out: Path) -> Path:
    """Write trajectory `index` (1-based) as `out` (XTC): protein atoms, whole, CA-superposed on `start_pdb`."""
    import mdtraj as md
    from mdtraj.formats import XTCTrajectoryFile

    if not 1 <= index <= len(entry.trajectories):
        raise ValueError(f"{entry.where}: has {len(entry.trajectories)} trajectories, no replica {index}")
    path = entry.trajectories[index - 1]
    with reading(start_pdb, "start structure", "delete it; snakemake reruns prepare_local_start"):
        start = md.load(str(start_pdb))
    keep, _ = protein_atoms(md.load_topology(str(entry.topology)))
    if len(keep) != start.n_atoms:
        raise InputError(start_pdb, f"{start.n_atoms} atoms, but the protein of {entry.topology} has {len(keep)}",
                         "delete it; snakemake reruns prepare_local_start")
    ca = start.topology.select("name CA")
    n_frames, periodic = 0, False
    with atomic_path(out) as tmp, XTCTrajectoryFile(str(tmp), "w") as xtc:
        for chunk in _load(entry, path, chunk=_CHUNK_FRAMES, atom_indices=keep):
            chunk = md.Trajectory(chunk.xyz, start.topology, chunk.time, chunk.unitcell_lengths,
                                  chunk.unitcell_angles)
            periodic = _whole(chunk)
            chunk.superpose(start, 0, atom_indices=ca)
            time = chunk.time if entry.dt_ps is None else entry.dt_ps * np.arange(n_frames, n_frames + len(chunk))
            xtc.write(chunk.xyz, time=time, box=chunk.unitcell_vectors)
            n_frames += len(chunk)
    if n_frames < 2:
        out.unlink()
        raise InputError(path, f"{n_frames} frame(s); a replica needs at least 2 ({entry.where})", LOCAL_FIX)
    log.info("%s R%d: %d frames from %s (%s), fitted on CA%s", entry.name, index, n_frames, path,
             "file times" if entry.dt_ps is None else f"dt {entry.dt_ps} ps",
             ", molecules made whole" if periodic else "")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd prepare-local", description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("start", "replica"), help="the start structure, or one replica trajectory")
    parser.add_argument("--name", required=True, help="the protein's name in the manifest")
    parser.add_argument("--out", required=True, type=Path, help="start: data/raw/local/{name} (folder); replica: "
                        "the XTC to write")
    parser.add_argument("--index", type=int, default=1, help="replica: which trajectory of the entry (1-based)")
    parser.add_argument("--start", type=Path, help="replica: the start structure written by `start`")
    parser.add_argument("--config-json", required=True, help="JSON of the `local` config section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    entry = find_entry(load_entries(section_json(args.config_json, "local")), args.name)
    if args.part == "start":
        prepare_start(entry, args.out)
    else:
        if args.start is None:
            parser.error("replica needs --start (the start structure)")
        prepare_replica(entry, args.index, args.start, args.out)
    return 0
