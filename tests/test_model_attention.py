"""block_causal_mask against its definition, the residue-mask combination used with SDPA, and the mask-free
training attention against the dense mask."""

from __future__ import annotations

import pytest
import torch

from starmd.model import block_causal_frame_mask, block_causal_mask
from starmd.model.attention import (BlockCausalLayout, SpatioTemporalAttention, relative_time_features,
                                     residue_attention_mask)


def _allowed(q: int, k: int, n_frames: int, window: int | None) -> bool:
    """Definition: frames 0..L-1 are context, L..2L-1 targets (spec of issue 4)."""
    q_tgt, k_tgt = q >= n_frames, k >= n_frames
    ql, kl = q % n_frames, k % n_frames
    recent = window is None or kl >= ql - window
    if k_tgt:
        return q_tgt and ql == kl
    return recent and (kl < ql if q_tgt else kl <= ql)


@pytest.mark.parametrize("window", [None, 1, 2])
def test_block_causal_mask_matches_definition(window):
    n_frames, n_res = 4, 3
    frame = block_causal_frame_mask(n_frames, window)
    expected = torch.tensor([[_allowed(q, k, n_frames, window) for k in range(2 * n_frames)]
                             for q in range(2 * n_frames)])
    assert frame.dtype == torch.bool and torch.equal(frame, expected)
    tok = block_causal_mask(n_frames, n_res, window)
    assert tok.shape == (2 * n_frames * n_res,) * 2
    for q in range(tok.shape[0]):
        for k in range(tok.shape[1]):
            assert tok[q, k] == expected[q // n_res, k // n_res]


def test_target_zero_sees_only_itself_and_context_zero_only_itself():
    m = block_causal_frame_mask(3)
    assert m[3].tolist() == [False, False, False, True, False, False]
    assert m[0].tolist() == [True, False, False, False, False, False]
    assert m[5].tolist() == [True, True, False, False, False, True]


def test_bad_mask_arguments_raise():
    with pytest.raises(ValueError, match="L >= 1"):
        block_causal_mask(0, 3)
    with pytest.raises(ValueError, match="window"):
        block_causal_mask(2, 3, window=0)


def test_residue_mask_hides_padding_and_never_empties_a_row():
    allowed = block_causal_mask(2, 3)  # [12, 12]
    valid = torch.tensor([[1, 1, 0] * 4])  # residue 2 padded in every frame
    m = residue_attention_mask(allowed, valid, valid)[0, 0]
    real = valid[0].bool()
    assert not m[real][:, ~real].any()  # real queries never see padded keys
    assert torch.equal(m[real][:, real], allowed[real][:, real])
    assert m.any(-1).all()  # padded queries keep their allowed keys: no all-False (NaN) softmax row


@pytest.mark.parametrize("window, relative_time, padded", [(None, False, False), (None, False, True),
                                                           (2, False, True), (None, True, True), (1, True, False)])
def test_mask_free_training_attention_equals_the_dense_mask(window, relative_time, padded):
    """The training path (BlockCausalLayout, frame by frame, no token mask) gives the dense-mask output and input
    gradient of every real token, to float64 round-off; also with padded residues, a window and the time bias."""
    torch.manual_seed(0)
    b, n_frames, n, c_s, c_rel = 2, 4, 5, 12, 6
    layer = SpatioTemporalAttention(c_s, n_heads=3, c_hidden=4, c_relative_time=c_rel if relative_time else 0).double()
    if relative_time:  # the bias starts at zero ("final" init): make it matter
        torch.nn.init.normal_(layer.linear_time.weight)
    torch.nn.init.normal_(layer.linear_out.weight)
    res_mask = torch.ones(b, n, dtype=torch.bool)
    if padded:
        res_mask[0, 3:] = False
        res_mask[1, 4:] = False
    times = torch.cumsum(torch.rand(b, n_frames, dtype=torch.float64) + 0.5, dim=1)
    time_feats = relative_time_features(times.repeat(1, 2), times.repeat(1, 2), torch.ones(b, dtype=torch.float64),
                                        c_rel) if relative_time else None
    s = torch.randn(b, 2 * n_frames * n, c_s, dtype=torch.float64, requires_grad=True)
    valid = res_mask.repeat(1, 2 * n_frames)
    dense = residue_attention_mask(block_causal_mask(n_frames, n, window), valid, valid)
    out_dense, kv_dense = layer(s, dense, time_feats=time_feats)
    out_free, kv_free = layer(s, BlockCausalLayout(n_frames, n, res_mask, window), time_feats=time_feats)
    real = valid[..., None].double()
    assert torch.allclose(out_free * real, out_dense * real, atol=1e-12, rtol=0)
    assert (out_free * real).abs().max() > 0.1  # a real update, not two zeros
    assert all(torch.equal(a, b) for a, b in zip(kv_free, kv_dense))
    weights = torch.randn_like(out_dense) * real
    (grad_dense,) = torch.autograd.grad((out_dense * weights).sum(), s)
    (grad_free,) = torch.autograd.grad((out_free * weights).sum(), s)
    assert torch.allclose(grad_free, grad_dense, atol=1e-12, rtol=0)


def test_block_causal_layout_takes_no_cached_keys():
    layer = SpatioTemporalAttention(8, n_heads=2, c_hidden=4)
    kv = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="BlockCausalLayout describes a whole training window"):
        layer(torch.zeros(1, 2 * 2 * 3, 8), BlockCausalLayout(2, 3, torch.ones(1, 3, dtype=torch.bool)), (kv, kv))
