"""What a perfect model could reach on the known-answer system: the ideal autoregressive sampler (issue 13).

A trained model conditions each new frame on its history re-noised at the contextual-noise level tau, and sees at
most `window` past frames. On the synthetic system the answer to "what is the best any such model can do" is exact:
each slow mode is a damped oscillator, a linear-Gaussian process, so the exact conditional law of the next position
given the last K noised positions is Gaussian with coefficients from the mode's autocovariance. Sampling from it
autoregressively (each new frame noised again before it becomes history, as the KV cache does) is the ideal model;
scoring its trajectories with the same ACF estimator as `evaluate` tells whether a target is reachable at all for a
given (tau, window), before any GPU time is spent training.

Assumptions, stated: the slow-mode coordinate is the CA regression projection of truth.json (>99.7% own-mode
variance); the model's information about it is the projection of the noised CA positions (isotropic translation noise
of std sigma_tau per coordinate, so sigma_tau on a unit-norm projection); the rotation noise's extra information is
ignored (a bound for a model that reads positions, which is what the translations are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import expm

from starmd.diffusion.r3 import R3Diffuser
from starmd.evaluation.truth import mode_acf, truth_lags


def contextual_noise(tau: float, r3: R3Diffuser) -> tuple[float, float]:
    """(alpha, sigma in A per coordinate) of contextual noise at tau: x_tau = alpha x_0 + sigma e."""
    import torch

    t = torch.tensor(float(tau), dtype=torch.float64)
    return float(r3.alpha_t(t)), float(r3.conditional_var(t).sqrt()) / r3.coordinate_scaling


def contextual_noise_A(tau: float, r3: R3Diffuser) -> float:
    """Std (A per coordinate) of what contextual noise at tau adds to a position, relative to the signal:
    x_tau = alpha x_0 + sigma e, so x_tau / alpha = x_0 + (sigma / alpha) e."""
    alpha, sigma = contextual_noise(tau, r3)
    return sigma / alpha


def mode_autocovariance(period_frames: float, damping_ratio: float, variance: float, max_lag: int) -> np.ndarray:
    """Exact autocovariance [max_lag + 1] of a damped oscillator's position (stationary variance `variance`) whose
    damped period and damping ratio are those of truth.json, in frames."""
    omega_d = 2 * np.pi / period_frames
    omega_0 = omega_d / np.sqrt(1 - damping_ratio**2)
    drift = np.array([[0.0, 1.0], [-omega_0**2, -2 * damping_ratio * omega_0]])
    step = expm(drift)  # exact one-frame propagator of (position, velocity)
    stationary = np.diag([variance, omega_0**2 * variance])
    cov, power = [variance], np.eye(2)
    for _ in range(max_lag):
        power = step @ power
        cov.append(float((power @ stationary)[0, 0]))
    return np.asarray(cov)


def conditional_coefficients(autocov: np.ndarray, noise_var: float, n_history: int) -> tuple[np.ndarray, float]:
    """(b [n_history], v): q_l | y_{l-n..l-1} ~ N(b . y, v) with y_j = q_j + noise (oldest first)."""
    idx = np.arange(n_history)
    cov_yy = autocov[np.abs(idx[:, None] - idx[None, :])] + noise_var * np.eye(n_history)
    cov_qy = autocov[n_history - idx]
    b = np.linalg.solve(cov_yy, cov_qy)
    return b, max(float(autocov[0] - cov_qy @ b), 0.0)


def ideal_rollouts(autocov: np.ndarray, noise_std: float, window: int | None, n_frames: int, n_trajectories: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Trajectories [n_trajectories, n_frames] of the ideal sampler: a stationary start, then each frame drawn from
    the exact conditional given the last `window` (None: all) noised frames, and noised itself before it becomes
    history."""
    window = n_frames if window is None else window
    q = np.empty((n_trajectories, n_frames))
    q[:, 0] = np.sqrt(autocov[0]) * rng.standard_normal(n_trajectories)
    y = noise_std * rng.standard_normal(q.shape)  # each frame's noise is drawn once, as the cache keeps it
    y[:, 0] += q[:, 0]
    for l in range(1, n_frames):
        k = min(l, window)
        b, v = conditional_coefficients(autocov, noise_std**2, k)
        q[:, l] = y[:, l - k:l] @ b + np.sqrt(v) * rng.standard_normal(n_trajectories)
        y[:, l] += q[:, l]
    return q


def ideal_scores(truth: dict[str, Any], noise_std: float, window: int | None, n_frames: int, n_trajectories: int,
                 repeats: int, seed: int) -> dict[str, Any]:
    """Expected ACF error and amplitude ratio of the ideal sampler over the slow modes, for an ensemble the size of a
    rollout (n_trajectories x n_frames) averaged over `repeats` ensembles, with `evaluate`'s estimator."""
    modes = truth["slow_modes"]
    step, lag_windows = truth_lags(truth, truth["frame_interval_ps"])
    rng = np.random.default_rng(seed)
    errors, amplitude = [], []
    for k, lags in enumerate(lag_windows):
        autocov = mode_autocovariance(modes["period_frames"][k], modes["damping_ratio"][k],
                                      modes["variance_A2"][k], max(n_frames, lags))
        exact = autocov[: lags + 1] / autocov[0]
        runs = ideal_rollouts(autocov, noise_std, window, n_frames, n_trajectories * repeats, rng)
        per_repeat, amp = [], []
        for ys in runs.reshape(repeats, n_trajectories, n_frames):
            acf = mode_acf(list(ys), lags)
            per_repeat.append(float(np.mean(np.abs(acf[1:] - exact[1:]))))
            amp.append(float(ys.std() / np.sqrt(autocov[0])))
        errors.append(float(np.mean(per_repeat)))
        amplitude.append(float(np.mean(amp)))
    return {"acf_error_exact": float(np.mean(errors)), "acf_error_per_mode": errors,
            "slow_mode_amplitude_ratio_exact": float(np.mean(amplitude))}
