"""The known-answer system: its exact integrator, its statistics against the closed forms, the files it writes, and
the evaluation rows that score against them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.integrate

from starmd.data.synthetic import (SyntheticConfig, build_chain, ca_projections, mode_system, prepare_synthetic,
                                   simulate, stationary_samples, truth)
from starmd.evaluation.truth import mode_acf, mode_projections, truth_section


@pytest.fixture(scope="module")
def system():
    cfg = SyntheticConfig(truth_mc_samples=400)
    traj = build_chain(cfg)
    return cfg, traj, mode_system(traj, cfg)


def test_default_system_is_protein_like_with_underdamped_slow_and_overdamped_fast_modes(system):
    cfg, traj, sys_ = system
    assert traj.n_residues == 40 and traj.n_atoms == 160
    zeta = sys_.gamma / (2 * sys_.omega)
    assert np.all(zeta[:3] < 1) and zeta[0] == pytest.approx(cfg.damping_ratio_slowest)
    assert np.mean(zeta >= 1) > 0.9  # the rest overdamped
    period_frames = 2 * np.pi / sys_.omega[0] / cfg.frame_interval_ps
    assert 8 < period_frames < 20  # the slowest mode oscillates over a few frames
    assert len(sys_.omega) == 3 * 160 - 6  # rigid-body modes removed, nothing else


def test_exact_mode_step_matches_fine_step_integration_of_the_cartesian_equations(system):
    """Noise-free part of one frame step: modes + expm vs an adaptive stiff integrator of M x'' = -H dx - beta H x'."""
    cfg, _, sys_ = system
    m3 = np.repeat(sys_.masses, 3)
    # Cartesian Hessian and damping rebuilt from the modes: H = M^1/2 V W^2 V^T M^1/2 (rigid modes have W = 0)
    mw = sys_.shapes * np.sqrt(m3)[:, None]  # V (mass-weighted, orthonormal columns)
    h = (np.sqrt(m3)[:, None] * mw) @ np.diag(sys_.omega**2) @ (mw.T * np.sqrt(m3)[None])
    beta = sys_.gamma[0] / sys_.omega[0] ** 2
    rng = np.random.default_rng(0)
    q0, p0 = rng.standard_normal(len(sys_.omega)) * np.sqrt(sys_.variances), rng.standard_normal(len(sys_.omega))
    x0, v0 = sys_.shapes @ q0, sys_.shapes @ p0  # displacement (nm) and velocity (nm/ps)
    n = len(x0)
    jac = np.block([[np.zeros((n, n)), np.eye(n)], [-h / m3[:, None], -beta * h / m3[:, None]]])
    sol = scipy.integrate.solve_ivp(lambda t, y: jac @ y, (0, cfg.frame_interval_ps), np.concatenate([x0, v0]),
                                    method="Radau", jac=jac, rtol=1e-10, atol=1e-13)
    phi = sys_.propagator(cfg.frame_interval_ps)
    q1 = phi[:, 0, 0] * q0 + phi[:, 0, 1] * p0
    np.testing.assert_allclose(sys_.shapes @ q1, sol.y[:n, -1], atol=1e-8 * np.abs(x0).max() + 1e-10)


def test_long_run_statistics_match_the_exact_ones(system):
    cfg, traj, sys_ = system
    ca = traj.top.select("name CA")
    t = truth(sys_, traj, cfg)
    xyz = [10.0 * simulate(sys_, 10000, cfg.frame_interval_ps, seed)[:, ca] for seed in (1, 2, 3)]  # Angstrom
    mean = np.asarray(t["mean_ca_A"])
    # RMSF about the exact mean (no superposition needed: the network has no rigid-body motion)
    rmsf = np.sqrt(np.mean([((x - mean) ** 2).sum(-1).mean(0) for x in xyz], axis=0))
    exact = np.asarray(t["ca_rmsf_A"])
    # 3 x 10^4 frames with a decorrelation time ~10 frames: ~3000 effective samples, variance s.e. ~2.5%
    np.testing.assert_allclose(rmsf, exact, rtol=0.08)
    assert np.corrcoef(rmsf, exact)[0, 1] > 0.98
    for k in range(cfg.truth_n_modes):
        acf = mode_acf(mode_projections(xyz, mean, np.asarray(t["slow_modes"]["projection_ca"][k])), 30)
        np.testing.assert_allclose(acf, np.asarray(t["slow_modes"]["acf"][k][:31]), atol=0.08)
    # the slowest projection's ACF oscillates: it goes negative within a period
    assert min(t["slow_modes"]["acf"][0][:15]) < -0.3
    # exact stationary draws reproduce the exact covariance
    draws = 10.0 * stationary_samples(sys_, 20000, np.random.default_rng(1))[:, ca]
    np.testing.assert_allclose(np.sqrt(((draws - mean) ** 2).sum(-1).mean(0)), exact, rtol=0.04)


