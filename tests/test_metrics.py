"""Evaluation metrics on constructed inputs with known answers, and `python -m starmd evaluate` end to end."""

from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest

from starmd.evaluation import metrics as M
from starmd.evaluation.config import EvaluationConfig
from starmd.evaluation.evaluate import common_time_grid, decorrelation_lag

import eval_inputs as E


@pytest.fixture(scope="module")
def helix_backbone() -> np.ndarray:
    """[1, N, 4, 3] ideal all-atom helix backbone (PeptideBuilder)."""
    from starmd.evaluation.inputs import backbone_indices

    traj = E.helix_topology_traj()
    return traj.xyz[:, backbone_indices(traj.topology, "helix")].astype(np.float64) * 10.0


# --- Jensen-Shannon distance ----------------------------------------------------------------------------------------
def test_jsd_identical_is_zero_and_disjoint_is_sqrt_ln2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    assert np.allclose(M.jsd(x, x), 0.0, atol=1e-12)
    ref = np.array([0.0, 1.0] * 100)  # bins 1 and 50 of the [0, 1] reference range
    assert M.jsd(ref, np.full(200, 0.5)) == pytest.approx(math.sqrt(math.log(2)), abs=1e-3)  # inside, empty bin
    assert M.jsd(ref, np.full(200, 7.0)) == pytest.approx(math.sqrt(math.log(2)), abs=1e-3)  # overflow bin
    half = M.jsd(ref, np.array([0.0] * 100 + [0.5] * 100))
    assert 0.1 < half < math.sqrt(math.log(2)) - 0.1


def test_jsd_per_column_and_bad_shapes():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(400, 2))
    gen = np.stack([ref[:, 0], ref[:, 1] + 10.0], axis=1)
    out = M.jsd(ref, gen)
    assert out.shape == (2,) and out[0] == pytest.approx(0, abs=1e-12) and out[1] > 0.8
    with pytest.raises(ValueError, match="equal columns"):
        M.jsd(ref, gen[:, :1])


# --- validity -------------------------------------------------------------------------------------------------------
def test_ca_validity_catches_planted_clash_and_break():
    ca = E.ideal_helix_ca(20)
    assert np.linalg.norm(ca[1] - ca[0]) == pytest.approx(3.83, abs=0.01)
    clash = ca.copy()
    clash[12] = clash[5] + np.array([1.0, 1.0, 0.0])  # non-adjacent pair 1.4 A apart
    brk = ca.copy()
    brk[10:] += (brk[10] - brk[9]) / np.linalg.norm(brk[10] - brk[9]) * 1.0  # CA 9-10 now 4.83 A
    frames = np.stack([ca, clash, brk])
    assert M.ca_clash(frames).tolist() == [False, True, False]
    assert M.ca_break(frames).tolist() == [False, True, True]  # moving residue 12 also breaks 11-12 and 12-13
    assert M.ca_valid(frames).tolist() == [True, False, False]
    assert M.ca_valid(frames[[0, 2]], break_A=5.0).tolist() == [True, True]  # the threshold is honoured


def test_backbone_validity_catches_stretched_peptide_bond_and_clash(helix_backbone):
    bb = helix_backbone[0]
    assert M.peptide_bond_lengths(helix_backbone).max() < 1.4
    stretched = bb.copy()
    shift = bb[8, 0] - bb[7, 2]
    stretched[8:] += shift / np.linalg.norm(shift) * 0.3  # C(7)-N(8) 1.33 -> 1.63 A
    clash = bb.copy()
    clash[15, 3] = clash[3, 0] + np.array([0.0, 0.0, 1.0])  # O of residue 15 onto N of residue 3
    frames = np.stack([bb, stretched, clash])
    assert M.backbone_valid(frames).tolist() == [True, False, False]
    assert M.backbone_clash(frames).tolist() == [False, False, True]
    assert M.ca_aa_valid(frames).tolist() == [True, False, False]
    assert M.backbone_valid(frames[:2], peptide_bond_max_A=1.7).tolist() == [True, True]


