"""Offline featurizer and the features HDF5: schema, content, determinism and SE(3) invariance."""

from __future__ import annotations

import json

import h5py
import mdtraj as md
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from starmd.features import cli, get_featurizer, offline
from starmd.features.io import check_features, read_features, write_features
from starmd.features.offline import OfflineSettings, structure_features

FEATURES_CFG = {"featurizer": "offline", "offline": {}}


def _run_cli(pdb, out, cfg=FEATURES_CFG, name="tpep_A"):
    return cli.main(["--featurizer", "offline", "--name", name, "--pdb", str(pdb), "--out", str(out),
                     "--config-json", json.dumps(cfg)])


def _moved(structure: md.Trajectory, seed: int, mirror: bool = False) -> md.Trajectory:
    rot = Rotation.random(random_state=seed).as_matrix()
    if mirror:
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    xyz = structure.xyz[0].astype(np.float64) @ rot.T + np.array([3.0, -1.5, 0.7])  # nm
    return md.Trajectory(xyz[None].astype(np.float32), structure.topology)


def test_cli_writes_schema_shapes_and_attrs(demo_protein, tmp_path):
    out = tmp_path / "offline" / "tpep_A.h5"
    assert _run_cli(demo_protein.pdb, out) == 0
    feats = read_features(out)
    s = OfflineSettings()
    assert feats["single"].shape == (6, s.c_s) == (6, 21 + 32 + 9 + 2)
    assert feats["pair"].shape == (6, 6, s.c_z) == (6, 6, 65 + 16 + 12)
    assert feats["single"].dtype == np.float32 and feats["pair"].dtype == np.float32
    attrs = feats["attrs"]
    assert (attrs["featurizer"], attrs["sequence"], attrs["name"]) == ("offline", "GAWKEA", "tpep_A")
    assert (attrs["c_s"], attrs["c_z"]) == (s.c_s, s.c_z)
    assert json.loads(attrs["settings"])["relpos_clip"] == 32 and len(attrs["pdb_sha256"]) == 64


