"""`python -m starmd estimate`: the memory model fitted at three sizes of a tiny model predicts a fourth, larger one
within 25% of the bytes measured there (PeakTensorBytes: every storage the step allocates, counted exactly, so the
same on every run); the committed CPU calibration's time model reproduces its own measured points within 25% (timing
a fresh run here is not reliable on the shared machine); the CLI prints one row per protein and warns when the SLURM
profile asks for too little memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from starmd.estimate import model as rm
from starmd.estimate.cli import DEFAULT_CALIBRATION, main
from starmd.estimate.config import model_dims
from starmd.estimate.measure import PeakTensorBytes, rollout_eval, training_step

REPO = Path(__file__).resolve().parents[1]
TINY = {"c_s": 16, "c_z": 8, "n_blocks": 2, "n_heads": 2, "c_hidden": 8, "no_heads_ipa": 2, "c_hidden_ipa": 8,
        "no_qk_points": 2, "no_v_points": 2, "c_time": 8, "c_phys_time": 8, "n_rbf": 8}
FEATURES = {"c_s": 8, "c_z": 4}
DIMS = model_dims(TINY, FEATURES)


def test_peak_tensor_bytes_counts_saved_activations_until_backward_frees_them():
    w = torch.randn(100, 100, requires_grad=True)
    x = torch.randn(10, 100)
    with PeakTensorBytes() as tracker:
        loss = (x @ w).relu().sum()
        held = tracker.current  # relu's output, saved for backward: 10 x 100 fp32
        loss.backward()
        del loss
    assert held == 10 * 100 * 4 + 4  # + the scalar loss
    assert tracker.current == w.grad.numel() * 4  # only the gradient survives
    assert tracker.peak >= held + tracker.current


def test_rollout_memory_extrapolates_within_25_percent():
    fit_points = [rollout_eval(TINY, FEATURES, n, 2, 1, repeats=1) for n in (8, 16, 24)]
    coef = rm.fit([rm.rollout_memory_features(DIMS, p["n_res"], p["batch"]) for p in fit_points],
                  [p["activation_bytes"] for p in fit_points], rm.ROLLOUT_MEMORY_TERMS)
    measured = rollout_eval(TINY, FEATURES, 40, 3, 2, repeats=1)
    predicted = rm.apply(coef, rm.rollout_memory_features(DIMS, 40, 2), rm.ROLLOUT_MEMORY_TERMS)
    assert abs(predicted / measured["activation_bytes"] - 1) < 0.25, (predicted, measured)


def test_training_memory_extrapolates_within_25_percent():
    fit_points = [training_step(TINY, FEATURES, n, l, 1, repeats=1) for n, l in ((8, 2), (16, 2), (8, 4))]
    coef = rm.fit([rm.training_memory_features(DIMS, p["n_res"], p["n_frames"], p["batch"]) for p in fit_points],
                  [p["activation_bytes"] for p in fit_points], rm.TRAINING_MEMORY_TERMS)
    measured = training_step(TINY, FEATURES, 24, 3, 2, repeats=1)
    predicted = rm.apply(coef, rm.training_memory_features(DIMS, 24, 3, 2), rm.TRAINING_MEMORY_TERMS)
    assert abs(predicted / measured["activation_bytes"] - 1) < 0.25, (predicted, measured)


@pytest.mark.parametrize("kind, target, features, names", [
    ("rollout_points", "eval_s", lambda p: rm.rollout_time_features(p["n_res"], p["n_held"], p["batch"]),
     rm.ROLLOUT_TIME_TERMS),
    ("training_points", "step_s", lambda p: rm.training_time_features(p["n_res"], p["n_frames"], p["batch"]),
     rm.TRAINING_TIME_TERMS),
])
def test_committed_cpu_time_calibration_fits_its_points_within_25_percent(kind, target, features, names):
    doc = json.loads(DEFAULT_CALIBRATION.read_text())
    points = doc[kind]
    coef = rm.fit([features(p) for p in points], [p[target] for p in points], names)
    for p in points:
        assert abs(rm.apply(coef, features(p), names) / p[target] - 1) < 0.25, p
    stored = doc["fitted"]["rollout_time" if kind == "rollout_points" else "training_time"]["cpu"]
    assert stored == pytest.approx(coef, rel=1e-6)


def test_time_is_scaled_by_model_width_from_the_calibrated_model():
    """The time constants are measured on one model: at its widths the prediction is the fit itself; a model with
    a quarter of the pair width does 1/16 of the per-pair work, and the overhead follows the parameter count."""
    cal = rm.Calibration.load(DEFAULT_CALIBRATION)
    same = rm.Dims(**{k: cal.dims[k] for k in ("c_s", "c_z", "n_blocks", "n_heads", "c_hidden", "c_s_in", "c_z_in",
                                               "n_parameters")})
    assert rm.time_width_factors(same, cal.dims) == [1.0, 1.0, 1.0, 1.0]
    unscaled = rm.apply(cal.training_time["cpu"], rm.training_time_features(64, 8, 2), rm.TRAINING_TIME_TERMS)
    assert rm.training_seconds(cal, same, "cpu", 64, 8, 2, 10) == pytest.approx(10 * unscaled)
    narrow = rm.Dims(**{**same.__dict__, "c_z": same.c_z // 4, "n_parameters": same.n_parameters // 2})
    assert rm.time_width_factors(narrow, cal.dims) == pytest.approx([0.5, 1.0, 1 / 16, 1.0])
    assert rm.rollout_seconds(cal, narrow, "cpu", 64, 10, 20, 2, 0) < rm.rollout_seconds(cal, same, "cpu", 64, 10,
                                                                                          20, 2, 0)


def _profile(tmp_path: Path, rollout_mb: int) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(f"default-resources:\n  mem_mb: 8000\nset-resources:\n  rollout:\n    mem_mb: {rollout_mb}\n")
    return path


def test_cli_prints_a_row_per_demo_protein_and_no_warning_when_memory_suffices(tmp_path, capsys):
    assert main(["--configfile", str(REPO / "config.yaml"), "--configfile", str(REPO / "config.demo.yaml"),
                 "--slurm-profile", str(_profile(tmp_path, 32000)), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"pep1_A", "pep2_A", "pep3_A"}
    assert [rows[n][1] for n in ("pep1_A", "pep2_A", "pep3_A")] == ["12", "13", "10"]  # sequence lengths
    assert "WARNING" not in out


def test_cli_warns_for_each_test_protein_that_does_not_fit_the_requested_memory(tmp_path, capsys):
    assert main(["--configfile", str(REPO / "config.yaml"), "--configfile", str(REPO / "config.demo.yaml"),
                 "--slurm-profile", str(_profile(tmp_path, 1)), "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING pep3_A (N=10): rollout needs")
    assert "mem_mb=1 for rule rollout" in warnings[0]
