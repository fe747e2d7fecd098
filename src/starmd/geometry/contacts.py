"""Backbone heavy-atom contacts between residues two or more apart, and how they move with the frames' rotations.

The evaluation calls a frame's backbone clashing when heavy atoms (N, CA, C, O) of residues |i - j| >= 2 come closer
than 2.5 A (`starmd.evaluation.metrics.backbone_clash`). Three peptide distances fix each peptide bond but leave the
peptide plane free to turn about CA(i)-CA(i+1) (the crankshaft), which swings O(i) into N(i+2) or N(i+3); the peptide
restraint (`starmd.rollout.peptide`) keeps such pairs apart with a soft wall at CONTACT_MIN_A, for which it needs
their distances and Jacobian here.

Each atom of residue i moves with residue i's rotation and, for O(i) (placed in the peptide plane through N(i+1)),
residue i + 1's, so six directional derivatives (x, y, z turns of every even residue, then of every odd one) give
every nonzero block of the Jacobian at a cost that does not grow with the chain.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from starmd.geometry.backbone import IDEAL_LOCAL, backbone_atoms
from starmd.geometry.rigid import Rigid
from starmd.geometry.so3 import hat

# Ramachandran & Sasisekharan's outer limit for N...O (2.6 A), the closest contact two backbone heavy atoms make.
CONTACT_MIN_A = 2.6
MIN_SEPARATION = 2  # residues i and i + 1 share a peptide bond: O(i)-N(i+1) is ~2.25 A by construction
# Farthest any backbone atom sits from its CA (N and C in the backbone frame; O within |C| + |C-O| of it).
ATOM_REACH_A = float(torch.maximum(IDEAL_LOCAL[:, 0].norm(dim=-1),
                                   IDEAL_LOCAL[:, 1].norm(dim=-1) + IDEAL_LOCAL[:, 2].norm(dim=-1)).max())


def contact_pairs(ca: torch.Tensor, min_separation: int = MIN_SEPARATION) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices a < b [P] into the flattened [N * 4] backbone atoms (N, CA, C, O per residue) of every pair of atoms on
    residues at least min_separation apart that can come within CONTACT_MIN_A in some frame of CA positions
    ca [..., N, 3] whatever the rotations: residues whose CAs are more than CONTACT_MIN_A + 2 x ATOM_REACH_A apart
    never can, so a rotation-only correction needs O(N) pairs, not all 8 N^2."""
    n = ca.shape[-2]
    sep = torch.arange(n, device=ca.device)
    near = (torch.cdist(ca, ca) <= CONTACT_MIN_A + 2 * ATOM_REACH_A).reshape(-1, n, n).any(0)  # [N, N]
    i, j = torch.nonzero(near & (sep[None, :] - sep[:, None] >= min_separation), as_tuple=True)  # i < j
    atom = torch.arange(4, device=ca.device)
    a = (4 * i[:, None, None] + atom[None, :, None]).expand(-1, 4, 4)
    b = (4 * j[:, None, None] + atom[None, None, :]).expand(-1, 4, 4)
    return a.reshape(-1), b.reshape(-1)


def atom_rotation_jacobian(frames: Rigid, aatype: torch.Tensor) -> torch.Tensor:
    """[..., N, 4, 2, 3, 3]: d atom / d w for the backbone atoms (N, CA, C, O) of frames Rigid [..., N] under body
    turns R -> R exp(w) of their own residue (index 0) and the next (index 1); entry [..., x, k] is d atom_x / d w_k.
    Forward-mode derivatives of `backbone_atoms` at w = 0, where R (1 + hat(w)) has the exponential's first order."""
    n = frames.shape[-1]
    eye = torch.eye(3, dtype=frames.dtype, device=frames.device)
    parity = torch.arange(n, device=frames.device) % 2
    jac = torch.zeros(*frames.shape, 4, 2, 3, 3, dtype=frames.dtype, device=frames.device)
    for p in (0, 1):
        own = parity == p
        nxt = torch.zeros_like(own)
        nxt[:-1] = own[1:]
        for k in range(3):
            tangent = torch.zeros(*frames.shape, 3, dtype=frames.dtype, device=frames.device)
            tangent[..., own, k] = 1.0
            with forward_ad.dual_level():
                w = forward_ad.make_dual(torch.zeros_like(tangent), tangent)
                moved = backbone_atoms(Rigid(frames.rots @ (eye + hat(w)), frames.trans), aatype)
                d = forward_ad.unpack_dual(moved).tangent  # [..., N, 4, 3]
            jac[..., own, :, 0, :, k] = d[..., own, :, :]
            jac[..., nxt, :, 1, :, k] = d[..., nxt, :, :]
    return jac


def contact_distances(atoms: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[..., P] distances (A) of backbone atoms [..., N, 4, 3] at the `contact_pairs` indices."""
    flat = atoms.flatten(-3, -2)
    return (flat[..., pairs[0], :] - flat[..., pairs[1], :]).norm(dim=-1)


def contact_jacobian(atoms: torch.Tensor, atom_jac: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, P, N, 3]: gradients of the distances between flattened atoms a [P] and b [P] (each frame's own pairs)
    with respect to every residue's body rotation vector, from atoms [B, N, 4, 3] and `atom_rotation_jacobian`."""
    bsz, n = atoms.shape[:2]
    flat, jac = atoms.flatten(1, 2), atom_jac.flatten(1, 2)  # [B, 4N, 3], [B, 4N, 2, 3, 3]
    diff = flat[:, a] - flat[:, b]
    u = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-9)  # [B, P, 3]
    out = torch.zeros(bsz, a.shape[0], n + 1, 3, dtype=atoms.dtype, device=atoms.device)  # row n: the chain's end
    rows = torch.arange(a.shape[0], device=atoms.device)
    batch = torch.arange(bsz, device=atoms.device)[:, None]
    for atom, sign in ((a, 1.0), (b, -1.0)):
        grad = sign * torch.einsum("bpx,bpjxk->bpjk", u, jac[:, atom])  # [B, P, 2, 3]: own residue, next
        for j in (0, 1):
            out.index_put_((batch, rows[None], (atom // 4 + j)[None].expand(bsz, -1)), grad[:, :, j], accumulate=True)
    return out[:, :, :n]
