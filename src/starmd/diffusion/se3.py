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
from starmd.geometry.rigid import Rigid


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
