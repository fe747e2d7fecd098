"""The ideal sampler of the known-answer system (what a perfect model with contextual noise could reach)."""

from __future__ import annotations

import numpy as np
import pytest

from starmd.diffusion.r3 import R3Diffuser
from starmd.evaluation.ideal import (conditional_coefficients, contextual_noise_A, ideal_rollouts, ideal_scores,
                                     mode_autocovariance)

PERIOD, ZETA, VAR = 12.0, 0.2, 3.5


def _analytic_acf(lags: np.ndarray) -> np.ndarray:
    """Textbook position ACF of an underdamped Langevin oscillator."""
    omega_d = 2 * np.pi / PERIOD
    omega_0 = omega_d / np.sqrt(1 - ZETA**2)
    return np.exp(-ZETA * omega_0 * lags) * (np.cos(omega_d * lags) + ZETA / np.sqrt(1 - ZETA**2)
                                            * np.sin(omega_d * lags))


def _truth() -> dict:
    return {"frame_interval_ps": 0.5,
            "slow_modes": {"period_frames": [PERIOD], "damping_ratio": [ZETA], "variance_A2": [VAR],
                           "decorrelation_time_frames": [8.0]}}


def test_autocovariance_is_the_damped_oscillator():
    lags = np.arange(41)
    cov = mode_autocovariance(PERIOD, ZETA, VAR, 40)
    np.testing.assert_allclose(cov / VAR, _analytic_acf(lags), atol=1e-10)
    assert cov[0] == VAR and cov[6] < 0  # oscillates: anticorrelated half a period later


def test_one_frame_conditional_is_the_lag_one_regression():
    cov = mode_autocovariance(PERIOD, ZETA, VAR, 5)
    b, v = conditional_coefficients(cov, 0.0, 1)
    rho = cov[1] / cov[0]
    assert b == pytest.approx([rho]) and v == pytest.approx(VAR * (1 - rho**2))
    b_noisy, v_noisy = conditional_coefficients(cov, 1.0, 1)
    assert abs(b_noisy[0]) < abs(rho) and v_noisy > v  # noisy history: shrunk towards the mean, wider


def test_clean_history_reproduces_the_dynamics_and_markov_cannot():
    cov = mode_autocovariance(PERIOD, ZETA, VAR, 400)
    rng = np.random.default_rng(0)
    full = ideal_rollouts(cov, 0.0, 8, 400, 400, rng)
    markov = ideal_rollouts(cov, 0.0, 1, 400, 400, rng)
    lags = np.arange(13)

    def acf(q):
        return np.array([np.mean(q[:, : q.shape[1] - k] * q[:, k:]) for k in lags]) / VAR  # exact mean is 0

    np.testing.assert_allclose(acf(full), _analytic_acf(lags), atol=0.03)
    np.testing.assert_allclose(acf(markov), (cov[1] / cov[0]) ** lags, atol=0.03)  # AR(1): no oscillation
    assert acf(full).min() < -0.3 and acf(markov).min() > 0


def test_scores_rank_noise_and_memory():
    truth = _truth()
    r3 = R3Diffuser()
    assert contextual_noise_A(0.0, r3) == 0.0
    assert contextual_noise_A(0.05, r3) == pytest.approx(1.74, abs=0.01)  # the figure quoted in issue 13
    kw = dict(n_frames=200, n_trajectories=4, repeats=30, seed=1)
    clean = ideal_scores(truth, 0.0, 8, **kw)
    markov = ideal_scores(truth, 0.0, 1, **kw)
    noisy = ideal_scores(truth, contextual_noise_A(0.1, r3), 8, **kw)
    assert clean["acf_error_exact"] < 0.06 < 0.15 < markov["acf_error_exact"]
    assert clean["acf_error_exact"] < noisy["acf_error_exact"]
    assert clean["slow_mode_amplitude_ratio_exact"] == pytest.approx(1.0, abs=0.05)
    assert ideal_scores(truth, 0.0, 8, **kw) == clean  # seeded
