"""Generated frames conditioned on peptide-bond geometry (`rollout.peptide_restraint`).

The frame law draws each residue's rotation on its own (independent IGSO3 noise, or a step law's per-residue width),
so N and C, which the frames place, miss each other at the peptide bond even when the CA trace is right (docs/study:
C-N 1.42 +- 0.23 A under the elastic step law, MD 1.345 +- 0.043 A). Here the drawn frame is conditioned on the three
peptide distances of `starmd.geometry.peptide` (the bond and its two angles) being ideal up to Gaussian error of std
sigma = scale x AlphaFold2's spread, by perturb-and-MAP: with the drawn rotations as the prior sample (w = 0, width r
per residue: the step law's rotation width, else 0.1 rad) and the target distances perturbed by N(0, sigma^2), the
minimiser of

    sum_i |w_i|^2 / r_i^2 + sum_bonds |d(w) - d_ideal - e|^2 / sigma^2

is an exact draw from the conditioned law where d is linear in w (small turns), found by Gauss-Newton on body
rotation vectors. Translations stay as drawn (the CA trace, which the law gets right), so the correction is the
smallest turn of each frame, weighted by how sure the law was of it, that closes its peptide bonds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from starmd.geometry.peptide import peptide_bonded, peptide_distances, peptide_targets
from starmd.geometry.rigid import Rigid
from starmd.geometry.so3 import rotmat_to_rotvec, rotvec_to_rotmat

DEFAULT_ROT_STD = 0.1  # rad: the rotation width assumed without a step law (the study's model.step_std_init)
_HALVINGS = 8  # most halvings of a Gauss-Newton step that would raise the objective


@dataclass(frozen=True)
class PeptideChain:
    """What the restraint needs of a protein: residue types [N] and which consecutive residues are bonded [N-1]."""

    aatype: torch.Tensor
    bonded: torch.Tensor

    @classmethod
    def from_start(cls, start: Rigid, aatype) -> "PeptideChain":
        """Bonds where the start structure Rigid [N] has them (C(i)-N(i+1) < 2 A): chain breaks stay broken."""
        aatype = torch.as_tensor(aatype, dtype=torch.long)
        if aatype.shape != start.shape:
            raise ValueError(f"aatype has {tuple(aatype.shape)} entries for a start structure of {start.shape[0]} "
                             "residues")
        return cls(aatype, peptide_bonded(start.to(dtype=torch.float64), aatype))


def condition_on_peptide_bonds(frames: Rigid, chain: PeptideChain, scale: float, rot_std: torch.Tensor | None,
                               generator: torch.Generator | None, iterations: int = 5) -> Rigid:
    """Frames Rigid [B, N] with rotations turned to close their peptide bonds (module docstring). scale: the
    restraints' std in units of AlphaFold2's spreads (`peptide_targets`); rot_std [B, N] (rad) the law's rotation
    width, or None (DEFAULT_ROT_STD). Gauss-Newton steps are halved where they would raise the objective (the three
    distances cannot all hold when the drawn CA-CA distance exceeds the trans peptide's 3.8 A; the objective then
    settles on a compromise). Translations are returned unchanged."""
    b, n = frames.shape
    dtype, device = frames.dtype, frames.device
    if n < 2:
        return frames
    ideal, spread = (x.to(device=device, dtype=dtype) for x in peptide_targets(chain.aatype))  # [N-1, 3] each
    std = scale * spread
    noise = torch.randn((b, n - 1, 3), generator=generator, dtype=dtype, device=device)
    target = ideal + std * noise  # [B, N-1, 3]
    weight = chain.bonded.to(device=device, dtype=dtype)[:, None] / std  # [N-1, 3]
    width = torch.full((b, n), DEFAULT_ROT_STD, dtype=dtype, device=device) if rot_std is None else rot_std.to(dtype)
    prior = (1.0 / width**2)[..., None].expand(b, n, 3)  # [B, N, 3] rad^-2

    def state(rots: torch.Tensor) -> dict[str, torch.Tensor]:
        dist, jac = peptide_distances(Rigid(rots, frames.trans), chain.aatype, with_jacobian=True)
        resid = (dist - target) * weight  # [B, N-1, 3], in stds
        offset = rotmat_to_rotvec(frames.rots.transpose(-1, -2) @ rots)  # [B, N, 3] turn so far (body frame)
        value = 0.5 * (resid.square().sum((-1, -2)) + (prior * offset.square()).sum((-1, -2)))  # [B]
        return {"rots": rots, "resid": resid, "jac": jac * weight[..., None, None], "offset": offset, "value": value}

    current = state(frames.rots)
    for _ in range(iterations):
        step = _gauss_newton_step(current["resid"], current["jac"], prior, current["offset"])
        step_size = torch.ones(b, dtype=dtype, device=device)
        for _ in range(_HALVINGS):
            trial = state(current["rots"] @ rotvec_to_rotmat(step_size[:, None, None] * step))
            better = trial["value"] <= current["value"]
            if bool(better.all()):
                break
            step_size = torch.where(better, step_size, step_size / 2)
        current = {k: torch.where(better.view(-1, *[1] * (v.dim() - 1)), trial[k], v) for k, v in current.items()}
    return Rigid(current["rots"], frames.trans)


def _gauss_newton_step(resid: torch.Tensor, jac: torch.Tensor, prior: torch.Tensor, offset: torch.Tensor
                       ) -> torch.Tensor:
    """The Gauss-Newton step [B, N, 3] of 0.5 (|resid|^2 + sum prior offset^2): (J^T J + diag(prior)) step =
    -(J^T resid + prior offset), with J block-bidiagonal (each bond's rows touch residues i and i + 1) assembled as
    a dense 3N x 3N system: one Cholesky per frame."""
    b, n, _ = offset.shape
    lo, hi = jac[..., 0, :], jac[..., 1, :]  # gradients on residue i and i + 1: [B, N-1, 3, 3]
    idx = torch.arange(n - 1, device=offset.device)
    hess = torch.zeros(b, n, n, 3, 3, dtype=offset.dtype, device=offset.device)
    hess[:, idx, idx] += torch.einsum("bnki,bnkj->bnij", lo, lo)
    hess[:, idx + 1, idx + 1] += torch.einsum("bnki,bnkj->bnij", hi, hi)
    hess[:, idx, idx + 1] += torch.einsum("bnki,bnkj->bnij", lo, hi)
    hess[:, idx + 1, idx] += torch.einsum("bnki,bnkj->bnij", hi, lo)
    grad = prior * offset
    grad[:, :-1] += torch.einsum("bnki,bnk->bni", lo, resid)
    grad[:, 1:] += torch.einsum("bnki,bnk->bni", hi, resid)
    hess = hess.permute(0, 1, 3, 2, 4).reshape(b, 3 * n, 3 * n) + torch.diag_embed(prior.reshape(b, 3 * n))
    step = torch.cholesky_solve(-grad.reshape(b, 3 * n, 1), torch.linalg.cholesky(hess))
    return step.reshape(b, n, 3)
