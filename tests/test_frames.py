"""extract-frames: backbone frames of a real OpenMM demo run, the HDF5 contract, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import pytest
import torch

from starmd.data import frames
from starmd.data.frames import FramesConfig, extract_frames, read_frames
from starmd.geometry import Rigid
from starmd.io import sha256sum


@pytest.fixture(scope="module")
def frames_h5(demo_protein, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frames") / f"{demo_protein.name}.h5"
    return extract_frames(demo_protein.pdb, demo_protein.xtcs, out, FramesConfig(stride=1))


def _backbone_nm(traj: md.Trajectory) -> np.ndarray:
    """[T, N, 3 (N, CA, C), 3] in nm, looked up by atom name independently of the code under test."""
    idx = [[traj.topology.select(f"resid {r.index} and name {a}")[0] for a in ("N", "CA", "C")]
           for r in traj.topology.residues]
    return traj.xyz[:, np.array(idx)]


def _backbone_angstrom(traj: md.Trajectory) -> np.ndarray:
    return _backbone_nm(traj).astype(np.float64) * 10.0


def test_schema_shapes_dtypes_and_attrs(frames_h5, demo_protein):
    with h5py.File(frames_h5) as f:
        a = f.attrs
        assert (a["name"], a["sequence"], a["n_residues"], a["stride"], a["format_version"]) == \
            (demo_protein.name, "GAWKEA", 6, 1, 1)
        assert a["dt_ps"] == pytest.approx(0.2)
        assert f["aatype"].dtype == np.int8 and f["aatype"][()].tolist() == [7, 0, 17, 11, 6, 0]
        assert f["residue_index"].dtype == np.int32 and f["residue_index"][()].tolist() == [1, 2, 3, 4, 5, 6]
        assert f["start/rotations"].shape == (6, 3, 3) and f["start/translations"].shape == (6, 3)
        assert sorted(f["replicas"]) == ["R1", "R2", "R3"]
        for r in ("R1", "R2", "R3"):
            g = f["replicas"][r]
            assert g["rotations"].shape == (6, 6, 3, 3) and g["rotations"].dtype == np.float32
            assert g["translations"].shape == (6, 6, 3) and g["translations"].dtype == np.float32
            assert g["time_ps"].dtype == np.float64
            np.testing.assert_allclose(g["time_ps"][()], [0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
        sources = json.loads(a["source_sha256"])
        assert sources == {p.name: sha256sum(p) for p in [demo_protein.pdb, *demo_protein.xtcs]}
        provenance = json.loads(a["provenance"])
        assert provenance["replica_seeds"] == [11, 12, 13] and provenance["sequence"] == "GAWKEA"


def test_frames_are_orthonormal_and_rebuild_the_backbone(frames_h5, demo_protein):
    data = read_frames(frames_h5)
    for k, xtc in enumerate(demo_protein.xtcs, start=1):
        bb = _backbone_angstrom(md.load(str(xtc), top=str(demo_protein.pdb)))  # [T, N, 3, 3]
        rots = data["replicas"][f"R{k}"]["rotations"].astype(np.float64)
        trans = data["replicas"][f"R{k}"]["translations"]
        np.testing.assert_allclose(rots @ np.swapaxes(rots, -1, -2), np.broadcast_to(np.eye(3), rots.shape),
                                   atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
        np.testing.assert_allclose(trans, bb[:, :, 1], atol=1e-4)  # translations are CA, in Angstrom
        rigid = Rigid(torch.from_numpy(rots), torch.from_numpy(trans.astype(np.float64)))
        local = rigid.unsqueeze(-1).invert_apply(torch.from_numpy(bb.astype(np.float64)))  # [T, N, 3, 3]
        # convention: CA at the origin, C on +x, N in the xy-plane with y > 0
        np.testing.assert_allclose(local[..., 1, :], 0.0, atol=1e-4)
        np.testing.assert_allclose(local[..., 2, 1:], 0.0, atol=1e-4)
        assert (local[..., 2, 0] > 1.3).all() and (local[..., 0, 1] > 1.0).all()
        np.testing.assert_allclose(local[..., 0, 2], 0.0, atol=1e-4)
        # rigid applied to the local backbone gives back N, CA, C
        np.testing.assert_allclose(rigid.unsqueeze(-1).apply(local).numpy(), bb, atol=1e-4)
    start_bb = _backbone_angstrom(md.load(str(demo_protein.pdb)))[0]
    np.testing.assert_allclose(data["start"]["translations"], start_bb[:, 1], atol=1e-4)


def test_hdf5_round_trip_is_exact(frames_h5, demo_protein, tmp_path):
    traj = md.load(str(demo_protein.xtcs[1]), top=str(demo_protein.pdb))
    rots, trans = frames.backbone_frames(_backbone_nm(traj), "x", ["r"] * 6)
    data = read_frames(frames_h5)
    np.testing.assert_array_equal(data["replicas"]["R2"]["rotations"], rots)
    np.testing.assert_array_equal(data["replicas"]["R2"]["translations"], trans)
    # same inputs -> same bytes (no timestamps in the file)
    again = extract_frames(demo_protein.pdb, demo_protein.xtcs, tmp_path / frames_h5.name, FramesConfig(1))
    assert again.read_bytes() == frames_h5.read_bytes()


def test_stride_keeps_every_kth_frame(frames_h5, demo_protein, tmp_path):
    out = extract_frames(demo_protein.pdb, demo_protein.xtcs, tmp_path / "s.h5", FramesConfig(stride=2))
    full, strided = read_frames(frames_h5), read_frames(out)
    assert strided["attrs"]["stride"] == 2 and strided["attrs"]["dt_ps"] == pytest.approx(0.4)
    for r in ("R1", "R2", "R3"):
        for key in ("rotations", "translations", "time_ps"):
            np.testing.assert_array_equal(strided["replicas"][r][key], full["replicas"][r][key][::2])


def test_cli_and_config_errors(demo_protein, tmp_path):
    out = tmp_path / "cli.h5"
    assert frames.main(["--pdb", str(demo_protein.pdb), "--xtc", *map(str, demo_protein.xtcs[:2]),
                        "--out", str(out), "--config-json", '{"stride": 3}']) == 0
    data = read_frames(out)
    assert data["attrs"]["name"] == "cli" and sorted(data["replicas"]) == ["R1", "R2"]
    assert data["replicas"]["R1"]["time_ps"].tolist() == [0.2, 0.8]
    with pytest.raises(ValueError, match="unknown key"):
        FramesConfig.from_json('{"strid": 2}')
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        FramesConfig.from_json('{"stride": 0}')


# --- bad inputs, each built by editing the real demo files with mdtraj ------------------------------------------

def _edited_pdb(demo_protein, tmp_path, edit) -> Path:
    start = md.load(str(demo_protein.pdb))
    start = edit(start)
    path = tmp_path / "edited" / demo_protein.pdb.name
    path.parent.mkdir(exist_ok=True)
    start.save_pdb(str(path))
    return path


def test_missing_backbone_atom_names_the_residue(demo_protein, tmp_path):
    def drop_c_of_glu5(t):
        return t.atom_slice(t.topology.select("not (resSeq 5 and name C)"))

    pdb = _edited_pdb(demo_protein, tmp_path, drop_c_of_glu5)
    with pytest.raises(ValueError, match=r"edited/tpep_A.pdb: GLU 5 has no C"):
        extract_frames(pdb, demo_protein.xtcs, tmp_path / "o.h5", FramesConfig())
    assert not (tmp_path / "o.h5").exists()


def test_unknown_residue_names_the_residue(demo_protein, tmp_path):
    def rename_trp3(t):
        t.topology.residue(2).name = "XYZ"
        return t

    pdb = _edited_pdb(demo_protein, tmp_path, rename_trp3)
    with pytest.raises(ValueError, match=r"tpep_A.pdb: residue XYZ 3 .*unknown residue 'XYZ'"):
        extract_frames(pdb, demo_protein.xtcs, tmp_path / "o.h5", FramesConfig())


def test_atom_count_mismatch_names_both_files(demo_protein, tmp_path):
    pdb = _edited_pdb(demo_protein, tmp_path, lambda t: t.atom_slice(t.topology.select("not element H")))
    with pytest.raises(ValueError, match=r"tpep_A_prod_R1_fit.xtc: 91 atoms, but .*edited/tpep_A.pdb has 4\d"):
        extract_frames(pdb, demo_protein.xtcs, tmp_path / "o.h5", FramesConfig())


def test_empty_trajectory_names_the_file(demo_protein, tmp_path):
    empty = tmp_path / "empty_R2.xtc"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty_R2.xtc: empty XTC trajectory \(0 bytes\)"):
        extract_frames(demo_protein.pdb, [demo_protein.xtcs[0], empty], tmp_path / "o.h5", FramesConfig())


def test_corrupted_frame_names_frame_and_residue(demo_protein, tmp_path):
    traj = md.load(str(demo_protein.xtcs[0]), top=str(demo_protein.pdb))
    ca4 = traj.topology.select("resSeq 4 and name CA")[0]
    traj.xyz[3, ca4] += 0.5  # 5 A: the CA of LYS 4 torn off its backbone in frame 3
    bad = tmp_path / "torn.xtc"
    traj.save_xtc(str(bad))
    with pytest.raises(ValueError, match=r"torn.xtc: frame 3, residue LYS 4"):
        extract_frames(demo_protein.pdb, [bad], tmp_path / "o.h5", FramesConfig())


def test_uneven_frame_times_are_rejected(demo_protein, tmp_path):
    traj = md.load(str(demo_protein.xtcs[0]), top=str(demo_protein.pdb))
    traj.time = np.array([0.2, 0.4, 0.6, 1.0, 1.2, 1.4])
    bad = tmp_path / "gap.xtc"
    traj.save_xtc(str(bad))
    with pytest.raises(ValueError, match=r"gap.xtc: frame times are not evenly spaced \(frame 2 -> 3"):
        extract_frames(demo_protein.pdb, [bad], tmp_path / "o.h5", FramesConfig())


def test_failure_mid_write_leaves_no_output(demo_protein, tmp_path, monkeypatch):
    out = tmp_path / "frames" / "p.h5"
    real, calls = h5py.Group.create_dataset, []

    def crash_on_replica_two(group, key, **kwargs):
        calls.append(key)
        if key.startswith("replicas/R2"):
            raise OSError("simulated disk full while writing R2")
        return real(group, key, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_on_replica_two)
    with pytest.raises(OSError, match="disk full"):
        extract_frames(demo_protein.pdb, demo_protein.xtcs, out, FramesConfig())
    assert "replicas/R1/rotations" in calls  # the crash really happened mid-file
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.attrs.__delitem__("dt_ps"), r"missing root attribute 'dt_ps'"),
        (lambda f: f.__delitem__("start/rotations"), r"start/rotations must be \[\d+, 3, 3\], got missing"),
        (lambda f: f.__delitem__("replicas/R2/time_ps"), r"replicas/R2/time_ps must be \[\d+\], got missing"),
        (lambda f: f.__delitem__("replicas"), r"no group 'replicas/R\*'"),
    ],
)
def test_every_reader_shares_one_schema_check(frames_h5, tmp_path, edit, message):
    """check_frames names the file and the key; read_frames (and training, rollout, evaluation) run it first."""
    broken = tmp_path / "broken.h5"
    broken.write_bytes(frames_h5.read_bytes())
    with h5py.File(broken, "r+") as f:
        edit(f)
    with pytest.raises(ValueError, match=rf"broken\.h5: {message}"):
        read_frames(broken)
    with h5py.File(frames_h5, "r") as f:
        assert frames.check_frames(f, frames_h5) == len(f.attrs["sequence"])
