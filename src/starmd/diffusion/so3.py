"""SO3Diffuser: Brownian motion on residue rotations with IGSO3 marginals (FrameDiff's SO(3) diffuser).

Schedule. sigma_s(t) = log(t e^{max_sigma} + (1 - t) e^{min_sigma}) (FrameDiff's "logarithmic", min_sigma at t = 0,
max_sigma at t = 1). The forward SDE is dR = R g(t) dB (body-frame Brownian increments) with g(t)^2 = d sigma_s^2/dt,
so the exact marginal from R_0 at t = 0 is IGSO3(R_0, sigma(t)) with Brownian time
    sigma(t)^2 = sigma_s(t)^2 - min_sigma^2.
FrameDiff uses sigma_s itself as the marginal, which is not the marginal of its own SDE at small t and adds
min_sigma of noise at t = 0; with sigma(t) the t = 0 marginal is the data itself (contextual noise at tau = 0 is a
no-op) and sigma(1) = sqrt(1.5^2 - 0.1^2) = 1.4967 instead of 1.5.

Frames. Noise is composed on the right, R_t = R_0 exp(hat(v)), v ~ IGSO3(0, sigma(t)) rotation vectors in the local
(body) frame of the residue; scores are tangent vectors in the same body frame of R_t, score = log(R_0^T R_t) / omega *
d log f / d omega, and `reverse` composes its update on the right too. (IGSO3 is conjugation invariant, so left
noise would give the same law of R_t; the frame only matters for how a score vector is read.)

Prior. Haar-uniform rotations. The reverse process must start from a law that does not depend on the unknown R_0;
IGSO3(R_0, 1.4967) is not quite uniform (total variation 0.13 between its angle law and the Haar angle law), a gap
FrameDiff accepts too.
"""

from __future__ import annotations

import math

import torch

from starmd.diffusion.time import as_time, check_step, check_target
from starmd.geometry.igso3 import IGSO3, igso3_score
from starmd.geometry.so3 import random_rotation, rotmat_to_rotvec, rotvec_to_rotmat

SCHEDULES = ("logarithmic",)


