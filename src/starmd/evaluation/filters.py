"""Which linear use of the history carries a slow mode's momentum (issue 13, known-answer system).

A model anchored on the previous frame predicts the next frame's step x_l - y_{l-1} from the noised history
y_j = alpha x_j + sigma e_j. The best *linear* predictors of that step with a given structure are least-squares fits
to MD frames, so they bound what a network head of that structure can learn and show where the information is:
- `residue`: one set of coefficients for every residue and coordinate, applied to the residue's own deviation from
  the mean structure (Markovian part) and its own last K displacements (history);
- `pair`: residue i's step is a weighted sum over every residue j of j's deviation and displacements (an N x N
  isotropic filter per feature, the structure of `model.history_coupling: pair`).
Fitted on one trajectory and scored on another: the one-step error of each slow mode's coordinate (truth.json's CA
projection) in units of that mode's std, and the per-coordinate RMS of the step's residual, the quantity a
translation loss sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _design(x: np.ndarray, noisy: np.ndarray, mean: np.ndarray, history: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [T', N, 3, 1 + history] (deviation of y_{l-1}, then displacements y_{l-k} - y_{l-k-1}) and target
    steps [T', N, 3] for every frame l with a full history."""
    frames = np.arange(history + 1, x.shape[0])
    feats = [noisy[frames - 1] - mean] + [noisy[frames - k] - noisy[frames - k - 1] for k in range(1, history + 1)]
    return np.stack(feats, axis=-1), x[frames] - noisy[frames - 1]


def _rows(feats: np.ndarray, coupling: str) -> np.ndarray:
    """Design matrix of features [T, N, 3, F]: rows (frame, residue, coordinate) x F (`residue`), or rows
    (frame, coordinate) x (source residue j, feature) (`pair`)."""
    t, n, _, f = feats.shape
    if coupling == "residue":
        return feats.reshape(-1, f)
    return feats.transpose(0, 2, 1, 3).reshape(t * 3, n * f)


def _fit(feats: np.ndarray, steps: np.ndarray, coupling: str) -> np.ndarray:
    """Least-squares coefficients: [F] (`residue`) or [N F, N] (`pair`; one column per target residue i)."""
    target = steps.reshape(-1) if coupling == "residue" else steps.transpose(0, 2, 1).reshape(-1, steps.shape[1])
    return np.linalg.lstsq(_rows(feats, coupling), target, rcond=None)[0]


def _predict(feats: np.ndarray, coef: np.ndarray, coupling: str) -> np.ndarray:
    """Predicted steps [T, N, 3]."""
    t, n = feats.shape[:2]
    step = _rows(feats, coupling) @ coef
    return step.reshape(t, n, 3) if coupling == "residue" else step.reshape(t, 3, n).transpose(0, 2, 1)


def filter_scores(train: np.ndarray, test: np.ndarray, projection: np.ndarray, alpha: float, noise_std: float,
                  history: int, coupling: str, rng: np.random.Generator) -> dict[str, Any]:
    """Fit on `train` [T, N, 3] (A, centred frames), score on `test` [T', N, 3], with and without history.

    projection [M, 3N]: slow-mode coordinates q = projection . (x - mean). alpha, noise_std: the contextual noise
    (y = alpha x + noise_std e). Returns, for "markov" (deviation only) and "history" (+ `history` displacements):
    slow-mode error / std per mode and the per-coordinate residual RMS of the step (A)."""
    if coupling not in ("residue", "pair"):
        raise ValueError(f"coupling must be 'residue' or 'pair', got {coupling!r}")
    mean = train.mean(axis=0)
    noised = [alpha * x + noise_std * rng.standard_normal(x.shape) for x in (train, test)]
    fit_feats, fit_steps = _design(train, noised[0], mean, history)
    test_feats, test_steps = _design(test, noised[1], mean, history)
    frames = np.arange(history + 1, test.shape[0])
    q_true = (test[frames] - mean).reshape(len(frames), -1) @ projection.T
    out: dict[str, Any] = {}
    for name, n_feats in (("markov", 1), ("history", 1 + history)):
        coef = _fit(fit_feats[..., :n_feats], fit_steps, coupling)
        step = _predict(test_feats[..., :n_feats], coef, coupling)
        q_pred = (noised[1][frames - 1] + step - mean).reshape(len(frames), -1) @ projection.T
        out[name] = {
            "mode_error": (np.sqrt(((q_pred - q_true) ** 2).mean(axis=0)) / q_true.std(axis=0)).tolist(),
            "step_residual_A": float(np.sqrt(((test_steps - step) ** 2).mean())),
        }
    return out
