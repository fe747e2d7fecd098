"""R3Diffuser: the VP-SDE on residue translations (FrameDiff's R3 diffuser, DDPM-style linear beta schedule).

Forward SDE in scaled units y = coordinate_scaling * x (x in Angstrom; 0.1 makes the data O(1)):
    dy = -b(t)/2 y dt + sqrt(b(t)) dW,  b(t) = min_b + t (max_b - min_b),  t in [0, 1],
so y_t | y_0 ~ N(alpha_t y_0, (1 - alpha_t^2) I) with alpha_t = exp(-B(t)/2), B(t) = int_0^t b. The prior is N(0, I)
in scaled units (std 10 A). Callers pass and get Angstrom; scores are gradients w.r.t. the *scaled* coordinates.
Translations are expected centred by the data pipeline; `reverse` removes the mean displacement so the centre does
not random-walk (FrameDiff's `center=True`).
"""

from __future__ import annotations

import torch

from starmd.diffusion.time import as_time, check_step, check_target


class R3Diffuser:
    """VP-SDE on [..., N, 3] translations; t is a float or a tensor [...] (one diffusion time per structure)."""

    def __init__(self, *, min_b: float = 0.1, max_b: float = 20.0, coordinate_scaling: float = 0.1):
        if not 0 < min_b <= max_b:
            raise ValueError(f"diffusion.r3: need 0 < min_b <= max_b, got min_b={min_b}, max_b={max_b}")
        if not coordinate_scaling > 0:
            raise ValueError(f"diffusion.r3.coordinate_scaling must be > 0, got {coordinate_scaling}")
        self.min_b = float(min_b)
        self.max_b = float(max_b)
        self.coordinate_scaling = float(coordinate_scaling)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.coordinate_scaling

    def _unscale(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.coordinate_scaling

    def b_t(self, t: torch.Tensor) -> torch.Tensor:
        return self.min_b + t * (self.max_b - self.min_b)

    def marginal_b_t(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) = int_0^t b(s) ds."""
        return t * self.min_b + 0.5 * t * t * (self.max_b - self.min_b)

    def alpha_t(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * self.marginal_b_t(t))

    def conditional_var(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha_t^2 (expm1 keeps it accurate for the small tau of contextual noise)."""
        return -torch.expm1(-self.marginal_b_t(t))

    def forward_marginal(self, x_0: torch.Tensor, t: torch.Tensor | float,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample x_t ~ p(x_t | x_0).

        Args: x_0 [..., N, 3] (A); t float or [...] in [0, 1]; generator on x_0's device.
        Returns: x_t [..., N, 3] (A), and the conditional score grad log p(x_t | x_0) [..., N, 3] (scaled units;
        0 at t = 0, where the marginal is a point mass and x_t == x_0 bit for bit).
        """
        t = as_time(t, x_0, x_0.shape[:-2])[..., None, None]  # [..., 1, 1]
        std = self.conditional_var(t).sqrt()
        z = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
        # mixing in Angstrom (no scale/unscale round trip) keeps t = 0 exact
        x_t = self.alpha_t(t) * x_0 + self._unscale(std * z)
        score = torch.where(std > 0, -z / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(z))
        return x_t, score

    def score(self, x_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p(x_t | x_0) [..., N, 3] in scaled units; x_t, x_0 in A (x_0 may be a network prediction)."""
        t = as_time(t, x_t, x_t.shape[:-2])[..., None, None]
        var = self.conditional_var(t)
        safe = torch.where(var > 0, var, torch.ones_like(var))
        diff = self._scale(x_t) - self.alpha_t(t) * self._scale(x_0)
        return torch.where(var > 0, -diff / safe, torch.zeros_like(diff))

    def score_scaling(self, t: torch.Tensor | float) -> torch.Tensor:
        """Per-coordinate RMS of the conditional score, 1 / sqrt(1 - alpha_t^2) (inf at t = 0), shape of t; divide
        the score error by it so the loss is O(1) at every t (FrameDiff)."""
        t = t if torch.is_tensor(t) else torch.tensor(float(t))
        return self.conditional_var(as_time(t, t)).rsqrt()

    def sample_ref(self, shape: tuple[int, ...], generator: torch.Generator | None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """Prior sample [*shape, 3] (A): N(0, I) in scaled units."""
        return self._unscale(torch.randn(*shape, 3, generator=generator, dtype=dtype, device=device))

    def reverse(self, x_t: torch.Tensor, score_t: torch.Tensor, t: torch.Tensor | float, dt: float,
                generator: torch.Generator | None, mask: torch.Tensor | None = None, noise_scale: float = 1.0,
                center: bool = True) -> torch.Tensor:
        """One Euler-Maruyama step of the reverse SDE from t to t - dt.

        Args: x_t [..., N, 3] (A); score_t [..., N, 3] (scaled units); t float or [...]; dt > 0; mask [..., N]
        (1 = move, 0 = keep bit for bit, e.g. padding); noise_scale multiplies the Brownian increment; center removes
        the mean displacement over the moving residues. Returns x_{t-dt} [..., N, 3] (A).
        """
        t = as_time(t, x_t, x_t.shape[:-2])
        check_step(t, dt)
        b = self.b_t(t)[..., None, None]  # [..., 1, 1]
        z = noise_scale * torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        drift = -0.5 * b * self._scale(x_t) - b * score_t  # f - g^2 score, scaled units
        perturb = drift * dt + b.sqrt() * (dt**0.5) * z  # [..., N, 3]
        m = torch.ones_like(x_t[..., 0]) if mask is None else mask.to(x_t.dtype)  # [..., N]
        perturb = perturb * m[..., None]
        if center:
            mean = perturb.sum(-2, keepdim=True) / m.sum(-1)[..., None, None].clamp_min(1)  # [..., 1, 3]
            perturb = perturb - mean * m[..., None]
        return x_t - self._unscale(perturb)

    def reverse_ancestral(self, x_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor | float, s: float,
                          generator: torch.Generator | None, mask: torch.Tensor | None = None,
                          center: bool = True, x0_var: torch.Tensor | None = None) -> torch.Tensor:
        """One ancestral step t -> s < t: a draw from the forward process's own posterior q(x_s | x_t, x_0) with x_0
        the denoiser's estimate (DDPM). Exact Gaussian algebra instead of a drift linearised over the step, so it
        stays stable where Euler-Maruyama overshoots (dt b(t) > 1 - alpha_t^2 near t = 0 on a coarse grid).

        Args as `reverse` with x_0 [..., N, 3] (A) in place of the score and s the time stepped to (s = 0: x_0).
        x0_var [..., N], a covariance across residues [..., N, N] or over all coordinates [..., 3N, 3N] (A^2,
        residue-major): the denoiser's uncertainty Var(x_0 | x_t)
        where it knows it (`posterior_var`), added through x_0's weight in the mean, so a Gaussian denoiser's draws
        are exact at any step size (Analytic-DPM); without it every step is too narrow by that term.
        """
        t = as_time(t, x_t, x_t.shape[:-2])
        check_target(t, s)
        t_, s_ = t[..., None, None], torch.as_tensor(s, dtype=x_t.dtype, device=x_t.device)
        alpha_t, alpha_s = self.alpha_t(t_), self.alpha_t(s_)
        var_t, var_s = self.conditional_var(t_), self.conditional_var(s_)
        alpha_ts = alpha_t / alpha_s
        var_ts = -torch.expm1(-(self.marginal_b_t(t_) - self.marginal_b_t(s_)))  # 1 - alpha_ts^2
        weight_0 = alpha_s * var_ts / var_t  # [..., 1, 1]
        mean = weight_0 * self._scale(x_0) + alpha_ts * var_s / var_t * self._scale(x_t)
        var = var_ts * var_s / var_t
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        if x0_var is not None and x0_var.dim() == x_t.dim():  # a covariance: correlated noise
            eye = torch.eye(x0_var.shape[-1], dtype=x_t.dtype, device=x_t.device)
            cov = var * eye + weight_0**2 * self._scale(self._scale(x0_var))  # [..., N, N] or [..., 3N, 3N]
            chol = torch.linalg.cholesky(cov + 1e-10 * eye)
            if x0_var.shape[-1] == x_t.shape[-2]:  # across residues, the same for each coordinate
                noise = chol @ z
            else:  # over all 3N coordinates
                noise = (chol @ z.flatten(-2)[..., None])[..., 0].unflatten(-1, z.shape[-2:])
        else:
            if x0_var is not None:
                var = var + weight_0**2 * self._scale(self._scale(x0_var))[..., None]  # [..., N, 1]
            noise = var.sqrt() * z
        step = mean + noise - self._scale(x_t)  # [..., N, 3] scaled units
        m = torch.ones_like(x_t[..., 0]) if mask is None else mask.to(x_t.dtype)  # [..., N]
        step = step * m[..., None]
        if center:
            step = step - step.sum(-2, keepdim=True) / m.sum(-1)[..., None, None].clamp_min(1) * m[..., None]
        return x_t + self._unscale(step)
