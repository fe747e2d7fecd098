"""Joint spatio-temporal (S x T) attention over residue-frame tokens, and the block-causal training mask.

Tokens are flattened frame-major: token index = frame * N + residue. The attention acts on SE(3)-invariant singles
only, so it is invariant; its keys and values are the only per-frame state that crosses frames, which is what the KV
cache stores. Temporal position enters twice: the FrameEncoder's absolute time embeddings, and (`relative_time`) a
learned per-head bias on the query-key frame-time difference in units of the stride, which tells the most recent
frame from older ones at any absolute time (the log-time embeddings of consecutive frames 1 ns into a trajectory
differ by ~1e-3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from starmd.model.embeddings import log_time_embedding
from starmd.model.primitives import Linear


def block_causal_frame_mask(n_frames: int, window: int | None = None,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Frame-level mask [2L, 2L] (True = may attend) for L context frames followed by L target frames.

    Context frame l attends to context frames l' <= l; target frame l attends to context frames l' < l and to
    itself. With `window` = K only the K most recent context frames are visible (l - K <= l'), matching a KV cache
    that keeps the last K frames.
    """
    if n_frames < 1:
        raise ValueError(f"block_causal_mask needs L >= 1 frames, got {n_frames}")
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of frames or None, got {window}")
    idx = torch.arange(n_frames, device=device)
    q, k = idx[:, None], idx[None, :]  # query frame, key frame
    oldest_ok = torch.ones_like(q == k) if window is None else (k >= q - window)
    ctx_ctx = (k <= q) & oldest_ok
    tgt_ctx = (k < q) & oldest_ok
    tgt_tgt = q == k
    no = torch.zeros_like(tgt_tgt)
    return torch.cat([torch.cat([ctx_ctx, no], dim=1), torch.cat([tgt_ctx, tgt_tgt], dim=1)], dim=0)


def block_causal_mask(n_frames: int, n_res: int, window: int | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Token-level block-causal mask [2 L N, 2 L N] (bool, True = may attend) for frame-major tokens.

    Every residue of a visible frame is visible (spatial attention is full within and across allowed frames).
    """
    frame_mask = block_causal_frame_mask(n_frames, window, device)
    return frame_mask.repeat_interleave(n_res, dim=0).repeat_interleave(n_res, dim=1)


def residue_attention_mask(allowed: torch.Tensor, query_valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Combine a frame mask [Tq, Tk] with residue masks [B, Tq], [B, Tk] -> [B, 1, Tq, Tk] for SDPA.

    Real queries never see padded keys. Padded queries keep every key `allowed` gives them (their output is
    discarded), so no softmax row is empty (an all-False row would give NaN).
    """
    q_valid = query_valid.bool()[:, None, :, None]  # [B, 1, Tq, 1]
    k_valid = key_valid.bool()[:, None, None, :]  # [B, 1, 1, Tk]
    return allowed & (k_valid | ~q_valid)


def relative_time_features(query_time: torch.Tensor, key_time: torch.Tensor, delta_t: torch.Tensor,
                           dim: int) -> torch.Tensor:
    """Features [B, Fq, Fk, dim] of the frame lag (query time - key time) / Delta-t, clamped at 0 (masked pairs).

    Lags are in strides, so "the previous frame" looks the same at every Delta-t and absolute time; log(1 + lag)
    Fourier features (unit 1 frame) keep any lag, including ones longer than the training window, well defined.
    """
    lag = (query_time[:, :, None] - key_time[:, None, :]) / delta_t[:, None, None]  # [B, Fq, Fk]
    return log_time_embedding(lag.clamp_min(0), dim, unit_ps=1.0)


class SpatioTemporalAttention(nn.Module):
    """Gated multi-head attention of residue-frame tokens over all tokens the mask allows (pre-LayerNorm residual),
    with an optional learned bias per head on the frame lag (zero at initialisation)."""

    def __init__(self, c_s: int, n_heads: int, c_hidden: int, c_relative_time: int = 0) -> None:
        super().__init__()
        self.n_heads, self.c_hidden = n_heads, c_hidden
        self.linear_time = Linear(c_relative_time, n_heads, bias=False, init="final") if c_relative_time else None
        self.layer_norm = nn.LayerNorm(c_s)
        self.linear_q = Linear(c_s, n_heads * c_hidden, bias=False, init="glorot")
        self.linear_kv = Linear(c_s, 2 * n_heads * c_hidden, bias=False, init="glorot")
        self.linear_g = Linear(c_s, n_heads * c_hidden, init="gating")
        self.linear_out = Linear(n_heads * c_hidden, c_s, init="final")

    def forward(self, s: torch.Tensor, attn_mask: torch.Tensor | None,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, time_feats: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            s: [B, T, c_s] query tokens (frame-major); attn_mask: [B, 1, T, T_past + T] bool, True = may attend;
                None = every token may attend to every key (inference without padding).
            past_kv: cached (keys, values), each [B, H, T_past, C], placed before this call's own keys.
            time_feats: [B, Fq, Fk, c_relative_time] frame-lag features (relative_time_features) of the query
                frames vs all key frames (held + own), required when the layer has a relative-time bias.
        Returns:
            update [B, T, c_s] (to add to s) and this call's own (keys, values) [B, H, T, C] for the cache.
        """
        x = self.layer_norm(s)
        q = self.linear_q(x).unflatten(-1, (self.n_heads, self.c_hidden)).transpose(1, 2)  # [B, H, T, C]
        k, v = self.linear_kv(x).unflatten(-1, (self.n_heads, 2 * self.c_hidden)).transpose(1, 2).chunk(2, dim=-1)
        k_all, v_all = (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
        mask = attn_mask
        if self.linear_time is not None:
            bias = self.linear_time(time_feats.to(x.dtype)).permute(0, 3, 1, 2)  # [B, H, Fq, Fk]
            n_res_q, n_res_k = q.shape[2] // bias.shape[2], k_all.shape[2] // bias.shape[3]
            bias = bias.repeat_interleave(n_res_q, dim=2).repeat_interleave(n_res_k, dim=3)  # [B, H, Tq, Tk]
            mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        o = F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=mask)
        o = o.transpose(1, 2).flatten(-2)  # [B, T, H * C]
        o = o * torch.sigmoid(self.linear_g(x))
        return self.linear_out(o), (k, v)
