"""IGSO(3), the isotropic Gaussian on SO(3): density, score and sampling of the law of Brownian motion on SO(3).

Convention (Leach et al. 2022, "Denoising diffusion probabilistic models on SO(3)", with sigma = sqrt(2) * epsilon).
The density w.r.t. the normalised Haar measure of a rotation whose angle is omega is the series

    f(omega; sigma) = sum_l (2l + 1) exp(-l(l+1) sigma^2 / 2) sin((l + 1/2) omega) / sin(omega / 2),

and the marginal density of the angle on [0, pi] is p(omega) = (1 - cos omega) / pi * f. The degree-l characters are
eigenfunctions of the Laplace-Beltrami operator with eigenvalue -l(l+1) (metric: |rotation vector| = angle), so f is
exp(t/2 * Laplacian) at t = sigma^2: the heat kernel of *standard* Brownian motion (generator Laplacian / 2) at time
sigma^2, like N(0, t I) in R^3. For small sigma the rotation vector is ~N(0, sigma^2 I_3), per-axis std sigma, and p
tends to the Maxwell density sqrt(2/pi) omega^2 exp(-omega^2 / (2 sigma^2)) / sigma^3 (tests/test_igso3.py checks
this limit, the normalisation and the agreement with the l-series above).

We evaluate the same function through its Poisson-resummed (winding) form, an exact identity:

    f = sqrt(pi) (sqrt(2)/sigma)^3 e^{sigma^2/8} / sin(omega/2)
        * sum_{k in Z} (-1)^k (omega - 2 pi k)/2 exp(-(omega - 2 pi k)^2 / (2 sigma^2))

(Poisson summation over the odd integers m = 2l + 1 of m e^{-m^2 sigma^2/8} sin(m omega/2); the k-th term carries
the geodesics that wrap k extra times around the rotation axis.)

Written relative to the k = 0 Gaussian it has neither cancellation nor underflow at small sigma, where the l-series
needs l ~ 10 / sigma terms and loses every digit in the tails (a score of garbage for a bad x0 prediction). Terms
|k| <= K with K(K+1) > 50 sigma^2 / (2 pi^2) (K = 2 at sigma = 1.5, 6 at SIGMA_MAX) leave a relative error below e^-50.

Sampling is by inverse CDF: `IGSO3` tabulates the angle quantiles on a (log sigma) x (standard-normal quantile z)
grid, rebuilt in well under a second at construction (no cache file), and interpolates bilinearly on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import cumulative_trapezoid
from scipy.special import ndtr

SIGMA_MAX = 4.0  # above this IGSO3 is uniform to 1e-6 and the winding sum would need more terms
_SIGMA_TABLE_MIN = 1e-3  # below this the tables reuse the first row in units of sigma (the Maxwell limit, error ~1e-6)
_Z_MAX = 7.0  # quantile table spans z in [-7, 7]: probability 2.6e-12 is clamped to the end points
_OMEGA_EPS = 1e-4  # below this the even smooth functions of omega are evaluated at _OMEGA_EPS (relative error < 1e-8)


def _check_sigma(sigma: torch.Tensor, allow_zero: bool, sigma_max: float = SIGMA_MAX) -> None:
    low_ok = (sigma >= 0) if allow_zero else (sigma > 0)
    if not bool((torch.isfinite(sigma) & low_ok & (sigma <= sigma_max * (1 + 1e-9))).all()):
        lo = "[0" if allow_zero else "(0"
        raise ValueError(f"IGSO3 sigma must lie in {lo}, {sigma_max:g}], got range "
                         f"[{sigma.min().item():g}, {sigma.max().item():g}]")


def _windings(omega: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R and dR/domega, the k != 0 terms of the winding sum divided by the k = 0 Gaussian (float64, shape of omega).

    With B = omega/2 + R: f = sqrt(pi) (sqrt(2)/sigma)^3 e^{sigma^2/8 - omega^2/(2 sigma^2)} B / sin(omega/2).
    For k and -k the relative exponents are 2 pi k (omega -+ pi k) / sigma^2 <= 0 on [0, pi], so nothing overflows.
    """
    # first neglected winding K+1 is below e^{-2 pi^2 K (K+1) / sigma^2} <= e^-50 relative, anywhere on [0, pi]
    n_k = 1
    while n_k * (n_k + 1) <= 50 * sigma.max().item() ** 2 / (2 * math.pi**2):
        n_k += 1
    k = torch.arange(1, n_k + 1, dtype=torch.float64, device=omega.device)  # [K]
    w = omega.unsqueeze(-1)  # [..., 1]
    s2 = (sigma * sigma).unsqueeze(-1)  # [..., 1]
    sign = 1 - 2 * (k % 2)  # (-1)^k
    e_pos = torch.exp(2 * math.pi * k * (w - math.pi * k) / s2)  # [..., K] term +k
    e_neg = torch.exp(-2 * math.pi * k * (w + math.pi * k) / s2)  # [..., K] term -k
    r = sign * ((w - 2 * math.pi * k) * e_pos + (w + 2 * math.pi * k) * e_neg) / 2
    dr = sign * ((0.5 + (w - 2 * math.pi * k) * math.pi * k / s2) * e_pos
                 + (0.5 - (w + 2 * math.pi * k) * math.pi * k / s2) * e_neg)
    return r.sum(-1), dr.sum(-1)