# --- alignment, ensembles -------------------------------------------------------------------------------------------
def _rotated_copies(ca: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    rots = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()  # [n, 3, 3]
    return np.einsum("nij,kj->nki", rots, ca) + rng.normal(size=(n, 1, 3)) * 5.0


def test_superpose_undoes_rigid_motion_and_rmsf_r_with_itself_is_one():
    rng = np.random.default_rng(2)
    ca = E.ideal_helix_ca(16)
    moved = _rotated_copies(ca, 5, rng)
    assert np.allclose(M.superpose(moved, ca), ca[None], atol=1e-3)
    assert np.allclose(M.rmsd_to(moved, ca), 0.0, atol=1e-2)  # mdtraj QCP runs in float32
    traj = ca[None] + rng.normal(size=(50, 16, 3)) * np.linspace(0.2, 2.0, 16)[None, :, None]
    rmsf = M.rmsf(traj, ca)
    assert np.all(np.diff(rmsf[2:-2]) > -0.3)  # grows along the chain as constructed
    assert M.pearson_r(rmsf, M.rmsf(traj, ca)) == pytest.approx(1.0)
    assert M.pc1_cosine(traj, traj) == pytest.approx(1.0)


def test_recall_precision_on_subsets():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(2000, 2))
    edges = M.grid_edges(ref, 10)
    assert M.recall_precision(ref, ref, edges) == (1.0, 1.0)
    left = ref[ref[:, 0] < 0]  # half the reference
    recall, precision = M.recall_precision(ref, left, edges)
    assert 0.3 < recall < 0.7 and precision == 1.0
    recall, precision = M.recall_precision(ref, np.concatenate([ref, ref + 100.0]), edges)  # off-grid frames
    assert recall == 1.0 and precision < 1.0


def test_w2_pairwise_rmsd_and_autocorrelation_known_values():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 2))
    assert M.w2_empirical(a, a, 500, rng) == pytest.approx(0.0, abs=1e-12)
    assert M.w2_empirical(a, a + np.array([3.0, 4.0]), 500, rng) == pytest.approx(5.0, abs=1e-9)  # pure shift
    ca = E.ideal_helix_ca(12)
    assert M.mean_pairwise_rmsd(_rotated_copies(ca, 6, rng), 200, rng) == pytest.approx(0.0, abs=1e-2)  # float32
    x = np.zeros(20000)
    for t in range(1, len(x)):
        x[t] = 0.9 * x[t - 1] + rng.normal()
    acf = M.autocorrelation(x, 5)
    assert np.allclose(acf, 0.9 ** np.arange(6), atol=0.03)
    assert np.all(np.abs(M.autocorrelation(x[:30], 29)) <= 1 + 1e-12)  # bounded even where few pairs remain
    assert decorrelation_lag(acf) == 5 and decorrelation_lag(M.autocorrelation(x, 20)) == 10  # 0.9^10 < 1/e


def test_distance_pairs_and_time_grid():
    pairs = M.distance_pairs(10, 4)
    assert len(pairs) == 21 and np.all(pairs[:, 1] - pairs[:, 0] >= 4)
    assert len(M.distance_pairs(100, 4, max_pairs=50)) == 50
    assert common_time_grid(20.0, 10.0) == (1, 2, 20.0)  # subsample the reference
    assert common_time_grid(10.0, 40.0) == (4, 1, 40.0)  # subsample the rollout
    assert common_time_grid(10.0, 10.0) == (1, 1, 10.0)
    with pytest.raises(ValueError, match="integer multiples"):
        common_time_grid(15.0, 10.0)


def test_config_rejects_unknown_and_mistyped_keys():
    assert EvaluationConfig.from_json('{"jsd_bins": 30}').jsd_bins == 30
    with pytest.raises(ValueError, match="jsd_binz"):
        EvaluationConfig.from_json('{"jsd_binz": 30}')
    with pytest.raises(ValueError, match="ca_clash_A"):
        EvaluationConfig.from_json('{"ca_clash_A": "3"}')
    with pytest.raises(ValueError, match="grid_bins=0 must be > 0"):
        EvaluationConfig.from_json('{"grid_bins": 0}')
    with pytest.raises(ValueError, match="oracle_replica"):
        EvaluationConfig.from_json('{"oracle_replica": "R1"}')


# --- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Constructed reference (3 replicas), a rollout at twice the reference spacing, and its eval JSON."""
    from starmd.evaluation.cli import main

    root = tmp_path_factory.mktemp("eval")
    raw_dir, frames = E.write_reference(root, n_stored=800)
    rollout = E.write_rollout(root, n_frames=200, delta_t_ps=20.0)
    out = root / "eval" / "helix.json"
    argv = ["--name", "helix", "--rollout", str(rollout), "--frames", str(frames), "--raw-dir", str(raw_dir),
            "--out", str(out), "--config-json", json.dumps({"tica_lag": 5, "seed": 3})]
    assert main(argv) == 0
    return root, argv, out, json.loads(out.read_text())


