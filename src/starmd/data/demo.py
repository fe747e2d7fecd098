"""`prepare-demo`: a small, real, offline MD dataset in exactly the on-disk shape of an ATLAS protein.

The pipeline must run end to end without network or GPUs, so the demo replaces ATLAS's 100 ns explicit-solvent
runs with tens of ps of implicit-solvent OpenMM MD of short peptides. Everything downstream (frame extraction,
training, evaluation) reads `{name}.pdb` + `{name}_prod_R{k}_fit.xtc` and cannot tell the two apart.

Start structures are built from sequence (PeptideBuilder, backbone dihedrals from config; the default is an
alpha-helix so the helix-forming demo peptides start structured and fray/refold during the run), given a terminal
OXT, checked complete by pdbfixer, protonated by OpenMM's Modeller (pH from config), then minimised once; the
replicas start from that minimised structure with their own velocity and Langevin seeds, as ATLAS's replicas share
a start structure. The thread count is a CLI flag (`--threads`, Snakemake's `{threads}`), not science config.
Same config and seeds give bit-identical files with `--threads 1`; with more threads the start structure is still
identical but the CPU platform's summation order makes trajectories differ (statistically equivalent).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from starmd.config import dataclass_section, section_json
from starmd.data.residues import sequence_to_aatype
from starmd.io import atomic_dir, write_json

log = logging.getLogger(__name__)

# Short, well-studied helix formers (10-13 residues keep the whole demo at a few minutes on 2 cores): each keeps a
# fraying helix over tens of ps, so the frames carry structure and dynamics to learn.
DEMO_PROTEINS = (
    {"name": "pep1_A", "sequence": "AEAAAKEAAAKA", "split": "train"},  # E/K (i, i+4) peptide, Marqusee & Baldwin 1987
    {"name": "pep2_A", "sequence": "KETAAAKFERQHM", "split": "train"},  # RNase A C-peptide 1-13
    {"name": "pep3_A", "sequence": "NLYIQWLKDG", "split": "test"},  # Trp-cage TC5b 1-10 (its alpha-helix)
)


@dataclass(frozen=True)
class DemoConfig:
    """The `demo` config section (see schemas/demo.schema.yaml for descriptions)."""

    proteins: list[dict] = field(default_factory=lambda: [dict(p) for p in DEMO_PROTEINS])
    forcefield: str = "amber14-all.xml"
    implicit_solvent: str = "implicit/gbn2.xml"
    temperature_k: float = 300.0
    friction_per_ps: float = 1.0
    timestep_fs: float = 4.0
    hydrogen_mass_amu: float = 4.0
    minimize_max_iterations: int = 500
    equilibration_ps: float = 4.0
    production_ps: float = 20.0
    frame_interval_ps: float = 0.5
    replica_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    start_phi_deg: float = -57.0
    start_psi_deg: float = -47.0
    ph: float = 7.0
    log_every_ps: float = 5.0

    @classmethod
    def from_json(cls, text: str) -> "DemoConfig":
        cfg = cls(**dataclass_section(cls, section_json(text, "demo"), "demo"))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        steps = self.frame_interval_ps * 1000.0 / self.timestep_fs
        if self.timestep_fs <= 0 or abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
            raise ValueError(f"demo config: frame_interval_ps ({self.frame_interval_ps}) must be a positive multiple "
                             f"of timestep_fs ({self.timestep_fs} fs)")
        if self.production_ps < self.frame_interval_ps:
            raise ValueError(f"demo config: production_ps ({self.production_ps}) is shorter than one frame "
                             f"interval ({self.frame_interval_ps} ps)")
        if not self.replica_seeds or any(s < 1 for s in self.replica_seeds) or \
                len(set(self.replica_seeds)) != len(self.replica_seeds):
            # OpenMM treats seed 0 as "pick a random seed", which would make the run irreproducible
            raise ValueError(f"demo config: replica_seeds must be distinct integers >= 1, got {self.replica_seeds}")

    def protein(self, name: str) -> dict:
        for p in self.proteins:
            if p.get("name") == name:
                if not isinstance(p.get("sequence"), str):
                    raise ValueError(f"demo config: protein {name!r} has no 'sequence' string")
                sequence_to_aatype(p["sequence"])
                return p
        raise ValueError(f"demo config: protein {name!r} is not in demo.proteins "
                         f"({[p.get('name') for p in self.proteins]})")

    @property
    def steps_per_frame(self) -> int:
        return round(self.frame_interval_ps * 1000.0 / self.timestep_fs)

    @property
    def n_frames(self) -> int:
        return int(round(self.production_ps / self.frame_interval_ps))


def build_start_structure(sequence: str, phi_deg: float, psi_deg: float, ph: float, forcefield, seed: int):
    """Sequence -> (openmm Topology, positions) of the full peptide with hydrogens and terminal OXT.

    Reproducible by construction: OpenMM's Modeller places new hydrogens with the global `random` module (no
    generator argument) and relaxes them on the default platform, whose multithreaded sums differ run to run; so
    `random` is seeded and the relaxation runs on the deterministic Reference platform.
    """
    import openmm
    from Bio.PDB import PDBIO
    from openmm import app
    from pdbfixer import PDBFixer
    from PeptideBuilder import PeptideBuilder

    n = len(sequence)
    structure = PeptideBuilder.make_structure(sequence, [phi_deg] * (n - 1), [psi_deg] * (n - 1))
    PeptideBuilder.add_terminal_OXT(structure)
    buf = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buf)
    fixer = PDBFixer(pdbfile=io.StringIO(buf.getvalue()))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    if fixer.missingAtoms or fixer.missingTerminals:
        raise ValueError(f"start structure of {sequence!r}: PeptideBuilder left heavy atoms missing "
                         f"({fixer.missingAtoms}, terminals {fixer.missingTerminals})")
    modeller = app.Modeller(fixer.topology, fixer.positions)
    random.seed(seed)
    modeller.addHydrogens(forcefield, pH=ph, platform=openmm.Platform.getPlatformByName("Reference"))
    return modeller.topology, modeller.positions


def _simulation(topology, system, cfg: DemoConfig, seed: int, threads: int):
    import openmm
    from openmm import app, unit

    integrator = openmm.LangevinMiddleIntegrator(cfg.temperature_k * unit.kelvin,
                                                 cfg.friction_per_ps / unit.picosecond,
                                                 cfg.timestep_fs * unit.femtoseconds)
    integrator.setRandomNumberSeed(seed)  # must precede Context creation to take effect
    platform = openmm.Platform.getPlatformByName("CPU")
    return app.Simulation(topology, system, integrator, platform, {"Threads": str(threads)})


def minimise(topology, system, positions, max_iterations: int):
    """Energy-minimised positions, on the Reference platform: the CPU platform's threaded sums would make the start
    structure (and so every replica) depend on the thread count; for a peptide this costs seconds."""
    import openmm
    from openmm import app

    sim = app.Simulation(topology, system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(positions)
    sim.minimizeEnergy(maxIterations=max_iterations)
    return sim.context.getState(getPositions=True).getPositions(asNumpy=True)


def run_replica(topology, system, start_positions, cfg: DemoConfig, seed: int, threads: int,
                label: str) -> tuple[np.ndarray, dict]:
    """Equilibrate then run production from the minimised start; returns xyz [T, n_atoms, 3] in nm and timings."""
    from openmm import unit

    sim = _simulation(topology, system, cfg, seed, threads)
    sim.context.setPositions(start_positions)
    sim.context.setVelocitiesToTemperature(cfg.temperature_k * unit.kelvin, seed)
    n_equil = int(round(cfg.equilibration_ps * 1000.0 / cfg.timestep_fs))
    sim.step(n_equil)
    xyz = np.empty((cfg.n_frames, topology.getNumAtoms(), 3), dtype=np.float32)
    log_every = max(1, int(round(cfg.log_every_ps / cfg.frame_interval_ps)))
    t0 = time.perf_counter()
    for k in range(cfg.n_frames):
        sim.step(cfg.steps_per_frame)
        pos = sim.context.getState(getPositions=True).getPositions(asNumpy=True)
        xyz[k] = pos.value_in_unit(unit.nanometer)
        if (k + 1) % log_every == 0 or k + 1 == cfg.n_frames:
            ns_day = (k + 1) * cfg.frame_interval_ps * 1e-3 / max(time.perf_counter() - t0, 1e-9) * 86400
            log.info("%s: %.1f/%.1f ps, %.1f ns/day", label, (k + 1) * cfg.frame_interval_ps, cfg.production_ps,
                     ns_day)
    wall = time.perf_counter() - t0
    return xyz, {"seed": seed, "production_wall_s": round(wall, 2),
                 "ns_per_day": round(cfg.production_ps * 1e-3 / max(wall, 1e-9) * 86400, 2)}


def prepare_demo(name: str, out_dir: str | os.PathLike, cfg: DemoConfig, threads: int = 1) -> Path:
    """Simulate demo protein `name` and write `{name}.pdb`, `{name}_prod_R{k}_fit.xtc`, `provenance.json`."""
    import mdtraj as md
    import openmm
    from openmm import app, unit

    protein = cfg.protein(name)
    sequence = protein["sequence"]
    out_dir = Path(out_dir)
    t_start = time.perf_counter()

    forcefield = app.ForceField(cfg.forcefield, cfg.implicit_solvent)
    topology, positions = build_start_structure(sequence, cfg.start_phi_deg, cfg.start_psi_deg, cfg.ph, forcefield,
                                                cfg.replica_seeds[0])
    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                                     hydrogenMass=cfg.hydrogen_mass_amu * unit.amu)
    start_positions = minimise(topology, system, positions, cfg.minimize_max_iterations)
    md_top = md.Topology.from_openmm(topology)
    start = md.Trajectory(start_positions.value_in_unit(unit.nanometer)[None].astype(np.float32), md_top)
    fit_atoms = md_top.select("backbone")

    replicas = []
    with atomic_dir(out_dir) as work:
        start.save_pdb(str(work / f"{name}.pdb"))
        for k, seed in enumerate(cfg.replica_seeds, start=1):
            xyz, timing = run_replica(topology, system, start_positions, cfg, seed, threads, f"{name} R{k}")
            time_ps = cfg.frame_interval_ps * np.arange(1, cfg.n_frames + 1)
            traj = md.Trajectory(xyz, md_top, time=time_ps)
            traj.superpose(start, 0, atom_indices=fit_atoms)  # "_fit": rot+trans fitted on the backbone, as ATLAS
            traj.save_xtc(str(work / f"{name}_prod_R{k}_fit.xtc"))
            replicas.append({"replica": f"R{k}", **timing})
        write_json(work / "provenance.json", {
            "name": name, "sequence": sequence, "split": protein.get("split"),
            "engine": f"OpenMM {openmm.__version__}", "platform": "CPU", "threads": threads,
            "forcefield": cfg.forcefield, "implicit_solvent": cfg.implicit_solvent, "nonbonded": "NoCutoff",
            "constraints": "HBonds", "hydrogen_mass_amu": cfg.hydrogen_mass_amu,
            "integrator": "LangevinMiddleIntegrator", "temperature_k": cfg.temperature_k,
            "friction_per_ps": cfg.friction_per_ps, "timestep_fs": cfg.timestep_fs,
            "minimize_max_iterations": cfg.minimize_max_iterations, "equilibration_ps": cfg.equilibration_ps,
            "production_ps": cfg.production_ps, "frame_interval_ps": cfg.frame_interval_ps,
            "n_frames_per_replica": cfg.n_frames, "replica_seeds": list(cfg.replica_seeds),
            "start_structure": {"builder": f"PeptideBuilder {version('PeptideBuilder')}",
                                "phi_deg": cfg.start_phi_deg, "psi_deg": cfg.start_psi_deg,
                                "completion": f"PeptideBuilder OXT, pdbfixer {version('pdbfixer')} check, "
                                              f"OpenMM Modeller hydrogens at pH {cfg.ph}",
                                "minimised": True},
            "fit": "mdtraj superpose on backbone atoms to the start structure",
            "n_atoms": md_top.n_atoms, "replicas": replicas,
            "total_wall_s": round(time.perf_counter() - t_start, 2),
        })
    log.info("%s: wrote %s in %.1f s", name, out_dir, time.perf_counter() - t_start)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd prepare-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="demo protein name, one of demo.proteins[].name")
    parser.add_argument("--out-dir", required=True, type=Path, help="data/raw/demo/{name}")
    parser.add_argument("--config-json", required=True, help="JSON of the `demo` config section")
    parser.add_argument("--threads", type=int, default=1, help="OpenMM CPU platform threads (Snakemake {threads})")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    prepare_demo(args.name, args.out_dir, DemoConfig.from_json(args.config_json), threads=args.threads)
    return 0