def igso3_angle_density(omega: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Marginal density p(omega) = (1 - cos omega)/pi * f(omega; sigma) of the rotation angle, omega in [0, pi].

    Computed as (4 sqrt(2) / sqrt(pi)) sigma^-3 e^{sigma^2/8 - omega^2/(2 sigma^2)} B(omega) sin(omega/2), which has no
    division (1 - cos omega = 2 sin^2(omega/2) cancels the 1/sin(omega/2) of f). Output dtype follows omega.
    """
    w = omega.to(torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=omega.device)
    _check_sigma(s, allow_zero=False)
    w, s = torch.broadcast_tensors(w, s)
    r, _ = _windings(w, s)
    log_prefactor = math.log(4 * math.sqrt(2) / math.sqrt(math.pi)) - 3 * torch.log(s) + s * s / 8
    p = torch.exp(log_prefactor - w * w / (2 * s * s)) * (w / 2 + r) * torch.sin(w / 2)
    return p.to(omega.dtype)


def _dlogf_over_omega(omega: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(d/domega log f) / omega, an even smooth function, finite at omega = 0 (float64).

    d log f / domega = -omega/sigma^2 + (omega R' - R)/(omega B) + (1/omega - cot(omega/2)/2); the last two terms
    are O(omega) and written so that neither cancels catastrophically.
    """
    w = omega.clamp_min(_OMEGA_EPS)
    r, dr = _windings(w, sigma)
    windings = (w * dr - r) / (w * w * (w / 2 + r))
    cot_term = torch.where(omega < 1e-2, 1 / 12 + w * w / 720 + w**4 / 30240,
                           (1 / w - 0.5 / torch.tan(w / 2)) / w)
    return -1 / (sigma * sigma) + windings + cot_term


def igso3_angle_score(omega: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """d/domega log f(omega; sigma) (score of the Haar density, not of the angle marginal p), omega in [0, pi]."""
    w = omega.to(torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=omega.device)
    _check_sigma(s, allow_zero=False)
    w, s = torch.broadcast_tensors(w, s)
    return (w * _dlogf_over_omega(w, s)).to(omega.dtype)


def igso3_score(rotvec: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of IGSO3(identity, sigma) at exp(rotvec) as a tangent vector [..., 3]: rotvec/|rotvec| * dlogf/domega.

    rotvec [..., 3] with |rotvec| <= pi (a log map output); sigma [...] > 0. This is the Riemannian gradient of log f
    in the frame in which rotvec is expressed (the body frame for rotvec = log(R_0^T R_t)).
    """
    v = rotvec.to(torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64, device=rotvec.device).expand(v.shape[:-1])
    _check_sigma(s, allow_zero=False)
    omega = v.norm(dim=-1)  # [...]
    return (v * _dlogf_over_omega(omega, s).unsqueeze(-1)).to(rotvec.dtype)


def _random_axis(shape: torch.Size, generator: torch.Generator | None, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    g = torch.randn(*shape, 3, generator=generator, dtype=dtype, device=device)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


class IGSO3:
    """Sampler and score-norm table for IGSO3(sigma), sigma in [0, sigma_max]; built in < 1 s, so nothing is cached.

    Rows: num_sigma values of sigma, log-spaced over [1e-3, sigma_max]; columns: num_omega standard-normal quantiles
    z in [-7, 7]. Entry = omega(z) / sigma with omega the angle whose CDF equals Phi(z). Storing omega / sigma makes
    the small-sigma rows identical (Maxwell shape), so sigma -> 0 interpolates exactly and sigma = 0 gives omega = 0;
    the z axis resolves both tails (a uniform u axis would smear its last bin up to pi).
    """

    def __init__(self, sigma_max: float, num_sigma: int = 256, num_omega: int = 1024, num_grid: int = 2049):
        if not 0 < sigma_max <= SIGMA_MAX:
            raise ValueError(f"IGSO3 sigma_max must lie in (0, {SIGMA_MAX}], got {sigma_max}")
        if num_sigma < 2 or num_omega < 2:
            raise ValueError(f"IGSO3 num_sigma and num_omega must be >= 2, got {num_sigma}, {num_omega}")
        self.sigma_max = float(sigma_max)
        self._log_lo = math.log(min(_SIGMA_TABLE_MIN, self.sigma_max / 2))
        self._dlog = (math.log(self.sigma_max) - self._log_lo) / (num_sigma - 1)
        self._dz = 2 * _Z_MAX / (num_omega - 1)
        sigmas = torch.exp(self._log_lo + self._dlog * torch.arange(num_sigma, dtype=torch.float64))  # [S]
        # per-row omega grid covering the mass: 14 sigma is e^-98 into the Gaussian tail
        frac = torch.linspace(0, 1, num_grid, dtype=torch.float64)
        omega = torch.minimum(14 * sigmas, torch.tensor(math.pi, dtype=torch.float64))[:, None] * frac  # [S, G]
        p = igso3_angle_density(omega, sigmas[:, None]).numpy()  # [S, G]
        score2 = (igso3_angle_score(omega, sigmas[:, None]) ** 2).numpy()  # [S, G]
        om = omega.numpy()
        cdf = cumulative_trapezoid(p, om, axis=-1, initial=0)  # [S, G]
        sf = cumulative_trapezoid(p[:, ::-1], -om[:, ::-1], axis=-1, initial=0)[:, ::-1]  # upper tail, no cancellation
        total = cdf[:, -1:]
        z = np.linspace(-_Z_MAX, _Z_MAX, num_omega)
        quantile = np.empty((num_sigma, num_omega))
        low = z <= 0
        for i in range(num_sigma):
            quantile[i, low] = np.interp(ndtr(z[low]), cdf[i] / total[i], om[i])
            quantile[i, ~low] = np.interp(ndtr(-z[~low]), sf[i, ::-1] / total[i], om[i, ::-1])
        # E|score|^2 / 3 per component; times sigma -> 1 as sigma -> 0 (Gaussian: 1/sigma^2 per axis)
        rms = np.sqrt(np.trapezoid(p * score2, om, axis=-1) / total[:, 0] / 3)
        self._quantile = torch.from_numpy(quantile / sigmas.numpy()[:, None])  # [S, Z] omega / sigma
        self._sigma_rms = torch.from_numpy(rms * sigmas.numpy())[:, None]  # [S, 1]
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self._quantile.to(device), self._sigma_rms.to(device))
        return self._on_device[device]

    def _interp(self, table: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Bilinear interpolation of table [S, Z] at (log sigma, z), both float64 [...]."""
        n_s, n_z = table.shape
        s = ((torch.log(sigma.clamp_min(math.exp(self._log_lo))) - self._log_lo) / self._dlog).clamp(0, n_s - 1)
        i0 = s.floor().long().clamp(max=max(n_s - 2, 0))
        ws = s - i0
        if n_z == 1:
            return table[i0, 0] * (1 - ws) + table[(i0 + 1).clamp(max=n_s - 1), 0] * ws
        zz = (z.clamp(-_Z_MAX, _Z_MAX) + _Z_MAX) / self._dz
        j0 = zz.floor().long().clamp(max=n_z - 2)
        wz = zz - j0
        lo = table[i0, j0] * (1 - wz) + table[i0, j0 + 1] * wz
        hi = table[i0 + 1, j0] * (1 - wz) + table[i0 + 1, j0 + 1] * wz
        return lo * (1 - ws) + hi * ws

    def sample_angle(self, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One angle omega ~ p(.; sigma) per element of sigma [...] (>= 0; sigma = 0 gives omega = 0 exactly)."""
        _check_sigma(sigma, allow_zero=True, sigma_max=self.sigma_max)
        z = torch.randn(sigma.shape, generator=generator, dtype=sigma.dtype, device=sigma.device)
        s64 = sigma.to(torch.float64)
        quantile, _ = self._tables(sigma.device)
        return (s64 * self._interp(quantile, s64, z.to(torch.float64))).to(sigma.dtype)

    def sample_rotvec(self, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Rotation vectors [..., 3] of IGSO3(identity, sigma) samples: uniform axis times a sampled angle."""
        omega = self.sample_angle(sigma, generator)
        return _random_axis(sigma.shape, generator, sigma.dtype, sigma.device) * omega.unsqueeze(-1)

    def score_rms(self, sigma: torch.Tensor) -> torch.Tensor:
        """sqrt(E|score|^2 / 3), the per-axis RMS of the score under IGSO3(sigma) (inf at sigma = 0), shape of sigma."""
        _check_sigma(sigma, allow_zero=True, sigma_max=self.sigma_max)
        s64 = sigma.to(torch.float64)
        _, sigma_rms = self._tables(sigma.device)
        return (self._interp(sigma_rms, s64, torch.zeros_like(s64)) / s64).to(sigma.dtype)
