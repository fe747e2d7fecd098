"""IGSO3: the density is the Leach et al. series with sigma^2 = Brownian time, the score is its log-derivative, and
the table sampler draws from the density."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import cumulative_trapezoid, quad

from starmd.geometry import rotmat_to_rotvec, rotvec_to_rotmat
from starmd.geometry.igso3 import IGSO3, igso3_angle_density, igso3_angle_score, igso3_score

F64 = torch.float64


def _density(omega: float | np.ndarray, sigma: float) -> np.ndarray:
    return igso3_angle_density(torch.as_tensor(omega, dtype=F64), sigma).numpy()


def _l_series_angle_density(omega: np.ndarray, sigma: float, l_max: int = 2000) -> np.ndarray:
    """Independent reference, Leach et al.: (1 - cos w)/pi * sum_l (2l+1) exp(-l(l+1) eps^2) sin((l+1/2) w)/sin(w/2)
    with eps = sigma / sqrt(2)."""
    eps2 = sigma**2 / 2
    l = np.arange(l_max + 1)[:, None]
    f = ((2 * l + 1) * np.exp(-l * (l + 1) * eps2) * np.sin((l + 0.5) * omega) / np.sin(omega / 2)).sum(0)
    return (1 - np.cos(omega)) / np.pi * f


def _cdf(sigma: float):
    """Numerical CDF of the angle density on a fine grid (for KS tests)."""
    grid = np.linspace(0, math.pi, 200_001)
    cdf = cumulative_trapezoid(_density(grid, sigma), grid, initial=0)
    return lambda w: np.interp(w, grid, cdf / cdf[-1])


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.5, 1.5, 3.0])
def test_angle_density_integrates_to_one(sigma):
    total, _ = quad(lambda w: float(_density(w, sigma)), 0, math.pi, points=[sigma, 3 * sigma], limit=200)
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0, 1.5, 3.0])
def test_winding_form_equals_leach_l_series(sigma):
    omega = np.linspace(0.01, math.pi - 1e-3, 400)
    ref = _l_series_angle_density(omega, sigma)
    np.testing.assert_allclose(_density(omega, sigma), ref, rtol=1e-9, atol=1e-12 * ref.max())


def test_small_sigma_is_isotropic_gaussian_with_per_axis_std_sigma():
    """sigma -> 0: the angle law is Maxwell(sigma) (|N(0, sigma^2 I_3)|), and sampled rotation vectors have
    covariance sigma^2 I_3."""
    sigma = 0.02
    omega = np.linspace(1e-4, 6 * sigma, 300)
    maxwell = stats.maxwell.pdf(omega, scale=sigma)
    np.testing.assert_allclose(_density(omega, sigma), maxwell, rtol=2e-4, atol=1e-6 * maxwell.max())
    v = IGSO3(1.5).sample_rotvec(torch.full((40_000,), sigma, dtype=F64), torch.Generator().manual_seed(0))
    cov = torch.cov(v.T) / sigma**2  # [3, 3]
    np.testing.assert_allclose(cov.numpy(), np.eye(3), atol=0.03)


def test_sigma_squared_is_additive_brownian_time():
    """Heat-kernel semigroup: R1 R2 with R_i ~ IGSO3(sigma_i) is IGSO3(sqrt(sigma_1^2 + sigma_2^2)) (KS on angles)."""
    gen = torch.Generator().manual_seed(1)
    table = IGSO3(1.5)
    n = 20_000
    r1 = rotvec_to_rotmat(table.sample_rotvec(torch.full((n,), 0.3, dtype=F64), gen))
    r2 = rotvec_to_rotmat(table.sample_rotvec(torch.full((n,), 0.4, dtype=F64), gen))
    angles = rotmat_to_rotvec(r1 @ r2).norm(dim=-1).numpy()
    assert stats.kstest(angles, _cdf(0.5)).pvalue > 0.01
    assert stats.kstest(angles, _cdf(0.55)).pvalue < 1e-6  # the test can tell a wrong time apart


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.5, 1.5])
def test_angle_score_matches_finite_difference_of_log_f(sigma):
    omega = np.linspace(0.02, math.pi - 0.02, 40)
    omega = omega[_density(omega, sigma) > 1e-200]  # log p is finite

    def log_f(w):
        return np.log(_density(w, sigma)) - np.log((1 - np.cos(w)) / np.pi)

    h = 1e-6
    fd = (log_f(omega + h) - log_f(omega - h)) / (2 * h)
    score = igso3_angle_score(torch.tensor(omega, dtype=F64), sigma).numpy()
    np.testing.assert_allclose(score, fd, rtol=1e-5, atol=1e-5 / sigma**2)


def test_score_vector_is_riemannian_gradient_of_log_f():
    """d/ds log f(angle(exp(v) exp(s e_i))) at s = 0 equals igso3_score(v)_i, for angles from ~0 to ~pi."""
    sigma = 0.7
    gen = torch.Generator().manual_seed(2)
    axis = torch.nn.functional.normalize(torch.randn(6, 3, generator=gen, dtype=F64), dim=-1)
    v = axis * torch.tensor([1e-7, 0.01, 0.5, 1.5, 2.8, math.pi - 1e-4], dtype=F64)[:, None]  # [6, 3]

    def log_f(rot):
        w = rotmat_to_rotvec(rot).norm(dim=-1)
        return torch.log(igso3_angle_density(w, sigma) * math.pi / (1 - torch.cos(w)))

    h = 1e-5
    eye = torch.eye(3, dtype=F64)
    fd = torch.stack([(log_f(rotvec_to_rotmat(v) @ rotvec_to_rotmat(h * e))
                       - log_f(rotvec_to_rotmat(v) @ rotvec_to_rotmat(-h * e))) / (2 * h) for e in eye], -1)
    score = igso3_score(v, torch.tensor(sigma, dtype=F64))
    np.testing.assert_allclose(score[1:].numpy(), fd[1:].numpy(), atol=2e-5)  # FD of log(p/(1-cos)) fails at 0
    np.testing.assert_allclose(score[0].numpy(), -v[0].numpy() / sigma**2 * (1 - sigma**2 / 12), rtol=0.01)


def test_score_is_finite_and_gaussian_at_tiny_sigma_and_far_tails():
    """Where the l-series would have cancelled to noise: tiny sigma, and angles 30 sigma out."""
    omega = torch.tensor([0.0, 1e-5, 3e-3, 0.3, 3.0], dtype=F64)
    score = igso3_angle_score(omega, 0.01)
    assert torch.isfinite(score).all()
    np.testing.assert_allclose(score[:4].numpy(), -omega[:4].numpy() / 1e-4, rtol=1e-4)


@pytest.mark.parametrize("sigma", [0.1, 1.5])
def test_sampled_angles_match_density_ks(sigma):
    gen = torch.Generator().manual_seed(3)
    angles = IGSO3(1.5).sample_angle(torch.full((20_000,), sigma, dtype=F64), gen).numpy()
    assert stats.kstest(angles, _cdf(sigma)).pvalue > 0.01
    assert angles.min() >= 0 and angles.max() <= math.pi


def test_sampler_between_table_rows_float32_mixed_sigma_batch():
    """A batch mixing two sigmas that fall between table rows, in float32: each half matches its own density."""
    table = IGSO3(1.5, num_sigma=64)
    sigma = torch.cat([torch.full((10_000,), 0.123), torch.full((10_000,), 0.987)]).reshape(2, 10_000)
    angles = table.sample_angle(sigma, torch.Generator().manual_seed(4))
    assert angles.dtype == torch.float32 and angles.shape == (2, 10_000)
    assert stats.kstest(angles[0].numpy(), _cdf(0.123)).pvalue > 0.01
    assert stats.kstest(angles[1].numpy(), _cdf(0.987)).pvalue > 0.01


def test_sampler_is_seeded_exact_at_zero_and_checks_range():
    table = IGSO3(1.5)
    sigma = torch.tensor([0.0, 0.2, 1.0], dtype=F64)
    a = table.sample_rotvec(sigma, torch.Generator().manual_seed(5))
    b = table.sample_rotvec(sigma, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(a[0], torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="sigma must lie in"):
        table.sample_angle(torch.tensor([1.6]), None)
    with pytest.raises(ValueError, match="sigma must lie in"):
        igso3_angle_density(torch.tensor([0.5]), 0.0)


def test_score_rms_matches_monte_carlo():
    table = IGSO3(1.5)
    gen = torch.Generator().manual_seed(6)
    for sigma in (0.05, 0.4, 1.5):
        s = torch.full((20_000,), sigma, dtype=F64)
        score = igso3_score(table.sample_rotvec(s, gen), s)
        mc = score.pow(2).mean().sqrt().item()  # mean over samples and axes
        assert table.score_rms(torch.tensor(sigma, dtype=F64)).item() == pytest.approx(mc, rel=0.03)