def test_evaluate_oracle_beats_noise_baseline(evaluated):
    _, _, _, result = evaluated
    m = result["metrics"]
    for key in ("jsd_pca", "jsd_tica", "jsd_radius_of_gyration", "w2_pca_A", "acf_pc1_mae", "ca_break_fraction"):
        assert m[key]["oracle"] < m[key]["baseline_noise"], key
        assert "baseline_noise" not in m[key]["oracle_not_separated_from"], key
    for key in ("recall_pca", "ca_validity", "ca_aa_validity", "pc1_cosine"):
        assert m[key]["oracle"] > m[key]["baseline_noise"], key
    # the replica baseline is MD in random order: only the dynamics metric can separate the oracle from it
    assert "baseline_replica" not in m["acf_pc1_mae"]["oracle_not_separated_from"]
    assert m["acf_pc1_mae"]["oracle"] < 0.5 * m["acf_pc1_mae"]["baseline_replica"]
    # noise matched to the reference RMSF reproduces the RMSF profile: the flag must say so
    assert "baseline_noise" in m["rmsf_pearson_r"]["oracle_not_separated_from"]
    assert m["jsd_pca"]["reference"] == pytest.approx(0.0, abs=1e-9)
    assert m["pairwise_rmsd_abs_error_A"]["reference"] == 0.0 and m["w2_pca_A"]["reference"] == 0.0
    assert m["recall_pca"]["reference"] == 1.0 and m["rmsf_pearson_r"]["reference"] == pytest.approx(1.0)
    assert m["ca_validity"]["model"] == 1.0 and m["ca_aa_validity"]["baseline_noise"] < 0.1


def test_evaluate_records_time_grid_and_curves(evaluated):
    _, _, _, result = evaluated
    assert result["time_grid"] == {"spacing_ps": 20.0, "generated_delta_t_ps": 20.0, "reference_dt_ps": 10.0,
                                   "generated_stride": 1, "reference_stride": 2}
    assert result["tica"]["lag_frames"] == 5 and result["tica"]["lag_ps"] == 100.0
    assert result["ensembles"]["reference"]["n_frames"] == 400 and result["ensembles"]["model"]["n_frames"] == 400
    curves = result["curves"]
    assert curves["time"]["model"]["time_ps"][:2] == [20.0, 40.0] and len(curves["time"]["model"]["time_ps"]) == 200
    assert curves["time"]["oracle"]["time_ps"][:2] == [0.0, 20.0]
    assert result["rollout_start_rmsd_to_pdb_start_A"] == pytest.approx(0.0, abs=0.03)  # float32 QCP
    assert len(curves["rmsf"]["reference"]) == len(E.SEQUENCE) == len(curves["rmsf"]["residue_index"])
    hist = np.array(curves["pca"]["hist"]["reference"])
    assert hist.shape == (20, 20) and hist.sum() == 400
    assert curves["autocorrelation"]["reference"][0] == pytest.approx(1.0)


def test_evaluate_is_deterministic(evaluated):
    from starmd.evaluation.cli import main

    _, argv, out, _ = evaluated
    first = out.read_bytes()
    assert main(argv) == 0
    assert out.read_bytes() == first


def test_evaluate_bad_inputs_name_file_and_key(evaluated, tmp_path):
    from starmd.evaluation.cli import main

    root, argv, _, _ = evaluated
    rollout = root / "rollouts" / "helix.h5"
    broken = tmp_path / "helix.h5"
    with h5py.File(rollout, "r") as src, h5py.File(broken, "w") as dst:
        dst["translations"] = src["translations"][()]
        dst.attrs.update(src.attrs)
    with pytest.raises(ValueError, match=r"helix\.h5.*time_ps"):
        main(argv[:2] + ["--rollout", str(broken)] + argv[4:])
    with pytest.raises(ValueError, match="R9"):
        main(argv[:-1] + ['{"reference_replica": "R9"}'])
    frames = tmp_path / "frames.h5"
    shutil.copy(root / "frames" / "helix.h5", frames)
    with h5py.File(frames, "a") as h5:
        h5.attrs["stride"] = 1  # the raw xtc holds 2 raw frames per stored frame
    with pytest.raises(ValueError, match=r"helix_prod_R1_fit\.xtc.*frames\.h5"):
        main(argv[:4] + ["--frames", str(frames)] + argv[6:])


def test_schema_fragment_matches_config(repo_root):
    import dataclasses

    import jsonschema
    import yaml

    schema = yaml.safe_load((repo_root / "schemas" / "evaluation.schema.yaml").read_text())
    defaults = EvaluationConfig().as_dict()
    assert {k: v["default"] for k, v in schema["properties"].items()} == defaults
    assert all(v.get("description") for v in schema["properties"].values())
    jsonschema.validate(defaults, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "jsd_binz": 3}, schema)
    assert len(dataclasses.fields(EvaluationConfig)) == len(schema["properties"])
