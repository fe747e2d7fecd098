"""dataset: local: your own MD in DCD / Amber NetCDF / TRR (written here by OpenMM and mdtraj) -> the raw layout,
with waters and ions removed, a molecule split across the periodic boundary made whole, and a chain break refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from starmd.__main__ import main as starmd_main
from starmd.data.frames import FramesConfig, extract_frames, read_frames
from starmd.data.local import load_entries, prepare_replica, prepare_start
from starmd.data.structure import chain_breaks
from starmd.errors import InputError

SEQUENCE = "GAWKEA"
N_FRAMES = 6


@pytest.fixture(scope="module")
def solvated_md(tmp_path_factory) -> dict[str, Path]:
    """Real explicit-solvent OpenMM MD of a hexapeptide in a water box with Na+/Cl- (PME), saved as DCD by OpenMM's
    reporter, and as Amber NetCDF and TRR by mdtraj; plus the solvated PDB topology (waters and ions included)."""
    import openmm
    from openmm import app, unit

    from starmd.data.demo import build_start_structure

    root = tmp_path_factory.mktemp("local_md")
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(*build_start_structure(SEQUENCE, -57.0, -47.0, 7.0, ff, seed=7))
    modeller.addSolvent(ff, padding=0.5 * unit.nanometer, ionicStrength=0.15 * unit.molar)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                             constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(7)
    sim = app.Simulation(modeller.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    sim.context.setPositions(modeller.positions)
    sim.minimizeEnergy(maxIterations=50)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    pdb = root / "solvated.pdb"
    with open(pdb, "w") as f:
        state = sim.context.getState(getPositions=True)
        app.PDBFile.writeFile(modeller.topology, state.getPositions(), f)
    sim.reporters.append(app.DCDReporter(str(root / "run.dcd"), 10))
    sim.step(10 * N_FRAMES)
    traj = md.load(str(root / "run.dcd"), top=str(pdb))
    traj.time = 0.02 * np.arange(1, N_FRAMES + 1)  # 10 steps of 2 fs
    traj.save_netcdf(str(root / "run.nc"))
    traj.save_trr(str(root / "run.trr"))
    return {"pdb": pdb, "dcd": root / "run.dcd", "nc": root / "run.nc", "trr": root / "run.trr", "traj": traj}


def _split_across_boundary(traj: md.Trajectory) -> md.Trajectory:
    """The protein moved onto the box edge and every atom wrapped into the box on its own: what raw MD output looks
    like when the molecule crosses the periodic boundary."""
    out = traj[:]
    protein = out.topology.select("protein")
    box = out.unitcell_lengths[:, None, :]
    centre = out.xyz[:, protein].mean(axis=1, keepdims=True)
    out.xyz = np.mod(out.xyz - centre + 0.0, box)  # protein centre onto the corner: its atoms scatter to all sides
    return out


def _entry(solvated_md, trajectories, name="pep_A", dt_ps=None):
    raw = {"name": name, "topology": str(solvated_md["pdb"]), "trajectories": [str(t) for t in trajectories],
           "split": "test"}
    if dt_ps is not None:
        raw["dt_ps"] = dt_ps
    return load_entries({"proteins": [raw]})[0]


def test_dcd_netcdf_trr_become_the_raw_layout_and_frames(solvated_md, tmp_path):
    entry = _entry(solvated_md, [solvated_md["dcd"], solvated_md["nc"], solvated_md["trr"]], dt_ps=0.02)
    out = tmp_path / "pep_A"
    out.mkdir()
    pdb = prepare_start(entry, out)
    xtcs = [prepare_replica(entry, k, pdb, out / f"pep_A_prod_R{k}_fit.xtc") for k in (1, 2, 3)]
    start = md.load(str(pdb))
    assert start.n_residues == len(SEQUENCE) and set(r.name for r in start.topology.residues) <= \
        {"GLY", "ALA", "TRP", "LYS", "GLU"}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["removed_residues"]["HOH"] > 100 and provenance["removed_residues"]["NA"] >= 1
    assert provenance["removed_residues"]["CL"] >= 1 and provenance["made_whole"]
    full = solvated_md["traj"]
    protein = full.atom_slice(full.topology.select("protein"))
    for xtc in xtcs:
        traj = md.load(str(xtc), top=str(pdb))
        assert traj.n_frames == N_FRAMES and traj.n_atoms == protein.n_atoms
        np.testing.assert_allclose(traj.time, 0.02 * np.arange(N_FRAMES), atol=1e-4)
        ca = traj.topology.select("name CA")  # fitted on the start: frame 0 is the start structure itself
        np.testing.assert_allclose(traj.xyz[0, ca], start.xyz[0, ca], atol=2e-3)
        # the same conformations as the MD, frame by frame (md.rmsd centres its inputs, so it comes last)
        assert max(10 * md.rmsd(traj[k], protein, k)[0] for k in range(N_FRAMES)) < 0.05
    h5 = extract_frames(pdb, xtcs, tmp_path / "pep_A.h5", FramesConfig())
    data = read_frames(h5)
    assert data["attrs"]["sequence"] == SEQUENCE and data["attrs"]["dt_ps"] == pytest.approx(0.02)
    assert sorted(data["replicas"]) == ["R1", "R2", "R3"]
    np.testing.assert_allclose(data["replicas"]["R1"]["translations"], data["replicas"]["R3"]["translations"],
                               atol=2e-2)  # the same MD in three formats


def test_a_molecule_split_across_the_periodic_boundary_is_made_whole(solvated_md, tmp_path):
    split = _split_across_boundary(solvated_md["traj"])
    path = tmp_path / "split.nc"
    split.save_netcdf(str(path))
    protein = split.atom_slice(split.topology.select("protein"))
    bonds = np.array([[b[0].index, b[1].index] for b in protein.topology.bonds])
    longest = 10 * np.linalg.norm(protein.xyz[:, bonds[:, 0]] - protein.xyz[:, bonds[:, 1]], axis=-1).max()
    assert longest > 10  # the input really is split
    protein.save_xtc(str(tmp_path / "raw.xtc"))
    protein[0].save_pdb(str(tmp_path / "raw.pdb"))
    with pytest.raises(InputError, match="chain break .* made whole by `dataset: local`"):  # raw, it is refused
        extract_frames(tmp_path / "raw.pdb", [tmp_path / "raw.xtc"], tmp_path / "raw.h5", FramesConfig())
    entry = _entry(solvated_md, [path])
    out = tmp_path / "pep_A"
    out.mkdir()
    pdb = prepare_start(entry, out)
    xtc = prepare_replica(entry, 1, pdb, out / "pep_A_prod_R1_fit.xtc")
    traj = md.load(str(xtc), top=str(pdb))
    whole = solvated_md["traj"].atom_slice(solvated_md["traj"].topology.select("protein"))
    assert max(10 * md.rmsd(traj[k], whole, k)[0] for k in range(N_FRAMES)) < 0.05
    assert read_frames(extract_frames(pdb, [xtc], tmp_path / "f.h5", FramesConfig()))["attrs"]["n_residues"] == 6


def test_a_chain_break_is_refused_naming_the_residues(solvated_md, tmp_path):
    full = solvated_md["traj"][0]
    protein = full.atom_slice(full.topology.select("protein"))
    gap = protein.atom_slice(protein.topology.select("not resid 3"))  # residue 4 (LYS) missing
    assert chain_breaks(gap.topology, gap.xyz[0]) and not chain_breaks(protein.topology, protein.xyz[0])
    gap.save_pdb(str(tmp_path / "gap.pdb"))
    gap.save_xtc(str(tmp_path / "gap.xtc"))
    with pytest.raises(InputError, match=r"chain break between residues TRP 3 -> GLU 5 \(numbering skips 1 "
                                         r"residue\(s\); C-N [0-9.]+ A > 2.0 A\)"):
        extract_frames(tmp_path / "gap.pdb", [tmp_path / "gap.xtc"], tmp_path / "gap.h5", FramesConfig())
    entry = load_entries({"proteins": [{"name": "gap_A", "topology": str(tmp_path / "gap.pdb"),
                                        "trajectories": [str(tmp_path / "gap.xtc")], "split": "train"}]})[0]
    with pytest.raises(InputError, match="chain break between residues TRP 3 -> GLU 5"):
        prepare_start(entry, tmp_path)
    assert not (tmp_path / "gap_A.pdb").exists()


def test_manifest_csv_and_its_errors_name_the_row(solvated_md, tmp_path):
    manifest = tmp_path / "runs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "topology", "trajectories", "dt_ps", "split"])
        w.writerow(["pep_A", str(solvated_md["pdb"]), f"{solvated_md['nc']};{solvated_md['trr']}", "", "train"])
        w.writerow(["pep_B", str(solvated_md["pdb"]), str(solvated_md["dcd"]), "", "test"])
    with pytest.raises(ValueError, match=r"runs.csv row 3 \(pep_B\): .*run.dcd \(.dcd\) stores no frame times; set "
                                         r"dt_ps"):
        load_entries({"manifest": str(manifest)})
    manifest.write_text(manifest.read_text().replace(",,test", ",0.02,test"))
    entries = load_entries({"manifest": str(manifest)})
    assert [(e.name, len(e.trajectories), e.dt_ps, e.split) for e in entries] == \
        [("pep_A", 2, None, "train"), ("pep_B", 1, 0.02, "test")]
    with pytest.raises(ValueError, match=r"local.proteins\[0\] \(pep_A\): no such file .*missing.xtc"):
        load_entries({"proteins": [{"name": "pep_A", "topology": str(solvated_md["pdb"]),
                                    "trajectories": ["missing.xtc"], "split": "train"}]})
    with pytest.raises(ValueError, match=r"local.proteins\[0\]: unknown key\(s\) \['trajectory'\]"):
        load_entries({"proteins": [{"name": "pep_A", "topology": "x", "trajectory": "y", "split": "train"}]})


def test_cli_names_a_trajectory_that_does_not_fit_the_topology(solvated_md, tmp_path, capsys):
    other = tmp_path / "other.pdb"
    solvated_md["traj"][0].atom_slice(np.arange(30)).save_pdb(str(other))
    cfg = json.dumps({"proteins": [{"name": "pep_A", "topology": str(other),
                                    "trajectories": [str(solvated_md["nc"])], "split": "train"}]})
    assert starmd_main(["prepare-local", "start", "--name", "pep_A", "--out", str(tmp_path),
                        "--config-json", cfg]) == 1
    err = capsys.readouterr().err
    assert "run.nc: unreadable trajectory of local.proteins[0] (pep_A)" in err


def test_snakemake_turns_a_local_manifest_into_splits_and_frames(solvated_md, tmp_path):
    import yaml
    from test_workflow import _copy_workflow, _jobs, _snakemake

    work = _copy_workflow(tmp_path)
    md_files = {k: str(v) for k, v in solvated_md.items() if k != "traj"}
    config = {"dataset": "local", "run": "mine", "features": {"featurizer": "offline"}, "frames": {"stride": 1},
              "local": {"proteins": [
                  {"name": "pep_A", "topology": md_files["pdb"], "trajectories": md_files["nc"], "split": "train"},
                  {"name": "pep_B", "topology": md_files["pdb"], "trajectories": [md_files["dcd"], md_files["trr"],
                                                                                  md_files["nc"]],
                   "dt_ps": 0.02, "split": "test"}]}}
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    _snakemake(work, "data/splits/test.txt", "data/frames/pep_A.h5", "data/frames/pep_B.h5", "--configfile",
               "mine.yaml")
    assert (work / "data/splits/train.txt").read_text() == "pep_A\n"
    assert (work / "data/splits/test.txt").read_text() == "pep_B\n"
    a, b = read_frames(work / "data/frames/pep_A.h5"), read_frames(work / "data/frames/pep_B.h5")
    assert sorted(a["replicas"]) == ["R1"] and sorted(b["replicas"]) == ["R1", "R2", "R3"]
    assert a["attrs"]["sequence"] == b["attrs"]["sequence"] == SEQUENCE
    assert b["attrs"]["provenance"]["removed_residues"]["HOH"] > 100
    assert "HOH" in (work / "logs/prepare_local/pep_B_start.log").read_text()
    config["local"]["proteins"].append(  # one protein more: the splits and its own jobs rerun, not pep_A's, pep_B's
        {"name": "pep_C", "topology": md_files["pdb"], "trajectories": md_files["trr"], "split": "val"})
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    out = _snakemake(work, "-n", "data/splits/test.txt", *(f"data/frames/pep_{p}.h5" for p in "ABC"),
                     "--configfile", "mine.yaml").stdout
    assert _jobs(out) == {"prepare_local_start": 1, "prepare_local_replica": 1, "extract_frames": 1,
                          "make_splits": 1}, out
    assert "name=pep_A" not in out and "name=pep_B" not in out  # no job of the proteins done
    config["local"]["proteins"][1]["trajectories"] = md_files["nc"]  # one replica cannot serve as reference + oracle
    (work / "mine.yaml").write_text(yaml.safe_dump(config))
    proc = _snakemake(work, "--configfile", "mine.yaml", "-n", check=False)
    assert proc.returncode != 0 and "test protein pep_B has replicas ['R1'], but evaluation.oracle_replica" in \
        proc.stderr
