"""generate: a checkpoint + a PDB alone (waters and an ion included, no MD) -> rollout files and a reference-free
report; a structure with a chain break is refused."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import pytest
import torch

from conftest import VILLIN
from starmd.__main__ import main as starmd_main
from starmd.features.offline import OfflineSettings
from starmd.model.network import StarMD
from starmd.training.checkpoint import save_checkpoint
from starmd.training.config import TrainingConfig
from starmd.training.optim import build_ema

MODEL = dict(c_s=16, c_z=8, n_blocks=1, n_heads=2, c_hidden=4, no_heads_ipa=2, c_hidden_ipa=4, no_qk_points=2,
             no_v_points=2, transition_n=1, c_time=8, c_phys_time=4, n_rbf=4, c_relative_time=4)
FEATURES = {"featurizer": "offline"}
N_RES = 10
ROLLOUT = {"n_frames": 4, "delta_t_ps": 10.0, "n_samples": 2, "steps": 2, "seed": 3, "progress_bar": False,
           "device": "cpu"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight checkpoint in the training format, sized for the offline featurizer."""
    settings = OfflineSettings.from_config(FEATURES)
    torch.manual_seed(0)
    model = StarMD(c_s_in=settings.c_s, c_z_in=settings.c_z, **MODEL)
    ema = build_ema(model, TrainingConfig())
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    save_checkpoint(path, {"step": 1, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": {},
                           "scheduler": {}, "rng": [], "world_size": 1,
                           "config": {"training": TrainingConfig(num_frames=2, strides=[1]).to_dict(),
                                      "model": MODEL, "diffusion": {"so3": {"num_sigma": 64, "num_omega": 256}},
                                      "features": {"c_s": settings.c_s, "c_z": settings.c_z}}})
    return path


@pytest.fixture(scope="module")
def wet_pdb(tmp_path_factory) -> Path:
    """The first N_RES residues of OpenMM's villin test structure with its crystal waters, plus a sodium ion."""
    full = md.load(str(VILLIN))
    keep = full.topology.select(f"(protein and resid 0 to {N_RES - 1}) or water")
    wet = full.atom_slice(keep)
    ion = md.Topology()
    ion.add_atom("NA", md.element.sodium, ion.add_residue("NA", ion.add_chain()))
    wet = wet.stack(md.Trajectory(np.array([[[0.0, 0.0, 0.0]]], dtype=np.float32), ion))
    path = tmp_path_factory.mktemp("pdb") / "wet.pdb"
    wet.save_pdb(str(path))
    return path


def test_generate_from_a_pdb_with_waters_and_ions(checkpoint, wet_pdb, tmp_path):
    out = tmp_path / "gen"
    rc = starmd_main(["generate", "--checkpoint", str(checkpoint), "--structure", str(wet_pdb), "--out-dir",
                      str(out), "--rollout-json", json.dumps(ROLLOUT), "--features-json", json.dumps(FEATURES)])
    assert rc == 0
    report = json.loads((out / "wet_report.json").read_text())
    assert report["removed_residues"]["HOH"] > 100 and report["removed_residues"]["NA"] == 1
    assert (report["n_samples"], report["n_frames"], report["n_residues"]) == (2, 4, N_RES)
    assert report["time_ps"] == [10.0, 20.0, 30.0, 40.0]
    assert len(report["ca_validity_over_time"]) == 4 and 0 <= report["ca_validity"] <= 1
    assert len(report["ca_rmsf"]) == N_RES and min(report["ca_rmsf"]) >= 0
    assert report["autocorrelation"]["rmsd_to_start"][0] == pytest.approx(1.0)
    assert report["autocorrelation"]["lag_ps"] == [0.0, 10.0, 20.0, 30.0]
    with h5py.File(out / "wet.h5") as h5:
        assert h5["translations"].shape == (2, 4, N_RES, 3) and h5.attrs["featurizer"] == "offline"
        ca = h5["translations"][()].astype(np.float64)
        validity = h5["validity"][()]
    np.testing.assert_allclose(report["ca_validity_over_time"], validity.mean(0))
    # each sample's XTC holds the rollout's CA atoms (nm in the file, Angstrom in the HDF5)
    ref = md.load(str(out / "wet.pdb"))
    for k in range(2):
        traj = md.load(str(out / f"wet_s{k}.xtc"), top=ref)
        assert traj.n_frames == 4 and traj.n_residues == N_RES
        np.testing.assert_allclose(traj.xyz[:, traj.topology.select("name CA")] * 10, ca[k], atol=2e-2)
    protein = md.load(str(out / "wet_input.pdb"))
    assert protein.n_residues == N_RES and "HOH" not in {r.name for r in protein.topology.residues}


def test_generate_refuses_a_chain_break(checkpoint, wet_pdb, tmp_path, capsys):
    full = md.load(str(wet_pdb))
    gap = full.atom_slice(full.topology.select("protein and not resid 4"))
    path = tmp_path / "gap.pdb"
    gap.save_pdb(str(path))
    rc = starmd_main(["generate", "--checkpoint", str(checkpoint), "--structure", str(path), "--out-dir",
                      str(tmp_path / "gen"), "--rollout-json", json.dumps(ROLLOUT)])
    err = capsys.readouterr().err
    assert rc == 1 and "gap.pdb: chain break between residues" in err and "numbering skips 1 residue(s)" in err
    assert not (tmp_path / "gen" / "gap.h5").exists()


def test_snakemake_generate_target_from_structures_folder(checkpoint, wet_pdb, tmp_path):
    """The `generate` rule, run for real: structures/{stem}.pdb + the run's checkpoint -> runs/{run}/generated/."""
    import shutil

    import yaml
    from test_workflow import _copy_workflow, _snakemake

    work = _copy_workflow(tmp_path)
    (work / "runs/gen/checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, work / "runs/gen/checkpoints/final.pt")
    (work / "structures").mkdir()
    shutil.copy(wet_pdb, work / "structures/mine.pdb")
    rollout = {**ROLLOUT, "delta_t_ps": 100.0}  # the workflow starts only with a trained Delta-t (paper: 100-400 ps)
    (work / "gen.yaml").write_text(yaml.safe_dump({"run": "gen", "features": FEATURES, "rollout": rollout}))
    proc = _snakemake(work, "runs/gen/generated/mine.h5", "--configfile", "gen.yaml")
    assert "rule generate:" in proc.stderr and "rule train:" not in proc.stderr  # the checkpoint is used as is
    report = json.loads((work / "runs/gen/generated/mine_report.json").read_text())
    assert (report["n_samples"], report["n_frames"], report["n_residues"]) == (2, 4, N_RES)
    with h5py.File(work / "runs/gen/generated/mine.h5") as h5:
        assert h5["translations"].shape == (2, 4, N_RES, 3)