class SO3Diffuser:
    """IGSO3 diffusion on [..., N, 3, 3] rotations; t is a float or a tensor [...] (one time per structure)."""

    def __init__(self, *, min_sigma: float = 0.1, max_sigma: float = 1.5, schedule: str = "logarithmic",
                 num_sigma: int = 256, num_omega: int = 1024):
        if schedule not in SCHEDULES:
            raise ValueError(f"diffusion.so3.schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not 0 < min_sigma < max_sigma:
            raise ValueError(f"diffusion.so3: need 0 < min_sigma < max_sigma, got {min_sigma}, {max_sigma}")
        self.min_sigma = float(min_sigma)
        self.max_sigma = float(max_sigma)
        self.schedule = schedule
        self._growth = math.expm1(self.max_sigma - self.min_sigma)  # e^{max - min} - 1
        sigma_1 = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))
        self.igso3 = IGSO3(sigma_1, num_sigma=num_sigma, num_omega=num_omega)

    def _delta(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_s(t) - min_sigma = log1p(t (e^{max-min} - 1)), exact near t = 0."""
        return torch.log1p(t * self._growth)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Marginal IGSO3 sigma(t) = sqrt(sigma_s^2 - min_sigma^2) (Brownian time sigma^2); 0 at t = 0."""
        d = self._delta(t)
        return (d * (2 * self.min_sigma + d)).sqrt()

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = sqrt(d sigma^2 / dt) = sqrt(2 sigma_s(t) sigma_s'(t))."""
        return (2 * (self.min_sigma + self._delta(t)) * self._growth / (1 + t * self._growth)).sqrt()

    def forward_marginal(self, rots_0: torch.Tensor, t: torch.Tensor | float,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample R_t ~ IGSO3(R_0, sigma(t)).

        Args: rots_0 [..., N, 3, 3]; t float or [...] in [0, 1]; generator on rots_0's device.
        Returns: rots_t [..., N, 3, 3] and the score [..., N, 3] (body frame of R_t; 0 at t = 0, where R_t == R_0
        bit for bit).
        """
        t = as_time(t, rots_0, rots_0.shape[:-3])
        sigma = self.sigma(t)[..., None].expand(rots_0.shape[:-2])  # [..., N]
        v = self.igso3.sample_rotvec(sigma, generator)  # [..., N, 3]
        noisy = sigma[..., None, None] > 0
        rots_t = torch.where(noisy, rots_0 @ rotvec_to_rotmat(v), rots_0)
        return rots_t, self._score(v, sigma)

    def _score(self, rotvec: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """igso3_score with the point-mass case sigma = 0 set to 0 (NaN-free gradients through the unused branch)."""
        pos = sigma > 0
        score = igso3_score(rotvec, torch.where(pos, sigma, torch.ones_like(sigma)))
        return torch.where(pos[..., None], score, torch.zeros_like(score))

    def score(self, rots_t: torch.Tensor, rots_0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p(R_t | R_0) [..., N, 3] in the body frame of R_t; rots_0 may be a network's x0 prediction."""
        t = as_time(t, rots_t, rots_t.shape[:-3])
        sigma = self.sigma(t)[..., None].expand(rots_t.shape[:-2])  # [..., N]
        return self._score(rotmat_to_rotvec(rots_0.transpose(-1, -2) @ rots_t), sigma)

    def score_scaling(self, t: torch.Tensor | float) -> torch.Tensor:
        """Per-axis RMS of the score under IGSO3(sigma(t)), sqrt(E|score|^2 / 3) (~1/sigma; inf at t = 0), shape of
        t; divide the score error by it so the loss is O(1) at every t (FrameDiff)."""
        t = t if torch.is_tensor(t) else torch.tensor(float(t))
        return self.igso3.score_rms(self.sigma(as_time(t, t)))

    def sample_ref(self, shape: tuple[int, ...], generator: torch.Generator | None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """Prior sample [*shape, 3, 3]: Haar-uniform rotations (see the module docstring for why)."""
        return random_rotation(shape, generator=generator, dtype=dtype, device=device)

    def reverse(self, rots_t: torch.Tensor, score_t: torch.Tensor, t: torch.Tensor | float, dt: float,
                generator: torch.Generator | None, mask: torch.Tensor | None = None,
                noise_scale: float = 1.0) -> torch.Tensor:
        """One geodesic random-walk step of the reverse SDE from t to t - dt.

        R_{t-dt} = R_t exp(hat(g^2 score dt + noise_scale g sqrt(dt) z)), z ~ N(0, I_3) in the body frame.
        Args: rots_t [..., N, 3, 3]; score_t [..., N, 3] (body frame); t float or [...]; dt > 0; mask [..., N]
        (1 = move, 0 = keep bit for bit). Returns rots [..., N, 3, 3].
        """
        t = as_time(t, rots_t, rots_t.shape[:-3])
        check_step(t, dt)
        g = self.diffusion_coef(t)[..., None, None]  # [..., 1, 1]
        z = torch.randn(score_t.shape, generator=generator, dtype=rots_t.dtype, device=rots_t.device)
        perturb = g * g * score_t * dt + noise_scale * g * (dt**0.5) * z  # [..., N, 3]
        rots = rots_t @ rotvec_to_rotmat(perturb)
        if mask is None:
            return rots
        return torch.where(mask.bool()[..., None, None], rots, rots_t)

    def reverse_ancestral(self, rots_t: torch.Tensor, rots_0: torch.Tensor, t: torch.Tensor | float, s: float,
                          generator: torch.Generator | None, mask: torch.Tensor | None = None,
                          x0_var: torch.Tensor | None = None) -> torch.Tensor:
        """One ancestral step t -> s < t: the Brownian bridge from the estimate R_0 to R_t, read on the geodesic
        (exact in the small-angle limit): R_s = R_0 exp(lam w + sqrt(sigma_s^2 (1 - lam)) z), w = log(R_0^T R_t),
        lam = sigma_s^2 / sigma_t^2, z ~ N(0, I_3) in the body frame. s = 0 gives R_0.

        Args: rots_t, rots_0 [..., N, 3, 3]; t float or [...]; s the time stepped to; mask [..., N] (0 = keep);
        x0_var [..., N] (rad^2 per axis): the denoiser's Var(R_0 | R_t) where known, added with weight (1 - lam)^2.
        """
        t = as_time(t, rots_t, rots_t.shape[:-3])
        check_target(t, s)
        var_t = (self.sigma(t) ** 2)[..., None, None]  # [..., 1, 1]
        var_s = self.sigma(torch.as_tensor(s, dtype=rots_t.dtype, device=rots_t.device)) ** 2
        lam = var_s / var_t.clamp_min(torch.finfo(rots_t.dtype).tiny)
        w = rotmat_to_rotvec(rots_0.transpose(-1, -2) @ rots_t)  # [..., N, 3]
        z = torch.randn(w.shape, generator=generator, dtype=rots_t.dtype, device=rots_t.device)
        var = (var_s * (1 - lam)).clamp_min(0)  # [..., 1, 1]
        if x0_var is not None:
            var = var + (1 - lam) ** 2 * x0_var[..., None]  # [..., N, 1]
        rots = rots_0 @ rotvec_to_rotmat(lam * w + var.sqrt() * z)
        if mask is None:
            return rots
        return torch.where(mask.bool()[..., None, None], rots, rots_t)
