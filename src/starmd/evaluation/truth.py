"""Model-vs-exact scores for a dataset whose statistics are known (`truth.json` of the synthetic system).

MD replicas are finite samples; here every ensemble is scored against the exact answer instead (README "Metrics",
"Known-answer system"). All CA frames come in aligned exactly as for the other metrics (Kabsch onto the start
structure, which for the synthetic system is its mean structure). Targets (issue 13) are part of the output, so a
table can say which are met.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from starmd.errors import reading
from starmd.evaluation import metrics as M

TRUTH_KEYS = ("frame_interval_ps", "mean_ca_A", "ca_rmsf_A", "mean_pairwise_rmsd_A", "rmsd_to_start_plateau_A",
              "slow_modes")

# metric -> (target description, test) ; `passes` applies the test to the model's value
TARGETS: dict[str, tuple[str, Any]] = {
    "rmsf_r_exact": (">= 0.9", lambda v: v >= 0.9),
    "rmsf_ratio_exact": ("in [0.8, 1.25]", lambda v: 0.8 <= v <= 1.25),
    "pairwise_rmsd_rel_error_exact": ("<= 0.15", lambda v: abs(v) <= 0.15),
    "acf_error_exact": ("<= 0.1", lambda v: v <= 0.1),
    "slow_mode_amplitude_ratio_exact": ("in [0.8, 1.25]", lambda v: 0.8 <= v <= 1.25),
    "slow_mode_mean_offset_exact": ("<= 0.5", lambda v: v <= 0.5),
    "rmsd_to_start_plateau_rel_error_exact": ("<= 0.15", lambda v: abs(v) <= 0.15),
    "rmsd_to_start_drift_rel": ("<= 0.1", lambda v: abs(v) <= 0.1),
}
DESCRIPTIONS = {
    "rmsf_r_exact": "Pearson r of per-residue CA RMSF with the exact RMSF",
    "rmsf_ratio_exact": "RMS over residues of the RMSF / that of the exact RMSF (magnitude)",
    "pairwise_rmsd_rel_error_exact": "(mean pairwise CA RMSD - exact expectation) / exact expectation",
    "acf_error_exact": "mean over the slow modes of mean |ACF - exact ACF| over lags 1..3 decorrelation times (ACF "
                       "of each trajectory about its own mean: the dynamics, apart from where and how wide)",
    "slow_mode_amplitude_ratio_exact": "mean over the slow modes of std of the projection / exact std",
    "slow_mode_mean_offset_exact": "mean over the slow modes of |mean of the projection - exact mean| / exact std",
    "rmsd_to_start_plateau_rel_error_exact": "(mean RMSD to the start structure over the second half - exact "
                                             "stationary value) / exact value",
    "rmsd_to_start_drift_rel": "(mean RMSD to start over the last quarter - over the second quarter) / exact "
                               "stationary value",
}


def load_truth(path: str | Path) -> dict[str, Any]:
    """Read truth.json, checking the keys evaluation uses (a named error, not a KeyError deep inside)."""
    with reading(path, "truth JSON (truncated?)", "delete it; snakemake reruns prepare_synthetic"):
        truth = json.loads(Path(path).read_text())
    missing = [k for k in TRUTH_KEYS if k not in truth]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; expected a truth.json written by prepare-synthetic")
    return truth


def truth_lags(truth: dict[str, Any], spacing_ps: float) -> tuple[int, list[int]]:
    """(truth lag step per grid frame, lag window per slow mode in grid frames = 3 decorrelation times, >= 1)."""
    ratio = spacing_ps / truth["frame_interval_ps"]
    step = round(ratio)
    if step < 1 or abs(ratio - step) > 1e-3 * step:
        raise ValueError(f"evaluation grid spacing {spacing_ps} ps is not a multiple of the truth's frame interval "
                         f"{truth['frame_interval_ps']} ps")
    windows = [max(1, round(3 * d / step)) for d in truth["slow_modes"]["decorrelation_time_frames"]]
    return step, windows


def mode_projections(ca: list[np.ndarray], mean_ca: np.ndarray, projection: np.ndarray) -> list[np.ndarray]:
    """y = w . (x_CA - exact mean) [F] of every trajectory (Angstrom)."""
    return [(traj - mean_ca).reshape(len(traj), -1) @ projection for traj in ca]


def mode_acf(ys: list[np.ndarray], max_lag: int) -> np.ndarray:
    """Mean over trajectories of the autocorrelation of each projection about its own mean (the estimator of
    `metrics.autocorrelation`), lags 0..max_lag: dynamics only; where the ensemble sits and how wide it is are
    scored separately (mean offset, amplitude ratio)."""
    curves = [M.autocorrelation(y, max_lag) for y in ys if len(y) > 1]
    n = min(len(c) for c in curves)
    return np.mean([c[:n] for c in curves], axis=0)


def rmsd_to_start_stats(ca: list[np.ndarray], start_ca: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(mean RMSD-to-start curve, plateau = its mean over the second half, drift = last quarter - second quarter)."""
    n = min(len(t) for t in ca)
    curve = np.mean([M.rmsd_to(t[:n], start_ca) for t in ca], axis=0)
    q = max(n // 4, 1)
    return curve, float(curve[n // 2:].mean()), float(curve[-q:].mean() - curve[q:2 * q].mean())


def score_against_truth(ca: list[np.ndarray], truth: dict[str, Any], spacing_ps: float, max_frames: int,
                        rng: np.random.Generator) -> tuple[dict[str, float], dict[str, Any]]:
    """Scores and curves of one ensemble (aligned CA trajectories [F, N, 3] on the common grid)."""
    mean_ca = np.asarray(truth["mean_ca_A"])
    exact_rmsf = np.asarray(truth["ca_rmsf_A"])
    pooled = np.concatenate(ca)
    rmsf = M.rmsf(pooled, mean_ca)
    pairwise = M.mean_pairwise_rmsd(pooled, max_frames, rng)
    step, windows = truth_lags(truth, spacing_ps)
    modes = truth["slow_modes"]
    acfs, errors, amplitude, offset = [], [], [], []
    for k, window in enumerate(windows):
        ys = mode_projections(ca, mean_ca, np.asarray(modes["projection_ca"][k]))
        acf = mode_acf(ys, window)
        exact = np.asarray(modes["acf"][k])[::step][: len(acf)]
        acfs.append({"model": acf.tolist(), "exact": exact.tolist()})
        errors.append(float(np.mean(np.abs(acf[1:] - exact[1:]))) if len(acf) > 1 else float("nan"))
        pooled, exact_std = np.concatenate(ys), float(np.sqrt(modes["variance_A2"][k]))
        amplitude.append(float(pooled.std()) / exact_std)  # the exact mean of y is 0
        offset.append(abs(float(pooled.mean())) / exact_std)
    curve, plateau, drift = rmsd_to_start_stats(ca, mean_ca)
    exact_plateau = truth["rmsd_to_start_plateau_A"]
    scores = {
        "rmsf_r_exact": M.pearson_r(exact_rmsf, rmsf),
        "rmsf_ratio_exact": float(np.sqrt(np.mean(rmsf**2) / np.mean(exact_rmsf**2))),
        "pairwise_rmsd_rel_error_exact": (pairwise - truth["mean_pairwise_rmsd_A"]) / truth["mean_pairwise_rmsd_A"],
        "acf_error_exact": float(np.mean(errors)),
        "slow_mode_amplitude_ratio_exact": float(np.mean(amplitude)),
        "slow_mode_mean_offset_exact": float(np.mean(offset)),
        "rmsd_to_start_plateau_rel_error_exact": (plateau - exact_plateau) / exact_plateau,
        "rmsd_to_start_drift_rel": drift / exact_plateau,
    }
    curves = {"rmsf": rmsf.tolist(), "acf_modes": acfs, "acf_error_per_mode": errors,
              "rmsd_to_start_A": curve.tolist()}
    return scores, curves


def md_segments(ca: np.ndarray, n: int, length: int) -> list[np.ndarray]:
    """The first n consecutive segments of `length` frames of one MD replica (fewer if it is too short): the
    finite-sample noise floor of a model ensemble of the same size."""
    count = min(n, len(ca) // length)
    return [ca[i * length:(i + 1) * length] for i in range(count)]


def truth_section(ensembles: dict[str, list[np.ndarray]], truth: dict[str, Any], spacing_ps: float,
                  max_frames: int, seed: int) -> dict[str, Any]:
    """The `truth` block of an evaluation JSON: every metric for every ensemble, the targets and the model's pass/fail.

    ensembles: name -> list of aligned CA trajectories on the common grid (model, MD replicas, baselines, MD segments
    matched to the model's size).
    """
    scores, curves = {}, {}
    for i, (key, ca) in enumerate(ensembles.items()):
        scores[key], curves[key] = score_against_truth(ca, truth, spacing_ps, max_frames,
                                                       np.random.default_rng([seed, 100 + i]))
    step, windows = truth_lags(truth, spacing_ps)
    metrics = {}
    for metric, (target, test) in TARGETS.items():
        values = {key: scores[key][metric] for key in ensembles}
        metrics[metric] = {"description": DESCRIPTIONS[metric], "target": target,
                           "model_meets_target": bool(test(values["model"])), **values}
    return {
        "exact": {"ca_rmsf_A": truth["ca_rmsf_A"], "mean_pairwise_rmsd_A": truth["mean_pairwise_rmsd_A"],
                  "rmsd_to_start_plateau_A": truth["rmsd_to_start_plateau_A"],
                  "slow_mode_period_frames": truth["slow_modes"].get("period_frames"),
                  "slow_mode_decorrelation_time_frames": truth["slow_modes"]["decorrelation_time_frames"]},
        "acf_lag_windows_frames": windows,
        "truth_lag_step": step,
        "metrics": metrics,
        "curves": curves,
    }