def test_slow_mode_projections_read_their_own_mode(system):
    cfg, traj, sys_ = system
    t = truth(sys_, traj, cfg)
    assert min(t["slow_modes"]["own_mode_variance_fraction"]) > 0.99
    w = ca_projections(sys_, traj.top.select("name CA"), 3)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0)


def test_prepare_synthetic_writes_the_raw_layout_and_truth(tmp_path):
    import mdtraj as md

    cfg = SyntheticConfig(n_frames=50, truth_mc_samples=20, truth_max_lag_frames=10)
    out = prepare_synthetic(tmp_path / "enm1_A", cfg)
    top = md.load(out / "enm1_A.pdb")
    assert [a.name for a in top.top.residue(0).atoms] == ["N", "CA", "C", "O"]
    for k in (1, 2, 3):
        traj = md.load(out / f"enm1_A_prod_R{k}_fit.xtc", top=out / "enm1_A.pdb")
        assert traj.n_frames == 50
        assert traj.time[1] - traj.time[0] == pytest.approx(cfg.frame_interval_ps)
    t = json.loads((out / "truth.json").read_text())
    assert len(t["ca_rmsf_A"]) == 40 and len(t["slow_modes"]["acf"][0]) == 11
    assert t["slow_modes"]["acf"][0][0] == pytest.approx(1.0)
    # replicas differ (own seeds), the same config reproduces them bit for bit
    r1, r2 = (md.load(out / f"enm1_A_prod_R{k}_fit.xtc", top=out / "enm1_A.pdb").xyz for k in (1, 2))
    assert not np.allclose(r1, r2)
    again = prepare_synthetic(tmp_path / "again", cfg)
    assert (again / "enm1_A_prod_R1_fit.xtc").read_bytes() == (out / "enm1_A_prod_R1_fit.xtc").read_bytes()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="synthetic.sequence: need at least 40"):
        SyntheticConfig(sequence="A" * 20).validate()
    with pytest.raises(ValueError, match="synthetic.damping_ratio_slowest"):
        SyntheticConfig(damping_ratio_slowest=1.5).validate()
    with pytest.raises(ValueError, match="synthetic: unknown key"):
        SyntheticConfig.from_json('{"n_frame": 10}')


def test_truth_scores_separate_exact_dynamics_from_shuffled_and_frozen_frames(system):
    """MD of the system itself meets every target; the same frames shuffled lose the ACF; a frozen structure
    loses RMSF, pairwise RMSD and plateau."""
    cfg, traj, sys_ = system
    ca = traj.top.select("name CA")
    t = truth(sys_, traj, cfg)
    md_traj = [10.0 * simulate(sys_, 400, cfg.frame_interval_ps, seed)[:, ca] for seed in (4, 5, 6, 7)]
    rng = np.random.default_rng(0)
    shuffled = [x[rng.permutation(len(x))] for x in md_traj]
    frozen = [np.repeat(np.asarray(t["mean_ca_A"])[None], 400, 0) + 0.01 * rng.standard_normal((400, 40, 3))]
    out = truth_section({"model": md_traj, "shuffled": shuffled, "frozen": frozen}, t, cfg.frame_interval_ps,
                        200, 0)
    m = out["metrics"]
    assert all(m[k]["model_meets_target"] for k in m), {k: m[k]["model"] for k in m}
    assert m["acf_error_exact"]["shuffled"] > 3 * m["acf_error_exact"]["model"]
    assert m["rmsf_ratio_exact"]["frozen"] < 0.1 and m["pairwise_rmsd_rel_error_exact"]["frozen"] < -0.9
    assert m["slow_mode_amplitude_ratio_exact"]["frozen"] < 0.1


def test_known_answer_table_and_acf_figure_from_an_eval_with_truth(system, tmp_path):
    """figures: an eval JSON with a truth block gets the known-answer table rows and the slow-mode ACF figure."""
    from starmd.evaluation.figures import plot_truth_acf, save
    from starmd.evaluation.summary import truth_rows, truth_rows_to_markdown

    cfg, traj, sys_ = system
    ca = traj.top.select("name CA")
    t = truth(sys_, traj, cfg)
    md_traj = [10.0 * simulate(sys_, 100, cfg.frame_interval_ps, seed)[:, ca] for seed in (8, 9)]
    ensembles = {k: md_traj for k in ("model", "oracle_segments", "oracle", "baseline_noise", "baseline_replica")}
    block = truth_section(ensembles, t, cfg.frame_interval_ps, 50, 0)
    rows = truth_rows([{"name": "enm1_A", "truth": block}])
    assert [r["metric"] for r in rows] == list(block["metrics"])
    assert "| acf_error_exact | <= 0.1 |" in truth_rows_to_markdown(rows)
    png = save(plot_truth_acf([{"name": "enm1_A", "truth": block}]), tmp_path, "truth_acf")
    assert png.stat().st_size > 10_000 and (tmp_path / "truth_acf.pdf").exists()
