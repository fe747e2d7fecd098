"""How each residue's frame turns when its chain moves: the rotation of its local CA trace.

A residue's N and C atoms sit where its own CA and its neighbours' CAs put them (the peptide bond links C(i) to
N(i+1)), so a frame that keeps its rotation while the CA trace around it bends breaks that bond. Used by the step
law's x0 estimate and last draw (`training.chain_transport`, `rollout.chain_transport`) to carry a translation
deviation over to the rotations.
"""

from __future__ import annotations

import torch


def local_trace_rotation(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Rotations [..., N, 3, 3] that best map each residue's CA triplet in `before` onto the same triplet in `after`
    (least squares, Kabsch), CA positions [..., N, 3] (A); mask [..., N] (1 = real residue, real residues first, as
    batches and crops pad at the end) or None (all real).

    Residue i's triplet is CA(i-1), CA(i), CA(i+1), shifted inwards at the chain ends so that every triplet has three
    distinct real residues; padding and chains shorter than 3 residues (no rotation defined by their trace) get the
    identity. A rigid motion of the whole chain returns its rotation for every residue; translations never matter.
    """
    n = before.shape[-2]
    batch = before.shape[:-2]
    eye = torch.eye(3, dtype=before.dtype, device=before.device).expand(*batch, n, 3, 3)
    n_real = (torch.full(batch, n, device=before.device) if mask is None else mask.sum(-1).long())  # [...]
    pos = torch.arange(n, device=before.device)
    start = torch.minimum((pos - 1).clamp(min=0), (n_real - 3).clamp(min=0)[..., None])  # [..., N]
    idx = (start[..., None] + torch.arange(3, device=before.device)).clamp(max=n - 1).reshape(*batch, 3 * n, 1)
    p, q = (torch.gather(x, -2, idx.expand(*batch, 3 * n, 3)).reshape(*batch, n, 3, 3) for x in (before, after))
    p = p - p.mean(-2, keepdim=True)  # [..., N, 3, 3] (residue, triplet member, xyz)
    q = q - q.mean(-2, keepdim=True)
    u, _, vh = torch.linalg.svd(p.transpose(-1, -2) @ q)  # cross-covariance H = P^T Q = U S V^T
    v = vh.transpose(-1, -2)
    d = torch.where(torch.det(v @ u.transpose(-1, -2)) < 0, -1.0, 1.0).to(v.dtype)  # d = -1: a reflection, undone
    fix = torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)
    turn = v @ torch.diag_embed(fix) @ u.transpose(-1, -2)  # R = V diag(1, 1, d) U^T, R p = q
    defined = (n_real[..., None] >= 3) & (pos < n_real[..., None])  # [..., N]
    return torch.where(defined[..., None, None], turn, eye)
