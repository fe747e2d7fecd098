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