def test_feature_blocks_mean_what_they_say(demo_protein):
    structure = md.load(str(demo_protein.pdb))
    s = OfflineSettings(relpos_clip=2)
    single, pair, sequence = structure_features(structure, s, "pdb")
    assert sequence == "GAWKEA"
    assert single[:, :21].argmax(-1).tolist() == [7, 0, 17, 11, 6, 0] and (single[:, :21].sum(-1) == 1).all()
    relpos = pair[..., :5]  # clip 2 -> offsets -2..2
    assert relpos[0, 1].tolist() == [0, 0, 0, 1, 0] and relpos[0, 5].tolist() == [0, 0, 0, 0, 1]
    assert relpos[4, 0].tolist() == [1, 0, 0, 0, 0] and relpos[3, 3].tolist() == [0, 0, 1, 0, 0]
    rbf, rots, direction = pair[..., 5:21], pair[..., 21:30].reshape(6, 6, 3, 3), pair[..., 30:33]
    ca = structure.xyz[0, structure.topology.select("name CA")] * 10.0
    dist = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    centres = np.linspace(2.0, 22.0, 16)
    assert (np.abs(centres[rbf[0, 1:].argmax(-1)] - dist[0, 1:]) <= (centres[1] - centres[0]) / 2 + 1e-4).all()
    np.testing.assert_allclose(rots[np.arange(6), np.arange(6)], np.broadcast_to(np.eye(3), (6, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(rots @ np.swapaxes(rots, -1, -2), np.broadcast_to(np.eye(3), rots.shape), atol=1e-5)
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(np.linalg.norm(direction[off], axis=-1), 1.0, atol=1e-5)
    assert (direction[~off] == 0).all()
    # dihedral masks: no phi at the N-terminus, no psi/omega at the C-terminus
    masks = single[:, 21 + 32 + 6: 21 + 32 + 9]
    assert masks[:, 0].tolist() == [0, 1, 1, 1, 1, 1] and masks[:, 1].tolist() == [1, 1, 1, 1, 1, 0]
    phi = np.degrees(md.compute_phi(structure)[1][0])
    np.testing.assert_allclose(np.degrees(np.arctan2(single[1:, 53], single[1:, 54])), phi, atol=1e-3)
    without_local = structure_features(structure, OfflineSettings(local_structure=False), "pdb")[0]
    assert without_local.shape == (6, 21 + 32)


def test_features_are_bytewise_deterministic(demo_protein, tmp_path):
    a, b = tmp_path / "a" / "p.h5", tmp_path / "b" / "p.h5"
    assert _run_cli(demo_protein.pdb, a) == 0 and _run_cli(demo_protein.pdb, b) == 0
    assert a.read_bytes() == b.read_bytes()


def test_features_are_se3_invariant_not_mirror_invariant(demo_protein):
    structure = md.load(str(demo_protein.pdb))
    single, pair, _ = structure_features(structure, OfflineSettings(), "pdb")
    for seed in (0, 1):
        s2, p2, _ = structure_features(_moved(structure, seed), OfflineSettings(), "moved")
        np.testing.assert_allclose(s2, single, atol=2e-5)
        np.testing.assert_allclose(p2, pair, atol=2e-5)
    # a reflection is not in SE(3): chirality-sensitive blocks (dihedral signs, orientations) must change
    s3, p3, _ = structure_features(_moved(structure, 0, mirror=True), OfflineSettings(), "mirror")
    assert np.abs(s3 - single).max() > 0.5 and np.abs(p3 - pair).max() > 0.5


def test_rotated_translated_pdb_gives_the_same_features(demo_protein, tmp_path):
    moved = tmp_path / "moved.pdb"
    _moved(md.load(str(demo_protein.pdb)), seed=3).save_pdb(str(moved))
    assert _run_cli(demo_protein.pdb, tmp_path / "orig.h5") == 0 and _run_cli(moved, tmp_path / "moved.h5") == 0
    orig, rot = read_features(tmp_path / "orig.h5"), read_features(tmp_path / "moved.h5")
    # PDB coordinates are rounded to 1e-3 A, so the features agree to that precision, not to the bit
    np.testing.assert_allclose(rot["single"], orig["single"], atol=5e-3)
    np.testing.assert_allclose(rot["pair"], orig["pair"], atol=5e-3)


def test_registry_and_cli_errors(demo_protein, tmp_path):
    assert get_featurizer("offline") is offline.featurize
    with pytest.raises(ValueError, match="unknown featurizer 'nope'"):
        get_featurizer("nope")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['ofline'\]"):
        _run_cli(demo_protein.pdb, tmp_path / "x.h5", {"ofline": {}})
    with pytest.raises(ValueError, match=r"features.offline: unknown key\(s\) \['n_rbfs'\]"):
        _run_cli(demo_protein.pdb, tmp_path / "x.h5", {"offline": {"n_rbfs": 3}})
    with pytest.raises(ValueError, match="differs from the 'GAWKEA'"):
        offline.featurize(name="p", sequence="GAWKEE", pdb_path=demo_protein.pdb, cfg={})
    assert not (tmp_path / "x.h5").exists()


def test_write_features_enforces_the_schema(tmp_path):
    single, pair = np.zeros((3, 4), np.float32), np.zeros((3, 3, 2), np.float16)
    attrs = {"featurizer": "t", "sequence": "AAA", "meta": {"b": 1}}
    out = write_features(tmp_path / "ok.h5", single, pair, attrs)
    back = read_features(out)
    assert back["pair"].dtype == np.float16 and (back["attrs"]["c_s"], back["attrs"]["c_z"]) == (4, 2)
    assert json.loads(back["attrs"]["meta"]) == {"b": 1}
    with pytest.raises(ValueError, match=r"miss \['sequence'\]"):
        write_features(tmp_path / "bad.h5", single, pair, {"featurizer": "t"})
    with pytest.raises(ValueError, match="single must be .* float32"):
        write_features(tmp_path / "bad.h5", single.astype(np.float64), pair, attrs)
    with pytest.raises(ValueError, match=r"single must be \[N=4"):
        write_features(tmp_path / "bad.h5", single, pair, {**attrs, "sequence": "AAAA"})
    with pytest.raises(ValueError, match=r"pair must be \[N=3"):
        write_features(tmp_path / "bad.h5", single, np.zeros((3, 4, 2), np.float32), attrs)
    with pytest.raises(ValueError, match="c_s.*disagrees"):
        write_features(tmp_path / "bad.h5", single, pair, {**attrs, "c_s": 5})
    with pytest.raises(ValueError, match="non-finite"):
        write_features(tmp_path / "bad.h5", np.full((3, 4), np.nan, np.float32), pair, attrs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    real = h5py.Group.create_dataset

    def crash_on_pair(group, key, **kwargs):
        if key == "pair":
            raise OSError("simulated disk full")
        return real(group, key, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_on_pair)
    with pytest.raises(OSError, match="disk full"):
        write_features(tmp_path / "f.h5", np.zeros((2, 3), np.float32), np.zeros((2, 2, 1), np.float32),
                       {"featurizer": "t", "sequence": "AA"})
    assert list(tmp_path.iterdir()) == []


def test_check_features_names_the_file_and_the_bad_shape(tmp_path):
    """The one schema check the readers share: a pair that is not [N, N, c_z] is refused by name."""
    good, bad = tmp_path / "good.h5", tmp_path / "bad.h5"
    for path, pair_shape in ((good, (3, 3, 2)), (bad, (3, 4, 2))):
        with h5py.File(path, "w") as f:
            f["single"] = np.zeros((3, 5), np.float32)
            f["pair"] = np.zeros(pair_shape, np.float32)
    with h5py.File(good, "r") as f:
        assert check_features(f, good) == (3, 5, 2)
    with pytest.raises(ValueError, match=r"bad\.h5: expected single \[N, c_s\] and pair \[N, N, c_z\].*\(3, 4, 2\)"):
        read_features(bad)
