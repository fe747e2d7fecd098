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
    """Fitted at N <= 24 and up to 32 held frames, predicted at N 40, B 2 and 48 held frames, and 64 held frames."""
    fit_points = [rollout_eval(TINY, FEATURES, n, l, 1, repeats=1, steps=1) for n, l in
                  ((8, 2), (16, 2), (24, 2), (16, 32), (8, 16))]
    coef = rm.fit_rollout_memory([rm.rollout_memory_features(DIMS, p["n_res"], p["batch"], p["n_held"])
                                  for p in fit_points], [p["activation_bytes"] for p in fit_points])
    for n_res, n_held, batch in ((40, 48, 2), (40, 2, 2), (16, 64, 1)):  # trunk-bound, trunk-bound, attention-bound
        measured = rollout_eval(TINY, FEATURES, n_res, n_held, batch, repeats=1, steps=1)
        predicted = rm.rollout_activation_bytes(coef, rm.rollout_memory_features(DIMS, n_res, batch, n_held))
        assert abs(predicted / measured["activation_bytes"] - 1) < 0.25, (predicted, measured)


def test_training_memory_extrapolates_within_25_percent():
    fit_points = [training_step(TINY, FEATURES, n, l, 1, repeats=1) for n, l in ((8, 2), (16, 2), (8, 4), (12, 3))]
    coef = rm.fit([rm.training_memory_features(DIMS, p["n_res"], p["n_frames"], p["batch"]) for p in fit_points],
                  [p["activation_bytes"] for p in fit_points], rm.TRAINING_MEMORY_TERMS)
    measured = training_step(TINY, FEATURES, 24, 3, 2, repeats=1)
    predicted = rm.apply(coef, rm.training_memory_features(DIMS, 24, 3, 2), rm.TRAINING_MEMORY_TERMS)
    assert abs(predicted / measured["activation_bytes"] - 1) < 0.25, (predicted, measured)


def _calibrated_dims(doc: dict) -> dict[str, rm.Dims]:
    return {name: rm.Dims(**d) for name, d in doc["fitted"]["calibrated_dims"].items()}


@pytest.mark.parametrize("kind, target, features, names, stored_key, checkpointing", [
    ("rollout_points", "eval_s", lambda d, p: rm.rollout_time_features(d, p["n_res"], p["n_held"], p["batch"]),
     rm.ROLLOUT_TIME_TERMS, "rollout_time", None),
    ("training_points", "step_s", lambda d, p: rm.training_time_features(d, p["n_res"], p["n_frames"], p["batch"]),
     rm.TRAINING_TIME_TERMS, "training_time", False),
    ("training_points", "step_s", lambda d, p: rm.training_time_features(d, p["n_res"], p["n_frames"], p["batch"]),
     rm.TRAINING_TIME_TERMS, "training_time_checkpointed", True),
])
def test_committed_cpu_time_calibration_fits_its_points_within_25_percent(kind, target, features, names, stored_key,
                                                                           checkpointing):
    """Both widths, held frames up to hundreds (the attention term is measured, not extrapolated from L <= 8), and
    training with and without activation checkpointing (separate fits)."""
    doc = json.loads(DEFAULT_CALIBRATION.read_text())
    points = [p for p in doc[kind] if checkpointing is None or p["checkpointing"] is checkpointing]
    dims = _calibrated_dims(doc)
    assert {p["model"] for p in points} == {"paper", "small"}
    if kind == "rollout_points":
        assert max(p["n_held"] for p in points) >= 200
    coef = rm.fit([features(dims[p["model"]], p) for p in points], [p[target] for p in points], names)
    for p in points:
        assert abs(rm.apply(coef, features(dims[p["model"]], p), names) / p[target] - 1) < 0.25, p
    assert doc["fitted"][stored_key]["cpu"] == pytest.approx(coef, rel=1e-6)


def test_committed_calibration_predicts_a_width_it_never_saw_within_25_percent():
    """Whole rollouts (empty cache to F frames, every reverse step) and training steps (with and without activation
    checkpointing) of the held-out width, timed and their bytes counted by the calibration run: this code's prediction
    from the stored constants is within 25% of each."""
    doc = json.loads(DEFAULT_CALIBRATION.read_text())
    cal = rm.Calibration.load(DEFAULT_CALIBRATION)
    held_out = doc["validation"]
    dims = rm.Dims(**held_out["model_dims"])
    assert dims not in _calibrated_dims(doc).values()
    assert held_out["rollouts"] and held_out["training"]
    for row in held_out["rollouts"]:
        predicted = rm.rollout_seconds(cal, dims, "cpu", row["n_res"], row["n_frames"], row["steps"], row["batch"], 0)
        assert predicted == pytest.approx(row["predicted_s"], rel=1e-9)
        assert abs(predicted / row["wall_s"] - 1) < 0.25, row
    assert {row["checkpointing"] for row in held_out["training"]} == {False, True}
    for row in held_out["training"]:
        shape = (row["n_res"], row["n_frames"], row["batch"])
        predicted = rm.training_seconds(cal, dims, "cpu", *shape, 1, row["checkpointing"])
        assert predicted == pytest.approx(row["predicted_s"], rel=1e-9)
        assert abs(predicted / row["step_s"] - 1) < 0.25, row
        predicted_bytes = rm.training_peak_bytes(cal, dims, *shape, row["checkpointing"])["activations"]
        assert abs(predicted_bytes / row["activation_bytes"] - 1) < 0.25, row


def test_time_grows_with_width_history_and_window():
    """A wider model, more held frames and no context window all cost more; a window caps the attention term."""
    cal = rm.Calibration.load(DEFAULT_CALIBRATION)
    dims = _calibrated_dims(json.loads(DEFAULT_CALIBRATION.read_text()))
    small, paper = dims["small"], dims["paper"]
    args = ("cpu", 64, 200, 20, 2)
    assert rm.rollout_seconds(cal, small, *args, 0) < rm.rollout_seconds(cal, paper, *args, 0)
    assert rm.rollout_seconds(cal, paper, "cpu", 64, 400, 20, 2, 0) > 2 * rm.rollout_seconds(cal, paper, *args, 0)
    assert rm.rollout_seconds(cal, paper, *args, 8) < rm.rollout_seconds(cal, paper, *args, 0)
    assert rm.training_seconds(cal, small, "cpu", 64, 8, 2, 10) < rm.training_seconds(cal, paper, "cpu", 64, 8, 2, 10)
    plain = rm.training_seconds(cal, paper, "cpu", 64, 8, 2, 10)
    assert rm.training_seconds(cal, paper, "cpu", 64, 8, 2, 10, checkpointing=True) > plain  # recomputes blocks
    assert (rm.training_peak_bytes(cal, paper, 64, 8, 2, checkpointing=True)["total"]
            < rm.training_peak_bytes(cal, paper, 64, 8, 2)["total"])


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


def test_a_calibration_from_another_version_of_the_model_is_refused_by_name(tmp_path):
    """Old term names would otherwise crash every rollout's start-up estimate with a bare KeyError."""
    doc = json.loads(DEFAULT_CALIBRATION.read_text())
    doc["fitted"]["rollout_time"]["cpu"] = {"const": 1.0, "per_B_N": 1.0}
    stale = tmp_path / "old.json"
    stale.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"'rollout_time.cpu' has terms .* bench_estimate_calibration"):
        rm.Calibration.load(stale)
