"""How each residue's frame turns when its chain moves: the rotation of its local CA trace.

A residue's N and C atoms sit where its own CA and its neighbours' CAs put them (the peptide bond links C(i) to
N(i+1)), so a frame that keeps its rotation while the CA trace around it bends breaks that bond. Used by the rollout
(`rollout.chain_transport`) to carry a sampled translation deviation over to the rotations.
"""

from __future__ import annotations

import torch


def local_trace_rotation(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Rotations [..., N, 3, 3] that best map each residue's CA triplet in `before` onto the same triplet in `after`
    (least squares, Kabsch), CA positions [..., N, 3] (A).

    Residue i's triplet is CA(i-1), CA(i), CA(i+1), shifted inwards at the chain ends so that every triplet has three
    distinct residues; chains shorter than 3 residues (no rotation defined by their trace) get the identity. A rigid
    motion of the whole chain returns its rotation for every residue; translations never matter.
    """
    n = before.shape[-2]
    eye = torch.eye(3, dtype=before.dtype, device=before.device)
    if n < 3:
        return eye.expand(*before.shape[:-1], 3, 3).clone()
    start = torch.arange(n, device=before.device).sub(1).clamp(0, n - 3)  # [N]
    idx = start[:, None] + torch.arange(3, device=before.device)  # [N, 3]
    p, q = before[..., idx, :], after[..., idx, :]  # [..., N, 3, 3] (residue, triplet member, xyz)
    p = p - p.mean(-2, keepdim=True)
    q = q - q.mean(-2, keepdim=True)
    u, _, vh = torch.linalg.svd(p.transpose(-1, -2) @ q)  # cross-covariance H = P^T Q = U S V^T
    v = vh.transpose(-1, -2)
    sign = torch.det(v @ u.transpose(-1, -2)).sign()  # -1 would be a reflection
    fix = torch.ones_like(sign)[..., None].expand(*sign.shape, 3).clone()
    fix[..., 2] = torch.where(sign == 0, torch.ones_like(sign), sign)
    return v @ torch.diag_embed(fix) @ u.transpose(-1, -2)  # R = V diag(1, 1, d) U^T, R p = q
