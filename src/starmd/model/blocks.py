"""The STAR-MD diffusion block: IPA within each frame -> S x T attention -> transition -> EdgeTransition ->
backbone update. Everything but the S x T attention acts on one frame at a time, so the only cross-frame state is
that attention's keys/values (which the KV cache holds)."""

from __future__ import annotations

import torch
from torch import nn

from starmd.geometry import Rigid
from starmd.geometry.so3 import quat_to_rotmat
from starmd.model.attention import BlockCausalLayout, SpatioTemporalAttention
from starmd.model.ipa import InvariantPointAttention
from starmd.model.primitives import Linear, full_precision, geometry_dtype, rigid_full_precision


class Transition(nn.Module):
    """Residual 3-layer MLP on singles with post-LayerNorm (AF2 Alg. 20 lines 8-9)."""

    def __init__(self, c_s: int, n: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Linear(c_s, n * c_s, init="relu"), nn.ReLU(), Linear(n * c_s, n * c_s, init="relu"),
                                 nn.ReLU(), Linear(n * c_s, c_s, init="final"))
        self.layer_norm = nn.LayerNorm(c_s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s [*, c_s] -> [*, c_s]."""
        return self.layer_norm(s + self.mlp(s))


class EdgeTransition(nn.Module):
    """Update the pair state of each frame from its own singles (FrameDiff's EdgeTransition, per frame).

    z_ij <- LN(z_ij + MLP(W z_ij + U s_i + V s_j)); the first layer is a Linear of [z_ij, s_i, s_j] written as a
    sum so the concatenated [*, N, N, c_z + 2 c_s] tensor is never built.
    """

    def __init__(self, c_s: int, c_z: int) -> None:
        super().__init__()
        self.linear_z = Linear(c_z, c_z, init="relu")
        self.linear_i = Linear(c_s, c_z, bias=False, init="relu")
        self.linear_j = Linear(c_s, c_z, bias=False, init="relu")
        self.mlp = nn.Sequential(nn.ReLU(), Linear(c_z, c_z, init="relu"), nn.ReLU(), Linear(c_z, c_z, init="final"))
        self.layer_norm = nn.LayerNorm(c_z)

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """s [*, N, c_s], z [*, N, N, c_z] -> z [*, N, N, c_z]."""
        h = self.linear_z(z) + self.linear_i(s).unsqueeze(-2) + self.linear_j(s).unsqueeze(-3)  # [*, N, N, c_z]
        return self.layer_norm(z + self.mlp(h))


class BackboneUpdate(nn.Module):
    """AF2 Alg. 23: per-residue quaternion (1, b, c, d) + translation, composed on the RIGHT of the current frame.

    T_i <- T_i o T_update(s_i): the update is expressed in the residue's local frame and computed from invariant
    singles, so a global transform g of the inputs maps g T_i to g T_i o T_update (equivariance).
    """

    def __init__(self, c_s: int) -> None:
        super().__init__()
        self.linear = Linear(c_s, 6, init="final")

    def forward(self, s: torch.Tensor, rigids: Rigid, mask: torch.Tensor) -> Rigid:
        """s [*, N, c_s], rigids Rigid [*, N] (nm), mask [*, N] -> updated Rigid [*, N] (padded residues unchanged)."""
        upd = self.linear(s) * mask.unsqueeze(-1).to(s.dtype)  # [*, N, 6]
        with full_precision(s.device):
            gdt = geometry_dtype(upd.dtype)
            upd = upd.to(gdt)
            quat = torch.cat([torch.ones_like(upd[..., :1]), upd[..., :3]], dim=-1)  # [*, N, 4]
            delta = Rigid(quat_to_rotmat(quat), upd[..., 3:])
            return rigid_full_precision(rigids).compose(delta)


class DiffusionBlock(nn.Module):
    """One block of the STAR-MD trunk over F frames of N residues (see module docstring for the order)."""

    def __init__(self, c_s: int, c_z: int, no_heads_ipa: int, c_hidden_ipa: int, no_qk_points: int,
                 no_v_points: int, n_heads: int, c_hidden: int, transition_n: int, update_pair: bool,
                 c_relative_time: int = 0) -> None:
        super().__init__()
        self.ipa = InvariantPointAttention(c_s, c_z, c_hidden_ipa, no_heads_ipa, no_qk_points, no_v_points)
        self.ipa_layer_norm = nn.LayerNorm(c_s)
        self.st_attention = SpatioTemporalAttention(c_s, n_heads, c_hidden, c_relative_time)
        self.transition = Transition(c_s, transition_n)
        # The last block's pair update would feed nothing (and leave DDP with unused parameters), so it is omitted.
        self.edge_transition = EdgeTransition(c_s, c_z) if update_pair else None
        self.backbone_update = BackboneUpdate(c_s)

    def forward(self, s: torch.Tensor, z: torch.Tensor, rigids: Rigid, res_mask: torch.Tensor,
                attn_mask: torch.Tensor | BlockCausalLayout | None,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                time_feats: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, Rigid, tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            s: [B, F, N, c_s]; z: [B, F, N, N, c_z]; rigids: Rigid [B, F, N] (nm); res_mask: [B, N];
            attn_mask: [B, 1, F N, T_past + F N] bool or a BlockCausalLayout (training); past_kv: cached keys/values [B, H, T_past, C] or None;
            time_feats: frame-lag features for the S x T attention's relative-time bias (or None).
        Returns:
            s, z, rigids (same shapes) and this call's S x T keys/values [B, H, F N, C].
        """
        n_frames = s.shape[1]
        frame_mask = res_mask[:, None].expand(-1, n_frames, -1)  # [B, F, N]
        s = self.ipa_layer_norm(s + self.ipa(s, z, rigids, frame_mask))
        upd, kv = self.st_attention(s.flatten(1, 2), attn_mask, past_kv, time_feats)  # [B, F N, c_s]
        s = s + upd.unflatten(1, (n_frames, -1))
        s = self.transition(s)
        if self.edge_transition is not None:
            z = self.edge_transition(s, z)
        rigids = self.backbone_update(s, rigids, frame_mask)
        return s, z, rigids, kv
