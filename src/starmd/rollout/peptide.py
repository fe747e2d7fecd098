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

The three distances leave each peptide plane free to turn about CA(i)-CA(i+1), and the law's noisy rotations swing
O(i) into N(i+2) or N(i+3) (docs/study: 30% of anchor frames clash with the bonds closed). The objective therefore
also carries a soft wall, sum over backbone heavy-atom pairs of residues two or more apart of
max(0, CONTACT_MIN_A - d)^2 / (scale x CONTACT_STD_A)^2 (`starmd.geometry.contacts`): a truncation of the law to
frames without clashes rather than a Gaussian factor, so that part is MAP, not an exact draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from starmd.geometry.backbone import backbone_atoms
from starmd.geometry.contacts import (CONTACT_MIN_A, atom_rotation_jacobian, contact_distances, contact_jacobian,
                                      contact_pairs)
from starmd.geometry.peptide import ca_distances, peptide_bonded, peptide_distances, peptide_targets
from starmd.geometry.rigid import Rigid
from starmd.geometry.so3 import rotmat_to_rotvec, rotvec_to_rotmat
from starmd.rollout.restraint import gauss_newton_step, minimise

DEFAULT_ROT_STD = 0.1  # rad: the rotation width assumed without a step law (the study's model.step_std_init)
CONTACT_STD_A = 0.05  # A: the wall's softness at scale 1: 0.05 A inside costs what a bond one AF2 spread off does
_CONVERGED_RAD = 1e-5  # Gauss-Newton stops once no residue turns by more than this in a step


@dataclass(frozen=True)
class PeptideChain:
    """What the restraints need of a protein: residue types [N], which consecutive residues are bonded [N-1] and
    their CA-CA distances in the start structure [N-1] (A; `starmd.rollout.trace`)."""

    aatype: torch.Tensor
    bonded: torch.Tensor
    ca_ca: torch.Tensor

    @classmethod
    def from_start(cls, start: Rigid, aatype) -> "PeptideChain":
        """Bonds where the start structure Rigid [N] has them (C(i)-N(i+1) < 2 A): chain breaks stay broken."""
        aatype = torch.as_tensor(aatype, dtype=torch.long)
        if aatype.shape != start.shape:
            raise ValueError(f"aatype has {tuple(aatype.shape)} entries for a start structure of {start.shape[0]} "
                             "residues")
        start = start.to(dtype=torch.float64)
        return cls(aatype, peptide_bonded(start, aatype), ca_distances(start.trans)[0])


def condition_on_peptide_bonds(frames: Rigid, chain: PeptideChain, scale: float, rot_std: torch.Tensor | None,
                               generator: torch.Generator | None, iterations: int = 10) -> Rigid:
    """Frames Rigid [B, N] with rotations turned to close their peptide bonds and open their backbone clashes (module
    docstring). scale: the restraints' std in units of AlphaFold2's spreads (`peptide_targets`) and of CONTACT_STD_A;
    rot_std [B, N] (rad) the law's rotation width, or None (DEFAULT_ROT_STD). Gauss-Newton steps are halved where
    they would raise the objective (the three distances cannot all hold when the drawn CA-CA distance exceeds the
    trans peptide's 3.8 A; the objective then settles on a compromise); at most `iterations` steps, fewer once no
    residue turns by more than _CONVERGED_RAD (the wall's active pairs change as it opens clashes, so it takes more
    than the bonds alone). Translations are returned unchanged."""
    b, n = frames.shape
    if n < 2:
        return frames
    drawn, frames = frames, frames.to(dtype=torch.float64)  # float32 rounding would hide the convergence test
    dtype, device = frames.dtype, frames.device
    ideal, spread = (x.to(device=device, dtype=dtype) for x in peptide_targets(chain.aatype))  # [N-1, 3] each
    std = scale * spread
    noise = torch.randn((b, n - 1, 3), generator=generator, dtype=dtype, device=device)
    target = ideal + std * noise  # [B, N-1, 3]
    weight = chain.bonded.to(device=device, dtype=dtype)[:, None] / std  # [N-1, 3]
    width = torch.full((b, n), DEFAULT_ROT_STD, dtype=dtype, device=device) if rot_std is None else rot_std.to(dtype)
    prior = (1.0 / width**2)[..., None].expand(b, n, 3)  # [B, N, 3] rad^-2

    pairs = contact_pairs(frames.trans)  # translations stay: the pairs that can clash are fixed up front
    wall_std = scale * CONTACT_STD_A

    def state(rots: torch.Tensor) -> dict[str, torch.Tensor]:
        moved = Rigid(rots, frames.trans)
        dist, jac = peptide_distances(moved, chain.aatype, with_jacobian=True)
        resid = (dist - target) * weight  # [B, N-1, 3], in stds
        offset = rotmat_to_rotvec(frames.rots.transpose(-1, -2) @ rots)  # [B, N, 3] turn so far (body frame)
        atoms = backbone_atoms(moved, chain.aatype)  # [B, N, 4, 3]
        inside = (CONTACT_MIN_A - contact_distances(atoms, pairs)).clamp_min(0)  # [B, P]
        value = 0.5 * (resid.square().sum((-1, -2)) + (prior * offset.square()).sum((-1, -2))
                       + (inside / wall_std).square().sum(-1))  # [B]
        return {"x": rots, "resid": resid, "jac": jac * weight[..., None, None], "offset": offset, "value": value,
                "atoms": atoms, "inside": inside}

    def step(current: dict[str, torch.Tensor]) -> torch.Tensor:
        wall_resid, wall_jac = _wall_terms(Rigid(current["x"], frames.trans), chain.aatype, pairs,
                                           current["atoms"], current["inside"], wall_std)
        return gauss_newton_step(current["resid"], current["jac"], prior, current["offset"], wall_resid, wall_jac)

    final = minimise(state, frames.rots, step, lambda rots, w: rots @ rotvec_to_rotmat(w), iterations, _CONVERGED_RAD)
    return Rigid(final["x"].to(drawn.dtype), drawn.trans)


def _wall_terms(frames: Rigid, aatype: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor], atoms: torch.Tensor,
                inside: torch.Tensor, wall_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals [B, P] (CONTACT_MIN_A - d) / wall_std of the pairs inside the wall in any frame (zero in frames where
    a pair is outside) and their Jacobian [B, P, N, 3] in the body rotation vectors, from the frames' backbone atoms
    [B, N, 4, 3] and how far each of `pairs` is inside the wall [B, P_all] (the objective's own, not recomputed)."""
    active = (inside > 0).any(0)
    a, b = pairs[0][active], pairs[1][active]
    jac = contact_jacobian(atoms, atom_rotation_jacobian(frames, aatype), a, b)  # [B, P, N, 3]
    on = (inside[:, active] > 0).to(atoms.dtype)
    return inside[:, active] / wall_std, -jac * (on / wall_std)[..., None, None]
