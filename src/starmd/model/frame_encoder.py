"""FrameEncoder: one single token per (frame, residue) and one pair state per frame, from SE(3)-invariant inputs.

Only invariants of the (noisy) frame enter: for each residue pair (i, j) the transform T_i^-1 T_j, i.e. the position
of CA_j in residue i's local frame (distance RBF + bounded direction) and the relative rotation R_i^T R_j. A global
rotation/translation of the frame cancels in T_i^-1 T_j, so tokens are invariant by construction and equivariance
of the network reduces to the rigid updates being composed on the right.

Across frames, each token also sees where its noisy residue frame sits relative to the same residue in its *anchor*
frame (A_i^-1 T_i: the frame the trunk's rigid updates start from, see StarMD): for a target frame that is the latest
context frame, for a context frame it is itself (identity). Also an invariant, and the geometric link between a new
frame and the one before it.
"""

from __future__ import annotations

import torch
from torch import nn

from starmd.geometry import Rigid
from starmd.model.embeddings import diffusion_time_embedding, log_time_embedding, rbf
from starmd.model.primitives import Linear, full_precision, rigid_full_precision

_EPS_SQ = 1e-8  # inside sqrt so |x_i - x_i| = 0 has a finite gradient


def _pose_features(rel: Rigid, n_rbf: int, rbf_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[*, n_rbf + 12] features of relative transforms (distance RBF, direction / (d + 1 A), flattened rotation)
    and their translation lengths [*] (Angstrom)."""
    d = torch.sqrt((rel.trans**2).sum(-1) + _EPS_SQ)
    feats = torch.cat([rbf(d, n_rbf, rbf_max), rel.trans / (d.unsqueeze(-1) + 1.0), rel.rots.flatten(-2)], dim=-1)
    return feats, d


def anchor_pose(frames: Rigid, anchors: Rigid, n_rbf: int, rbf_max: float) -> torch.Tensor:
    """Per-residue invariants [*, N, n_rbf + 12] of A_i^-1 T_i: the noisy frame seen from its anchor frame."""
    with full_precision(frames.device):
        rel = rigid_full_precision(anchors).invert().compose(rigid_full_precision(frames))
        return _pose_features(rel, n_rbf, rbf_max)[0]


def relative_geometry(frames: Rigid, n_rbf: int, rbf_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise invariants of residue frames [*, N] (Angstrom).

    Returns features [*, N, N, n_rbf + 12] (distance RBF, local direction of CA_j in frame i scaled by 1/(d + 1 A),
    flattened R_i^T R_j) and the CA-CA distances [*, N, N] (Angstrom). Computed in >= fp32.
    """
    with full_precision(frames.device):
        f = rigid_full_precision(frames)
        rel = f.unsqueeze(-1).invert().compose(f.unsqueeze(-2))  # [*, N, N]: T_i^-1 T_j
        return _pose_features(rel, n_rbf, rbf_max)  # [*, N, N, n_rbf + 12], [*, N, N]


class FrameEncoder(nn.Module):
    """Embed frozen singles + noisy-frame invariants + diffusion time + physical time into tokens.

    Tokens s [B, F, N, c_s] = LN(s0 + MLP([neighbour message, anchor pose, emb(t), emb(frame time), emb(Delta-t)])),
    where the
    neighbour message of residue i is the Gaussian-weighted (length `neighbour_radius` A) mean over residues j of the
    embedded invariants e_ij; the same embedding is added to the static pair, giving the per-frame pair state
    z [B, F, N, N, c_z] that IPA biases on and EdgeTransition updates.
    """

    def __init__(self, c_s: int, c_z: int, c_time: int, c_phys_time: int, n_rbf: int, rbf_max: float,
                 neighbour_radius: float) -> None:
        super().__init__()
        self.c_time, self.c_phys_time, self.n_rbf, self.rbf_max = c_time, c_phys_time, n_rbf, rbf_max
        self.neighbour_radius = neighbour_radius
        self.pair_geometry = nn.Sequential(Linear(n_rbf + 12, c_z, init="relu"), nn.ReLU(), Linear(c_z, c_z))
        self.single_mlp = nn.Sequential(
            Linear(c_z + n_rbf + 12 + c_time + 2 * c_phys_time, c_s, init="relu"), nn.ReLU(), Linear(c_s, c_s)
        )
        self.layer_norm = nn.LayerNorm(c_s)

    def forward(self, s0: torch.Tensor, z0: torch.Tensor, frames: Rigid, anchors: Rigid, t: torch.Tensor,
                frame_time_ps: torch.Tensor, delta_t_ps: torch.Tensor, res_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            s0: [B, N, c_s] projected frozen singles; z0: [B, N, N, c_z] projected frozen pair.
            frames: Rigid [B, F, N] in Angstrom (noisy targets or lightly re-noised context).
            anchors: Rigid [B, F, N] (A), the frame each token's rigid updates start from (module docstring).
            t: [B, F] diffusion time in [0, 1]; frame_time_ps: [B, F] time since the trajectory start (ps);
            delta_t_ps: [B] stride between frames (ps); res_mask: [B, N] (1 = real residue).
        Returns:
            s [B, F, N, c_s] and z [B, F, N, N, c_z].
        """
        feats, d = relative_geometry(frames, self.n_rbf, self.rbf_max)
        e = self.pair_geometry(feats.to(z0.dtype))  # [B, F, N, N, c_z]
        z = z0.unsqueeze(1) + e  # [B, F, N, N, c_z]

        mask_j = res_mask[:, None, None, :].to(d.dtype)  # [B, 1, 1, N]
        w = torch.exp(-((d / self.neighbour_radius) ** 2)) * mask_j  # [B, F, N, N]
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-6)
        msg = torch.einsum("bfij,bfijc->bfic", w.to(e.dtype), e)  # [B, F, N, c_z]

        t_emb = diffusion_time_embedding(t, self.c_time)  # [B, F, c_time]
        ft_emb = log_time_embedding(frame_time_ps, self.c_phys_time)  # [B, F, c_phys]
        dt_emb = log_time_embedding(delta_t_ps, self.c_phys_time)[:, None].expand_as(ft_emb)  # [B, F, c_phys]
        cond = torch.cat([t_emb, ft_emb, dt_emb], dim=-1).to(msg.dtype)  # [B, F, c_time + 2 c_phys]
        cond = cond[:, :, None].expand(*msg.shape[:3], cond.shape[-1])  # [B, F, N, .]
        pose = anchor_pose(frames, anchors, self.n_rbf, self.rbf_max).to(msg.dtype)  # [B, F, N, n_rbf + 12]
        s = self.layer_norm(s0.unsqueeze(1) + self.single_mlp(torch.cat([msg, pose, cond], dim=-1)))  # [B, F, N, c_s]
        return s, z
