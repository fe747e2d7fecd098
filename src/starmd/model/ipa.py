"""Invariant Point Attention (AlphaFold2 supplement, Algorithm 22), applied within one frame.

Written from the algorithm with OpenFold's layer structure and inits; copies no code. Departure: points are
produced as [*, N, H, P, 3] directly rather than as three coordinate chunks (same function, simpler reshape).
Rigids are expected in nanometres (AF2 works in nm inside the structure module), so point distances are O(1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from starmd.geometry import Rigid
from starmd.model.primitives import Linear, full_precision, geometry_dtype, rigid_full_precision


class InvariantPointAttention(nn.Module):
    """IPA over the N residues of each frame; invariant to a global SE(3) transform of `rigids`."""

    def __init__(self, c_s: int, c_z: int, c_hidden: int, no_heads: int, no_qk_points: int, no_v_points: int,
                 inf: float = 1e5, eps: float = 1e-8) -> None:
        super().__init__()
        self.c_hidden, self.no_heads = c_hidden, no_heads
        self.no_qk_points, self.no_v_points = no_qk_points, no_v_points
        self.inf, self.eps = inf, eps
        hc = no_heads * c_hidden
        self.linear_q = Linear(c_s, hc)
        self.linear_kv = Linear(c_s, 2 * hc)
        self.linear_q_points = Linear(c_s, no_heads * no_qk_points * 3)
        self.linear_kv_points = Linear(c_s, no_heads * (no_qk_points + no_v_points) * 3)
        self.linear_b = Linear(c_z, no_heads)
        # gamma_h = softplus(head_weights) starts at 1 (softplus^-1(1) = log(e - 1)).
        self.head_weights = nn.Parameter(torch.full((no_heads,), math.log(math.e - 1)))
        concat_dim = no_heads * (c_z + c_hidden + no_v_points * 4)
        self.linear_out = Linear(concat_dim, c_s, init="final")

    def forward(self, s: torch.Tensor, z: torch.Tensor, rigids: Rigid, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            s: [*, N, c_s] singles; z: [*, N, N, c_z] pair; rigids: Rigid [*, N] (nm); mask: [*, N] (1 = residue).
        Returns:
            [*, N, c_s] update (zero at init, `final` output layer).
        """
        h, c, pq, pv = self.no_heads, self.c_hidden, self.no_qk_points, self.no_v_points
        q = self.linear_q(s).unflatten(-1, (h, c))  # [*, N, H, C]
        k, v = self.linear_kv(s).unflatten(-1, (h, 2 * c)).split(c, dim=-1)  # [*, N, H, C] each
        q_pts = self.linear_q_points(s).unflatten(-1, (h, pq, 3))  # [*, N, H, Pq, 3]
        kv_pts = self.linear_kv_points(s).unflatten(-1, (h, pq + pv, 3))  # [*, N, H, Pq + Pv, 3]
        b = self.linear_b(z)  # [*, N, N, H]

        # Scalar term: w_L (q.k / sqrt(c) + b), w_L = sqrt(1/3) balances the three logit terms.
        logits = torch.einsum("...ihc,...jhc->...hij", q, k) / math.sqrt(c) + b.movedim(-1, -3)  # [*, H, N, N]

        with full_precision(s.device):
            gdt = geometry_dtype(s.dtype)
            r = rigid_full_precision(rigids).unsqueeze(-1).unsqueeze(-1)  # [*, N, 1, 1]
            q_pts = r.apply(q_pts.to(gdt))  # [*, N, H, Pq, 3] global
            k_pts, v_pts = r.apply(kv_pts.to(gdt)).split([pq, pv], dim=-2)  # global
            # Point term: -gamma_h w_C / 2 sum_p |T_i q_ip - T_j k_jp|^2, w_C = sqrt(2 / (9 Pq)).
            d2 = ((q_pts.unsqueeze(-4) - k_pts.unsqueeze(-5)) ** 2).sum(dim=(-1, -2))  # [*, N, N, H]
            gamma = F.softplus(self.head_weights.to(gdt)) * math.sqrt(2.0 / (9.0 * pq))
            pt_logits = (-0.5 * gamma * d2).movedim(-1, -3)  # [*, H, N, N]
            pair_mask = mask[..., :, None] * mask[..., None, :]  # [*, N, N]
            mask_bias = (self.inf * (pair_mask.to(gdt) - 1.0)).unsqueeze(-3)  # [*, 1, N, N]
            a = torch.softmax(math.sqrt(1.0 / 3.0) * (logits.to(gdt) + pt_logits) + mask_bias, dim=-1)  # [*, H, N, N]

            # Output points, mapped back to each residue's local frame (invariant).
            o_pt = torch.einsum("...hij,...jhpx->...ihpx", a, v_pts)  # [*, N, H, Pv, 3] global
            o_pt = r.invert_apply(o_pt)  # [*, N, H, Pv, 3] local
            o_pt_norm = torch.sqrt((o_pt**2).sum(-1) + self.eps)  # [*, N, H, Pv]

        a = a.to(v.dtype)  # back to the activation dtype (bf16 under autocast) for the scalar/pair outputs
        o = torch.einsum("...hij,...jhc->...ihc", a, v)  # [*, N, H, C]
        o_pair = torch.einsum("...hij,...ijc->...ihc", a, z)  # [*, N, H, c_z]
        feats = [o.flatten(-2), o_pt.flatten(-3), o_pt_norm.flatten(-2), o_pair.flatten(-2)]
        return self.linear_out(torch.cat([f.to(o.dtype) for f in feats], dim=-1))  # [*, N, c_s]
