"""block_causal_mask against its definition, and the residue-mask combination used with SDPA."""

from __future__ import annotations

import pytest
import torch

from starmd.model import block_causal_frame_mask, block_causal_mask
from starmd.model.attention import residue_attention_mask


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
