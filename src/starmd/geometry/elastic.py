"""Anisotropic elastic-network Hessians: the one home of the spring-network algebra, used by the known-answer
system's dynamics (`starmd.data.synthetic`) and by the model's elastic step law (`model.step_elastic`)."""

from __future__ import annotations

import torch


def anm_hessian(xyz: torch.Tensor, springs: torch.Tensor) -> torch.Tensor:
    """Hessian [..., 3N, 3N] of harmonic springs between points xyz [..., N, 3], each pair (i, j) with stiffness
    springs[..., i, j] (symmetric, diagonal ignored; 0 = no spring), rest length their current distance.

    Block (i, j) is -k_ij e_ij e_ij^T with e_ij the unit vector between the points, block (i, i) minus the sum of its
    row: stiff along each spring, free across it, which is what keeps bonded distances while the chain bends.
    """
    n = xyz.shape[-2]
    diff = xyz[..., None, :, :] - xyz[..., :, None, :]  # [..., N, N, 3]
    eye = torch.eye(n, dtype=torch.bool, device=xyz.device)
    dist = diff.square().sum(-1).masked_fill(eye, 1.0).sqrt()  # [..., N, N], 1 on the diagonal (no 0/0 gradient)
    k = springs.masked_fill(eye, 0.0)
    e = diff / dist[..., None]
    blocks = -k[..., None, None] * e[..., :, None] * e[..., None, :]  # [..., N, N, 3, 3]
    idx = torch.arange(n, device=xyz.device)
    blocks[..., idx, idx, :, :] = -blocks.sum(-3)  # each diagonal block balances its row (rigid motions are free)
    return blocks.transpose(-3, -2).reshape(*xyz.shape[:-2], 3 * n, 3 * n)


ANM_CUTOFF_A = 15.0  # ProDy's default ANM cutoff for CA atoms


def anm_modes(ca: torch.Tensor, res_mask: torch.Tensor, n_modes: int, cutoff: float = ANM_CUTOFF_A) -> torch.Tensor:
    """The n_modes softest non-rigid normal modes [..., n_modes, N, 3] (unit norm over the real residues) of the
    CA anisotropic network (uniform springs within `cutoff` A) of structures ca [..., N, 3] with res_mask [..., N]
    (padding gets no spring and a stiff diagonal, so no mode moves it). The collective directions of a structure's
    thermal motion, computed from the structure alone."""
    real = res_mask.to(torch.float64)
    xyz = ca.to(torch.float64)
    springs = (torch.cdist(xyz, xyz) < cutoff).to(torch.float64) * real[..., :, None] * real[..., None, :]
    hess = anm_hessian(xyz, springs)
    stiff = (1.0 - real).repeat_interleave(3, dim=-1) * (hess.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
                                                         + 1.0) * 1e3
    _, vecs = torch.linalg.eigh(hess + torch.diag_embed(stiff))  # ascending; the first 6 are rigid-body motions
    modes = vecs[..., 6:6 + n_modes].transpose(-1, -2)  # [..., M, 3N]
    return modes.reshape(*modes.shape[:-1], ca.shape[-2], 3).to(ca.dtype)
