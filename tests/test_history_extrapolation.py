"""model.history_extrapolation: the x0 translation of target l adds a learned combination of the displacements
between its last K + 1 context frames. Pinned: which displacements each target gets (causal, windowed), the cache
equals the block-causal forward, SE(3) equivariance, a zero head at initialisation, a window of 1 is Markovian."""

from __future__ import annotations

import pytest
import torch

from starmd.geometry import Rigid, random_rotation
from starmd.model import StarMD
from starmd.model.network import cached_displacements, window_displacements

from test_model_network import C_S_IN, C_Z_IN, F64, TINY, inputs, max_err, rollout_predictions, tiny_model, transform

K = 3


def test_window_displacements_are_the_steps_between_visible_context_frames():
    # frame j of residue n sits at (j^2 + n) along x: step j-1 -> j is 2j - 1, whatever the residue
    n_frames, n = 6, 2
    x = torch.zeros(1, n_frames, n, 3, dtype=F64)
    x[..., 0] = torch.arange(n_frames, dtype=F64)[:, None] ** 2 + torch.arange(n, dtype=F64)
    for window in (None, 3, 1):
        d = window_displacements(x, K, window)
        assert d.shape == (1, n_frames, K, n, 3)
        for l in range(n_frames):
            for k in range(1, K + 1):
                visible = l - k - 1 >= 0 and (window is None or l - k - 1 >= l - window)
                want = (2 * (l - k) - 1) if visible else 0.0
                assert torch.all(d[0, l, k - 1, :, 0] == want), (window, l, k)
        assert torch.count_nonzero(d[..., 1:]) == 0


def test_cached_displacements_match_the_forward_for_the_next_target():
    x = torch.randn(2, 5, 4, 3, dtype=F64)
    full = window_displacements(x, K, None)
    for held in range(0, 5):  # the cache has appended context frames 0..held-1; the next target is frame `held`
        recent = None if held == 0 else x[:, max(0, held - (K + 1)):held]
        assert torch.equal(cached_displacements(recent, K, x[:, 0]), full[:, held])


@pytest.mark.parametrize("coupling", ["pair", "residue", "anchor"])
@pytest.mark.parametrize("window", [None, 2])
def test_cached_rollout_equals_block_causal_forward(window, coupling):
    model, x = tiny_model(history_extrapolation=K, history_coupling=coupling), inputs(n_frames=5)
    full = model(**x, window=window)["pred_rigids"]
    preds, cache = rollout_predictions(model, x, window)
    for l, pred in enumerate(preds):
        assert max_err(pred, full[:, l]) < 1e-5, l
    assert cache.recent_trans.shape[1] == (K + 1 if window is None else window)


@pytest.mark.parametrize("coupling", ["pair", "residue", "anchor"])
def test_extrapolation_reaches_late_targets_and_is_causal(coupling):
    model, x = tiny_model(history_extrapolation=K, history_coupling=coupling), inputs(n_frames=5)
    plain = tiny_model(history_extrapolation=K, history_coupling=coupling)
    with torch.no_grad():
        plain.extrapolation.weight.zero_()
        plain.extrapolation.bias.zero_()
    out, ref = model(**x)["pred_rigids"], plain(**x)["pred_rigids"]
    assert torch.equal(out.trans[:, :2], ref.trans[:, :2])  # targets 0 and 1 have no context step yet
    if coupling != "anchor":  # the output shift moves translations only; a moved anchor changes what the trunk sees
        assert torch.equal(out.rots, ref.rots)
    assert (out.trans[:, 2:] - ref.trans[:, 2:]).abs().amax() > 1e-2
    # moving context frame 3 changes target 4 only
    moved = Rigid(x["ctx"].rots, x["ctx"].trans.clone())
    moved.trans[:, 3] += 1.0
    out2 = model(**{**x, "ctx": moved})["pred_rigids"]
    assert torch.equal(out2.trans[:, :4], out.trans[:, :4]) and max_err(out2[:, 4], out[:, 4]) > 1e-3


@pytest.mark.parametrize("coupling", ["pair", "residue", "anchor"])
def test_output_stays_se3_equivariant(coupling):
    model, x = tiny_model(history_extrapolation=K, history_coupling=coupling), inputs(n_frames=5)
    out = model(**x)["pred_rigids"]
    g = torch.Generator().manual_seed(3)
    rot, shift = random_rotation((), g, dtype=F64), 15.0 * torch.randn(3, generator=g, dtype=F64)
    moved = model(**{**x, "ctx": transform(x["ctx"], rot, shift), "tgt": transform(x["tgt"], rot, shift)})
    assert max_err(moved["pred_rigids"], transform(out, rot, shift)) < 1e-5


@pytest.mark.parametrize("coupling", ["pair", "residue", "anchor"])
def test_head_starts_at_zero_so_a_new_model_predicts_as_without_it(coupling):
    torch.manual_seed(0)
    with_head = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY, history_extrapolation=K,
                       history_coupling=coupling).to(F64)
    without = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY).to(F64)
    missing, unexpected = without.load_state_dict(with_head.state_dict(), strict=False)
    assert not missing and unexpected == ["extrapolation.weight", "extrapolation.bias"]
    x = inputs(n_frames=5)
    assert max_err(with_head(**x)["pred_rigids"], without(**x)["pred_rigids"]) == 0.0


def test_a_context_window_of_one_adds_nothing():
    """With window 1 (the Markovian ablation) no displacement is visible, so the head changes nothing."""
    model, x = tiny_model(history_extrapolation=K), inputs(n_frames=5)
    plain = tiny_model(history_extrapolation=K)
    with torch.no_grad():
        plain.extrapolation.weight.zero_()
        plain.extrapolation.bias.zero_()
    assert max_err(model(**x, window=1)["pred_rigids"], plain(**x, window=1)["pred_rigids"]) == 0.0
    assert max_err(model(**x, window=2)["pred_rigids"], plain(**x, window=2)["pred_rigids"]) > 1e-3


def test_pair_coupling_moves_a_residue_with_the_others_displacements():
    """With pair weights, residue 0's shift follows residue 3's history; padding moves nobody."""
    model, x = tiny_model(history_extrapolation=K), inputs(n_frames=5)
    d = window_displacements(x["ctx"].trans, K, None)
    out = model(**x)
    pred = out["pred_rigids"]
    bumped = d.clone()
    bumped[:, :, :, 3] += 1.0
    shifted = model._shifted(pred, _final_pair(model, x), bumped, x["res_mask"])
    base = model._shifted(pred, _final_pair(model, x), d, x["res_mask"])
    assert (shifted.trans[:, 2:, 0] - base.trans[:, 2:, 0]).abs().amax() > 1e-4
    padded = d.clone()
    padded[1, :, :, 0] += 100.0  # residue 0 of protein 1 is padding
    moved = model._shifted(pred, _final_pair(model, x), padded, x["res_mask"])
    assert torch.equal(moved.trans, base.trans)


def _final_pair(model: StarMD, x: dict) -> torch.Tensor:
    """Any pair tensor of the right shape [B, L, N, N, c_z] (the head is linear in it)."""
    b, n_frames, n = x["tgt"].shape
    g = torch.Generator().manual_seed(9)
    return torch.randn(b, n_frames, n, n, TINY["c_z"], generator=g, dtype=F64)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="history_extrapolation"):
        StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY, history_extrapolation=-1)
    with pytest.raises(ValueError, match="history_coupling"):
        StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **TINY, history_extrapolation=2, history_coupling="global")
