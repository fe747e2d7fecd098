"""SE3Diffuser: independent R3 (translations) and SO(3) (rotations) diffusion of residue frames (FrameDiff).

It only holds the two sub-diffusers, sends each its half of a `Rigid`, applies the diffuse mask and names the
outputs. Rigids are in Angstrom; translation scores are in scaled units (see `R3Diffuser`), rotation scores are body-
frame tangent vectors (see `SO3Diffuser`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from starmd.config import section_keys
from starmd.diffusion.r3 import R3Diffuser
from starmd.diffusion.so3 import SO3Diffuser
from starmd.diffusion.time import as_time
from starmd.geometry.chain import local_trace_rotation
from starmd.geometry.rigid import Rigid
from starmd.geometry.so3 import rotmat_to_rotvec, rotvec_to_rotmat


def _build(cls: type, section: str, conf: Mapping[str, Any] | None) -> Any:
    """cls(**conf), with a misspelt config key reported by name instead of a bare TypeError."""
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**section_keys(conf or {}, known, f"diffusion.{section}"))


class SE3Diffuser:
    """Build from the `diffusion` config section: SE3Diffuser(**config["diffusion"])."""

    def __init__(self, *, r3: Mapping[str, Any] | None = None, so3: Mapping[str, Any] | None = None):
        self.r3 = _build(R3Diffuser, "r3", r3)
        self.so3 = _build(SO3Diffuser, "so3", so3)

    def forward_marginal(self, rigids_0: Rigid, t: torch.Tensor | float, generator: torch.Generator | None,
                         diffuse_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Noise clean frames to diffusion time t.

        Args: rigids_0 Rigid [..., N] (A); t float or [...] in [0, 1] (one time per structure, e.g. [B, L] for
        frames [B, L, N]); generator on the rigids' device; diffuse_mask [..., N] (1 = noise, 0 = keep exactly).
        Returns dict: rigids_t Rigid [..., N]; trans_score [..., N, 3] (scaled units); rot_score [..., N, 3] (body
        frame); trans_score_scaling, rot_score_scaling [...] (per-component score RMS; divide errors by them).
        Scores are 0 where the mask is 0 and at t = 0.
        """
        t = as_time(t, rigids_0.trans, rigids_0.shape[:-1])  # [...]
        trans_t, trans_score = self.r3.forward_marginal(rigids_0.trans, t, generator)
        rots_t, rot_score = self.so3.forward_marginal(rigids_0.rots, t, generator)
        if diffuse_mask is not None:
            m = diffuse_mask.bool()  # [..., N]
            trans_t = torch.where(m[..., None], trans_t, rigids_0.trans)
            rots_t = torch.where(m[..., None, None], rots_t, rigids_0.rots)
            trans_score = trans_score * m[..., None]
            rot_score = rot_score * m[..., None]
        return {
            "rigids_t": Rigid(rots_t, trans_t),
            "trans_score": trans_score,
            "rot_score": rot_score,
            "trans_score_scaling": self.r3.score_scaling(t),
            "rot_score_scaling": self.so3.score_scaling(t),
        }

    def contextual_noise(self, rigids: Rigid, tau: torch.Tensor | float, generator: torch.Generator | None) -> Rigid:
        """Context frames re-noised to diffusion time tau (STAR-MD: tau ~ U[0, 0.1]); tau = 0 returns them exactly."""
        return self.forward_marginal(rigids, tau, generator)["rigids_t"]

    def calc_trans_score(self, trans_t: torch.Tensor, trans_0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Translation score [..., N, 3] (scaled units) at trans_t [..., N, 3] (A) given clean trans_0 (A), e.g.
        the network's x0 prediction."""
        return self.r3.score(trans_t, trans_0, t)

    def calc_rot_score(self, rots_t: torch.Tensor, rots_0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Rotation score [..., N, 3] (body frame of rots_t) given clean rots_0 [..., N, 3, 3], e.g. predicted."""
        return self.so3.score(rots_t, rots_0, t)

    def posterior_mean(self, prior_mean: Rigid, prior_log_std: torch.Tensor, rigids_t: Rigid,
                       t: torch.Tensor | float, modes: torch.Tensor | None = None,
                       precision: torch.Tensor | None = None, *, factor: torch.Tensor | None = None,
                       follow_chain: bool = False, mask: torch.Tensor | None = None) -> Rigid:
        """E[x0 | x_t] when each residue's clean frame is Gaussian around prior_mean: the denoiser with a skip
        connection (EDM's c_skip), used when the network predicts the next frame's law (`model.step_std_init`).

        Translations x0 ~ N(m, s^2 I) (A) and x_t = alpha x0 + noise of variance v(t) (A^2) give
        x0 = m + k (x_t - alpha m), k = alpha s^2 / (alpha^2 s^2 + v); with collective modes U [..., N, r] the
        covariance across residues is S = diag(s^2) + U U^T (per coordinate) and k = alpha S (alpha^2 S + v I)^-1;
        with a precision P over the 3N coordinates (the elastic law)
        x0 = m + (P + alpha^2/v I)^-1 alpha/v (x_t - alpha m).
        Rotations R0 = M exp(w) with w ~ N(0, r^2 I) (body frame, small angles) and IGSO3(sigma(t)) noise give
        R0 = M exp(k_r log(M^T R_t)), k_r = r^2 / (r^2 + sigma^2). At large t this is the network's mean; as t -> 0
        it is the noisy frame itself, so the sampled frame keeps the width the data have instead of collapsing onto
        m (issue 13's narrow step).

        With follow_chain, M is first turned with the local CA trace from m to the estimate's translations
        (`local_trace_rotation`, mask [..., N] its padding), so a residue whose neighbourhood bends turns with it
        (`training.chain_transport`, `rollout.chain_transport`). The turn is geometry, not a prediction: no gradient
        flows through its SVD (ill-conditioned for nearly straight triplets).

        Args: prior_mean Rigid [..., N] (A); prior_log_std [..., N, 2] (log s in A, log r in rad); rigids_t Rigid
        [..., N]; t float or [...]; modes [..., N, r] (A) or None; precision [..., 3N, 3N] (A^-2, coordinates
        ordered residue-major) or None; factor its `posterior_factor`, when the caller already has it. Returns
        Rigid [..., N]; exact for Gaussian data with the right m and law.
        """
        var_trans, var_rot, alpha, noise_var, sigma2 = self._law_terms(prior_log_std, t)
        residual = rigids_t.trans - alpha[..., None] * prior_mean.trans  # [..., N, 3]
        if precision is not None:
            if factor is None:
                factor = self.posterior_factor(precision, prior_log_std, t)
            flat = alpha / noise_var * residual.flatten(-2)  # [..., 3N]
            solved = torch.cholesky_solve(flat[..., None], factor)[..., 0]
            trans = prior_mean.trans + solved.unflatten(-1, residual.shape[-2:])
        elif modes is None:
            trans = prior_mean.trans + (alpha * var_trans / (alpha**2 * var_trans + noise_var))[..., None] * residual
        else:
            cov = self._step_cov(var_trans, modes)  # [..., N, N]
            solved = torch.linalg.solve(_scaled_plus_identity(cov, alpha**2, noise_var), residual)
            trans = prior_mean.trans + alpha[..., None] * (cov @ solved)
        k_rot = var_rot / (var_rot + sigma2)
        mean_rots = prior_mean.rots
        if follow_chain:
            with torch.no_grad():
                turn = local_trace_rotation(prior_mean.trans, trans, mask)
            mean_rots = turn @ mean_rots
        offset = rotmat_to_rotvec(mean_rots.transpose(-1, -2) @ rigids_t.rots)  # [..., N, 3] body frame
        return Rigid(mean_rots @ rotvec_to_rotmat(k_rot[..., None] * offset), trans)

    @staticmethod
    def _step_cov(var_trans: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
        """diag(s^2) + U U^T [..., N, N] (A^2) from s^2 [..., N] and modes U [..., N, r]."""
        return torch.diag_embed(var_trans) + modes @ modes.transpose(-1, -2)

    def _law_terms(self, prior_log_std: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """What posterior_mean and posterior_var share: the law's variances s^2, r^2 [..., N], and alpha_t, the
        translation noise variance v(t) (A^2) and the rotation noise sigma(t)^2, each [..., 1]."""
        t = as_time(t, prior_log_std, prior_log_std.shape[:-2])[..., None]  # [..., 1]
        var_trans, var_rot = torch.exp(2 * prior_log_std).unbind(-1)  # [..., N] each
        noise_var = self.r3.conditional_var(t) / self.r3.coordinate_scaling**2
        return var_trans, var_rot, self.r3.alpha_t(t), noise_var, self.so3.sigma(t) ** 2

    def posterior_factor(self, precision: torch.Tensor, prior_log_std: torch.Tensor,
                         t: torch.Tensor | float) -> torch.Tensor:
        """Cholesky factor [..., 3N, 3N] of P + alpha^2 / v I, the precision of x0 given x_t under the elastic law.
        It is positive definite (P is diag(1/s^2) plus springs), and one factorisation serves both the posterior
        mean (a solve) and its covariance (the inverse): the sampler's O(N^3) cost per reverse step."""
        _, _, alpha, noise_var, _ = self._law_terms(prior_log_std, t)
        return torch.linalg.cholesky(_scaled_plus_identity(precision, torch.ones_like(alpha), alpha**2 / noise_var))

    def posterior_var(self, prior_log_std: torch.Tensor, t: torch.Tensor | float,
                      modes: torch.Tensor | None = None, precision: torch.Tensor | None = None, *,
                      factor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Var(x0 | x_t) under the Gaussian law of `posterior_mean`: translations s^2 v / (alpha^2 s^2 + v) [..., N]
        (A^2), with modes the covariance v S (alpha^2 S + v I)^-1 [..., N, N], with a precision P the covariance
        (P + alpha^2 / v I)^-1 [..., 3N, 3N] (from `posterior_factor`, or `factor` when the caller has it);
        rotations r^2 sigma^2 / (r^2 + sigma^2) [..., N] (rad^2 per axis)."""
        var_trans, var_rot, alpha, noise_var, sigma2 = self._law_terms(prior_log_std, t)
        if precision is not None:
            if factor is None:
                factor = self.posterior_factor(precision, prior_log_std, t)
            trans = torch.cholesky_inverse(factor)
            trans = 0.5 * (trans + trans.transpose(-1, -2))
        elif modes is None:
            trans = var_trans * noise_var / (alpha**2 * var_trans + noise_var)
        else:
            cov = self._step_cov(var_trans, modes)
            trans = noise_var[..., None] * torch.linalg.solve(_scaled_plus_identity(cov, alpha**2, noise_var), cov)
            trans = 0.5 * (trans + trans.transpose(-1, -2))  # exactly symmetric (S and alpha^2 S + v I commute)
        return trans, var_rot * sigma2 / (var_rot + sigma2)

    def x0_estimate(self, out: Mapping[str, Any], rigids_t: Rigid, t: torch.Tensor | float,
                    follow_chain: bool = False, mask: torch.Tensor | None = None) -> Rigid:
        """The denoiser's x0 from a StarMD output: its prediction, or the posterior mean around it when the network
        also predicts the step's law (`step_log_std`, `step_modes`, `step_precision`); follow_chain as in
        `posterior_mean`."""
        if out.get("step_log_std") is None:
            return out["pred_rigids"]
        return self.posterior_mean(out["pred_rigids"], out["step_log_std"], rigids_t, t, out.get("step_modes"),
                                   out.get("step_precision"), follow_chain=follow_chain, mask=mask)

    def x0_law(self, out: Mapping[str, Any], rigids_t: Rigid, t: torch.Tensor | float, follow_chain: bool = False
               ) -> tuple[Rigid, tuple[torch.Tensor, torch.Tensor] | None]:
        """`x0_estimate` and, when the network predicts the step's law, its `posterior_var` (else None): what an
        ancestral reverse step needs, with the elastic law's 3N x 3N system factorised once for both; follow_chain
        as in `posterior_mean`."""
        log_std = out.get("step_log_std")
        if log_std is None:
            return out["pred_rigids"], None
        modes, precision = out.get("step_modes"), out.get("step_precision")
        factor = None if precision is None else self.posterior_factor(precision, log_std, t)
        return (self.posterior_mean(out["pred_rigids"], log_std, rigids_t, t, modes, precision, factor=factor,
                                    follow_chain=follow_chain),
                self.posterior_var(log_std, t, modes, precision, factor=factor))

    def sample_ref(self, shape: tuple[int, ...], generator: torch.Generator | None,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Rigid:
        """Prior frames Rigid [*shape]: uniform rotations, N(0, (10 A)^2 I) translations."""
        return Rigid(self.so3.sample_ref(shape, generator, dtype, device),
                     self.r3.sample_ref(shape, generator, dtype, device))

    def reverse(self, rigids_t: Rigid, rot_score: torch.Tensor, trans_score: torch.Tensor, t: torch.Tensor | float,
                dt: float, generator: torch.Generator | None, mask: torch.Tensor | None = None,
                noise_scale: float = 1.0, center: bool = True) -> Rigid:
        """One reverse Euler-Maruyama step t -> t - dt of both parts; mask [..., N] (0 = keep exactly)."""
        trans = self.r3.reverse(rigids_t.trans, trans_score, t, dt, generator, mask=mask, noise_scale=noise_scale,
                                center=center)
        rots = self.so3.reverse(rigids_t.rots, rot_score, t, dt, generator, mask=mask, noise_scale=noise_scale)
        return Rigid(rots, trans)

    def reverse_ancestral(self, rigids_t: Rigid, rigids_0: Rigid, t: torch.Tensor | float, s: float,
                          generator: torch.Generator | None, mask: torch.Tensor | None = None,
                          center: bool = True, x0_var: tuple[torch.Tensor, torch.Tensor] | None = None,
                          follow_chain: bool = False) -> Rigid:
        """One ancestral step t -> s of both parts, given the denoiser's x0 estimate (`rollout.reverse: ancestral`)
        and, where known, its uncertainty x0_var = `posterior_var` (translations [..., N], [..., N, N] or
        [..., 3N, 3N] in A^2, rotations [..., N] in rad^2).

        The two parts are drawn independently; with follow_chain the last draw (s = 0), the generated frame, also
        turns each residue with its local CA trace from the estimate to the drawn translations
        (`local_trace_rotation`): the translation law bends the chain, and N and C have to follow it or the peptide
        bond breaks (docs/study: C-N 1.42 +- 0.23 A with an elastic law, MD 1.345 +- 0.043 A)."""
        var_trans, var_rot = (None, None) if x0_var is None else x0_var
        trans = self.r3.reverse_ancestral(rigids_t.trans, rigids_0.trans, t, s, generator, mask=mask, center=center,
                                          x0_var=var_trans)
        rots = self.so3.reverse_ancestral(rigids_t.rots, rigids_0.rots, t, s, generator, mask=mask, x0_var=var_rot)
        if follow_chain and s == 0:
            rots = local_trace_rotation(rigids_0.trans, trans, mask) @ rots  # [..., N, 3, 3]
        return Rigid(rots, trans)


def _scaled_plus_identity(matrix: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """scale M + shift I [..., n, n] for per-batch scale, shift [..., 1]: the observed covariance alpha^2 S + v I
    of the modes law and the posterior precision P + alpha^2 / v I of the elastic law."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return scale[..., None] * matrix + shift[..., None] * eye
