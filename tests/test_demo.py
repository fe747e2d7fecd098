"""prepare-demo: a real OpenMM run lands on disk in ATLAS shape, reproducibly, and only when complete."""

from __future__ import annotations

import json
import re

import mdtraj as md
import numpy as np
import pytest

from conftest import DEMO_TEST_CONFIG
from starmd.data import demo
from starmd.data.demo import DemoConfig, prepare_demo


def test_demo_has_atlas_shape_and_provenance(demo_protein):
    files = sorted(p.name for p in demo_protein.raw_dir.iterdir())
    assert files == sorted([demo_protein.pdb.name, *(x.name for x in demo_protein.xtcs), "provenance.json"])
    start = md.load(str(demo_protein.pdb))
    assert [r.name for r in start.topology.residues] == ["GLY", "ALA", "TRP", "LYS", "GLU", "ALA"]
    assert all(r.is_protein for r in start.topology.residues)
    assert start.topology.select("element H").size > 0  # pdbfixer/Modeller added hydrogens
    assert start.topology.select("name OXT").size == 1  # C-terminus completed
    prov = json.loads((demo_protein.raw_dir / "provenance.json").read_text())
    for key in ("forcefield", "implicit_solvent", "temperature_k", "timestep_fs", "hydrogen_mass_amu",
                "friction_per_ps", "frame_interval_ps", "production_ps", "equilibration_ps", "replica_seeds", "engine"):
        assert key in prov, key
    assert prov["replica_seeds"] == [11, 12, 13] and prov["engine"].startswith("OpenMM")
    assert prov["n_atoms"] == start.n_atoms


def test_replicas_are_fitted_distinct_md(demo_protein):
    start = md.load(str(demo_protein.pdb))
    backbone = start.topology.select("backbone")
    trajs = [md.load(str(x), top=str(demo_protein.pdb)) for x in demo_protein.xtcs]
    for traj in trajs:
        assert traj.n_frames == 6 and traj.n_atoms == start.n_atoms
        np.testing.assert_allclose(traj.time, [0.2, 0.4, 0.6, 0.8, 1.0, 1.2], atol=1e-4)
        # fitted: superposing again onto the start structure moves the backbone by no more than xtc precision
        again = md.Trajectory(traj.xyz.copy(), traj.topology).superpose(start, 0, atom_indices=backbone)
        assert np.abs(again.xyz[:, backbone] - traj.xyz[:, backbone]).max() < 2e-3
        # it moved (real dynamics), but stayed a peptide (no explosion)
        rmsd = md.rmsd(traj, start, 0, atom_indices=backbone)
        assert (rmsd > 0.005).all() and (rmsd < 0.5).all()
    # distinct seeds -> distinct trajectories
    assert np.abs(trajs[0].xyz - trajs[1].xyz).max() > 0.01


def test_same_seed_reproduces_bytes(demo_protein, tmp_path):
    cfg = DemoConfig(**{**DEMO_TEST_CONFIG, "replica_seeds": [11], "production_ps": 0.4})
    out = prepare_demo(demo_protein.name, tmp_path / demo_protein.name, cfg)
    assert (out / demo_protein.pdb.name).read_bytes() == demo_protein.pdb.read_bytes()
    ours = md.load(str(out / f"{demo_protein.name}_prod_R1_fit.xtc"), top=str(demo_protein.pdb))
    ref = md.load(str(demo_protein.xtcs[0]), top=str(demo_protein.pdb))
    np.testing.assert_array_equal(ours.xyz, ref.xyz[:2])
    # the start structure does not depend on the OpenMM thread count (trajectories may, by summation order)
    threaded = prepare_demo(demo_protein.name, tmp_path / "threads2" / demo_protein.name, cfg, threads=2)
    assert (threaded / demo_protein.pdb.name).read_bytes() == demo_protein.pdb.read_bytes()


def test_cli_runs_and_logs_progress(tmp_path, caplog):
    cfg = {**DEMO_TEST_CONFIG, "replica_seeds": [5], "production_ps": 0.4, "log_every_ps": 0.2,
           "proteins": [{"name": "cli_A", "sequence": "AKA", "split": "test"}]}
    with caplog.at_level("INFO", logger="starmd.data.demo"):
        assert demo.main(["--name", "cli_A", "--out-dir", str(tmp_path / "cli_A"),
                          "--config-json", json.dumps(cfg)]) == 0
    traj = md.load(str(tmp_path / "cli_A" / "cli_A_prod_R1_fit.xtc"), top=str(tmp_path / "cli_A" / "cli_A.pdb"))
    assert traj.n_frames == 2 and np.allclose(traj.time, [0.2, 0.4])
    # a progress line per log_every_ps of production, with the simulated and total ps and a positive speed
    progress = [re.fullmatch(r"cli_A R1: (\d\.\d)/0\.4 ps, (\d+\.\d) ns/day", r.getMessage())
                for r in caplog.records if "ns/day" in r.getMessage()]
    assert [m[1] for m in progress] == ["0.2", "0.4"] and all(float(m[2]) > 0 for m in progress)
    provenance = json.loads((tmp_path / "cli_A" / "provenance.json").read_text())
    assert provenance["replicas"][0]["ns_per_day"] > 0 and provenance["n_frames_per_replica"] == 2


@pytest.mark.parametrize("override, message", [
    ({"temperatur_k": 300}, "unknown key"),
    ({"frame_interval_ps": 0.01}, "multiple of timestep_fs"),
    ({"replica_seeds": [0, 1, 2]}, "distinct integers >= 1"),
    ({"replica_seeds": [3, 3, 4]}, "distinct integers >= 1"),
    ({"production_ps": 0.1}, "shorter than one frame"),
])
def test_bad_config_is_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig.from_json(json.dumps({**DEMO_TEST_CONFIG, **override}))


def test_unknown_protein_or_sequence_is_rejected():
    cfg = DemoConfig(**DEMO_TEST_CONFIG)
    with pytest.raises(ValueError, match="'nope_A' is not in demo.proteins"):
        cfg.protein("nope_A")
    bad = DemoConfig(**{**DEMO_TEST_CONFIG, "proteins": [{"name": "b_A", "sequence": "GAXZ", "split": "train"}]})
    with pytest.raises(ValueError, match="outside the 20 amino acids"):
        bad.protein("b_A")


def test_failed_replica_writes_no_output(tmp_path, monkeypatch):
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated OpenMM failure in R2")
        return real(*args, **kwargs)

    real = demo.run_replica
    monkeypatch.setattr(demo, "run_replica", crash_on_second)
    cfg = DemoConfig(**{**DEMO_TEST_CONFIG, "production_ps": 0.2})
    with pytest.raises(RuntimeError, match="R2"):
        prepare_demo("tpep_A", tmp_path / "tpep_A", cfg)
    assert list(tmp_path.iterdir()) == []
