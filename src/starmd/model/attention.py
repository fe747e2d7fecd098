"""Joint spatio-temporal (S x T) attention over residue-frame tokens, and the block-causal training pattern.

Tokens are flattened frame-major: token index = frame * N + residue. The attention acts on SE(3)-invariant singles
only, so it is invariant; its keys and values are the only per-frame state that crosses frames, which is what the KV
cache stores. Temporal position enters twice: the FrameEncoder's absolute time embeddings, and (`relative_time`) a
learned per-head bias on the query-key frame-time difference in units of the stride, which tells the most recent
frame from older ones at any absolute time (the log-time embeddings of consecutive frames 1 ns into a trajectory
differ by ~1e-3).

Training attends block-causally without a token mask (`BlockCausalLayout`, `block_causal_attention`): the dense
mask [B, 1, 2LN, 2LN] costs 268 MB per sample at L = 16, N = 256 and keeps SDPA off its fused kernels.
`block_causal_mask` stays the reference the structured path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class BlockCausalLayout:
    """The block-causal training pattern by its frames (L context then L target frames of N residues, frame-major
    tokens), in place of a token mask. `res_mask` [B, N] (True = real residue); `window` as in block_causal_mask."""

    n_frames: int
    n_res: int
    res_mask: torch.Tensor
    window: int | None = None


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout,
                           frame_bias: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over the block-causal pattern one frame at a time; no [T, T] mask is built.

    Context queries of frame l attend to context frames [l - K, l], a view of the keys (no copy); target queries of
    frame l to context frames [l - K, l) followed by target frame l (one concatenation). The only masks are per key
    (padded residues, the relative-time bias), [B, 1 or H, 1, T_keys]; with neither, SDPA gets no mask at all and may
    use its fused kernels. Real queries see exactly the keys of block_causal_mask; padded queries see only real keys
    (their outputs are discarded).

    Args:
        q, k, v: [B, H, 2 L N, C] frame-major tokens. frame_bias: [B, H, 2L, 2L] additive bias per (query frame,
            key frame), or None.
    Returns:
        [B, H, 2 L N, C] attention output.
    """
    n_frames, n_res, window = layout.n_frames, layout.n_res, layout.window
    q5, k5, v5 = (x.contiguous().unflatten(2, (2, n_frames, n_res)) for x in (q, k, v))  # [B, H, 2, L, N, C]
    valid = layout.res_mask.bool()
    padded = not bool(valid.all())
    outputs: list[list[torch.Tensor]] = [[], []]  # context, target outputs per frame, [B, H, N, C] each
    for f in range(n_frames):
        first = 0 if window is None else max(0, f - window)
        own = {0: (k5[:, :, 0, first:f + 1].flatten(2, 3), v5[:, :, 0, first:f + 1].flatten(2, 3))}  # views
        own[1] = tuple(torch.cat([x[:, :, 0, first:f].flatten(2, 3), x[:, :, 1, f]], dim=2) for x in (k5, v5))
        for kind, row in ((0, f), (1, n_frames + f)):
            mask = None
            if padded or frame_bias is not None:
                mask = valid.repeat(1, f - first + 1)[:, None, None, :]  # [B, 1, 1, Tk]
            if frame_bias is not None:  # bias of this query frame to each key frame: context [first, f), then own
                last = frame_bias[:, :, row, f if kind == 0 else row][..., None]
                bias = torch.cat([frame_bias[:, :, row, first:f], last], dim=-1)  # [B, H, f - first + 1]
                mask = bias.repeat_interleave(n_res, dim=-1)[:, :, None, :].masked_fill(~mask, float("-inf"))
            keys, values = own[kind]
            outputs[kind].append(F.scaled_dot_product_attention(q5[:, :, kind, f], keys.to(q.dtype),
                                                                values.to(q.dtype), attn_mask=mask))
    return torch.stack([torch.stack(o, dim=2) for o in outputs], dim=2).flatten(2, 4)


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

    def forward(self, s: torch.Tensor, attn_mask: torch.Tensor | BlockCausalLayout | None,
                past_kv: tuple[torch.Tensor, torch.Tensor] | None = None, time_feats: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            s: [B, T, c_s] query tokens (frame-major); attn_mask: [B, 1, T, T_past + T] bool, True = may attend;
                None = every token may attend to every key (inference without padding); or a BlockCausalLayout
                (training: T = 2 L N, no past_kv), attended frame by frame without a token mask.
            past_kv: cached (keys, values), each [B, H, T_past, C], placed before this call's own keys.
            time_feats: [B, Fq, Fk, c_relative_time] frame-lag features (relative_time_features) of the query
                frames vs all key frames (held + own), required when the layer has a relative-time bias.
        Returns:
            update [B, T, c_s] (to add to s) and this call's own (keys, values) [B, H, T, C] for the cache.
        """
        x = self.layer_norm(s)
        q = self.linear_q(x).unflatten(-1, (self.n_heads, self.c_hidden)).transpose(1, 2)  # [B, H, T, C]
        k, v = self.linear_kv(x).unflatten(-1, (self.n_heads, 2 * self.c_hidden)).transpose(1, 2).chunk(2, dim=-1)
        bias = None if self.linear_time is None else \
            self.linear_time(time_feats.to(x.dtype)).permute(0, 3, 1, 2)  # [B, H, Fq, Fk]
        if isinstance(attn_mask, BlockCausalLayout):
            if past_kv is not None:
                raise ValueError("a BlockCausalLayout describes a whole training window; it takes no past keys")
            o = block_causal_attention(q, k, v, attn_mask, bias)
            return self._output(o, x), (k, v)
        k_all, v_all = (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
        mask = attn_mask
        if bias is not None:
            n_res_q, n_res_k = q.shape[2] // bias.shape[2], k_all.shape[2] // bias.shape[3]
            bias = bias.repeat_interleave(n_res_q, dim=2).repeat_interleave(n_res_k, dim=3)  # [B, H, Tq, Tk]
            mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        o = F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=mask)
        return self._output(o, x), (k, v)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Heads [B, H, T, C] -> gated update [B, T, c_s] (gate from the normalised input x)."""
        o = o.transpose(1, 2).flatten(-2)  # [B, T, H * C]
        return self.linear_out(o * torch.sigmoid(self.linear_g(x)))
