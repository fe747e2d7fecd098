"""Peptide-bond geometry between consecutive residue frames, as three distances per bond, and its Jacobian.

Residue frames place N, CA and C with ideal local coordinates (`starmd.geometry.backbone`), so the peptide bond
between residue i and i + 1 depends on both frames. Three distances fix it up to the omega dihedral, which the
CA(i)-CA(i+1) distance (translations only) then sets: C(i)-N(i+1) (the bond), CA(i)-N(i+1) (the CA-C-N angle) and
C(i)-CA(i+1) (the C-N-CA angle). Their ideal values and spreads follow from AlphaFold2's between-residue constants
(OpenFold `residue_constants`: between_res_bond_length_c_n = [1.329, 1.341] A with stddev [0.014, 0.016] (Pro at
i + 1), between_res_cos_angles_ca_c_n = -0.4473 +- 0.0311, between_res_cos_angles_c_n_ca = -0.5203 +- 0.0353) and the
ideal CA-C and N-CA lengths of the residue types.

The Jacobian is with respect to body-frame rotation vectors w (a frame's rotation R becomes R exp(w)), the tangent
space in which the step law draws rotations (`SE3Diffuser.posterior_mean`): a rotation-only correction of a frame
whose translations are already drawn.
"""

from __future__ import annotations

import torch

from starmd.geometry.backbone import IDEAL_LOCAL, RESNAMES
from starmd.geometry.rigid import Rigid

C_N_BOND_A = (1.329, 1.341)  # general, and with proline at i + 1
C_N_BOND_STD_A = (0.014, 0.016)
COS_CA_C_N, COS_CA_C_N_STD = -0.4473, 0.0311
COS_C_N_CA, COS_C_N_CA_STD = -0.5203, 0.0353
_PRO = RESNAMES.index("PRO")


def _third_side(a: torch.Tensor, b: torch.Tensor, cos_angle: float) -> torch.Tensor:
    """Law of cosines: the side opposite the angle between sides a and b."""
    return torch.sqrt(a**2 + b**2 - 2 * a * b * cos_angle)


def peptide_targets(aatype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ideal C(i)-N(i+1), CA(i)-N(i+1) and C(i)-CA(i+1) distances [N-1, 3] (A) for residue types aatype [N], and
    their spreads [N-1, 3] (A): the bond's stddev, and the angles' cosine stddev carried to the opposite side
    (d side = a b d cos / side)."""
    aatype = torch.as_tensor(aatype, dtype=torch.long)
    local = IDEAL_LOCAL[aatype]  # [N, 3, 3] rows N, C, O
    n_ca = local[1:, 0].norm(dim=-1)  # N-CA of residue i + 1
    ca_c = local[:-1, 1].norm(dim=-1)  # CA-C of residue i
    pro = aatype[1:] == _PRO
    c_n = torch.where(pro, C_N_BOND_A[1], C_N_BOND_A[0]).to(ca_c)
    ca_n, c_ca = _third_side(ca_c, c_n, COS_CA_C_N), _third_side(c_n, n_ca, COS_C_N_CA)
    spread = torch.stack([torch.where(pro, C_N_BOND_STD_A[1], C_N_BOND_STD_A[0]).to(ca_c),
                          ca_c * c_n * COS_CA_C_N_STD / ca_n, c_n * n_ca * COS_C_N_CA_STD / c_ca], dim=-1)
    return torch.stack([c_n, ca_n, c_ca], dim=-1), spread


def peptide_distances(frames: Rigid, aatype: torch.Tensor, with_jacobian: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The three peptide distances [..., N-1, 3] (A) of frames Rigid [..., N] and, with_jacobian, their gradients
    [..., N-1, 3, 2, 3] (A / rad) with respect to the body rotation vectors of residue i (index 0) and i + 1
    (index 1). A distance |p - q| with p = x + R l moves by w . (l x R^T u) under R -> R exp(w), u = (p - q) / |p - q|.
    """
    local = IDEAL_LOCAL.to(dtype=frames.dtype, device=frames.device)[torch.as_tensor(aatype, dtype=torch.long)]
    zero = torch.zeros_like(local[:, 0])
    l_n, l_c = local[:, 0], local[:, 1]  # [N, 3] each
    # atom on residue i (p) and on residue i + 1 (q) of each distance: (C, N), (CA, N), (C, CA)
    l_p = torch.stack([l_c[:-1], zero[:-1], l_c[:-1]], dim=-2)  # [N-1, 3, 3]
    l_q = torch.stack([l_n[1:], l_n[1:], zero[1:]], dim=-2)
    rot_i, rot_j = frames.rots[..., :-1, None, :, :], frames.rots[..., 1:, None, :, :]  # [..., N-1, 1, 3, 3]
    p = frames.trans[..., :-1, None, :] + (rot_i @ l_p[..., None])[..., 0]  # [..., N-1, 3, 3]
    q = frames.trans[..., 1:, None, :] + (rot_j @ l_q[..., None])[..., 0]
    diff = p - q
    dist = diff.norm(dim=-1)  # [..., N-1, 3]
    if not with_jacobian:
        return dist, None
    u = diff / dist[..., None].clamp_min(1e-9)
    grad_i = torch.linalg.cross(l_p.expand_as(u), (rot_i.transpose(-1, -2) @ u[..., None])[..., 0])
    grad_j = -torch.linalg.cross(l_q.expand_as(u), (rot_j.transpose(-1, -2) @ u[..., None])[..., 0])
    return dist, torch.stack([grad_i, grad_j], dim=-2)  # [..., N-1, 3, 2, 3]


def ca_distances(trans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive CA-CA distances [..., N-1] (A) of translations [..., N, 3] and their unit vectors [..., N-1, 3]
    from CA i to CA i + 1 (the gradient of each distance in CA i + 1; minus it in CA i)."""
    diff = trans[..., 1:, :] - trans[..., :-1, :]
    dist = diff.norm(dim=-1)
    return dist, diff / dist[..., None].clamp_min(1e-9)


def peptide_bonded(frames: Rigid, aatype: torch.Tensor, max_c_n_A: float = 2.0) -> torch.Tensor:
    """[N-1] bool: where residue i + 1 is bonded to residue i in frames Rigid [N] (C(i)-N(i+1) below max_c_n_A),
    so chain breaks, missing residues and separate chains get no peptide bond."""
    dist, _ = peptide_distances(frames, aatype)
    return dist[..., 0] < max_c_n_A

