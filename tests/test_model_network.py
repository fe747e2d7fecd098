"""StarMD network contracts: SE(3) equivariance, zero causal leakage, KV-cache equivalence and memory, residue
permutation equivariance, bf16 autocast, and a real training step of a ~1M-parameter model."""

from __future__ import annotations

import pytest
import torch

from starmd.geometry import Rigid, random_rotation, rotvec_to_rotmat
from starmd.model import KVCache, StarMD, kv_cache_nbytes, pair_cache_nbytes
from starmd.model.frame_encoder import relative_geometry

C_S_IN, C_Z_IN = 12, 6
TINY = dict(c_s=16, c_z=8, n_blocks=2, n_heads=2, c_hidden=4, no_heads_ipa=2, c_hidden_ipa=4, no_qk_points=2,
            no_v_points=2, transition_n=1, c_time=8, c_phys_time=4, n_rbf=4, c_relative_time=4)
F64 = torch.float64


def tiny_model(seed: int = 0, dtype: torch.dtype = F64, **overrides) -> StarMD:
    """Tiny model whose zero-initialised ("final") layers are perturbed, so every block changes its output."""
    torch.manual_seed(seed)
    model = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **{**TINY, **overrides}).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def inputs(b: int = 2, n_frames: int = 3, n: int = 5, seed: int = 0, dtype: torch.dtype = F64) -> dict:
    """Random protein features and trajectories; residue 0 of the second protein is padding."""
    g = torch.Generator().manual_seed(seed)

    def rigids() -> Rigid:
        ca = torch.cumsum(3.8 * torch.nn.functional.normalize(torch.randn(b, n_frames, n, 3, generator=g,
                                                                             dtype=dtype), dim=-1), dim=2)
        return Rigid(random_rotation((b, n_frames, n), g, dtype=dtype), ca + 2.0 * torch.randn(3, generator=g,
                                                                                                 dtype=dtype))

    res_mask = torch.ones(b, n, dtype=dtype)
    res_mask[-1, 0] = 0
    return dict(
        single=torch.randn(b, n, C_S_IN, generator=g, dtype=dtype),
        pair=torch.randn(b, n, n, C_Z_IN, generator=g, dtype=dtype),
        ctx=rigids(), ctx_t=0.1 * torch.rand(b, n_frames, generator=g, dtype=dtype),
        tgt=rigids(), tgt_t=torch.rand(b, n_frames, generator=g, dtype=dtype),
        frame_time_ps=100.0 * torch.arange(n_frames, dtype=dtype).expand(b, n_frames).clone(),
        delta_t_ps=torch.tensor([100.0, 40.0][:b] + [10.0] * max(0, b - 2), dtype=dtype),
        res_mask=res_mask,
    )


def transform(r: Rigid, rot: torch.Tensor, shift: torch.Tensor) -> Rigid:
    """Apply one global x -> rot x + shift to every frame."""
    return Rigid(rot @ r.rots, r.trans @ rot.T + shift)


def max_err(a: Rigid, b: Rigid) -> float:
    return max((a.rots - b.rots).abs().max().item(), (a.trans - b.trans).abs().max().item())


def test_output_is_se3_equivariant():
    model, x = tiny_model(), inputs()
    out = model(**x)["pred_rigids"]
    assert out.shape == (2, 3, 5) and out.dtype == F64
    assert max_err(out, x["tgt"]) > 0.1  # the network does move the frames
    g = torch.Generator().manual_seed(5)
    rot, shift = random_rotation((), g, dtype=F64), 20.0 * torch.randn(3, generator=g, dtype=F64)
    moved = model(**{**x, "ctx": transform(x["ctx"], rot, shift), "tgt": transform(x["tgt"], rot, shift)})
    assert max_err(moved["pred_rigids"], transform(out, rot, shift)) < 1e-5
    assert (moved["single"] - model(**x)["single"]).abs().max() < 1e-8  # singles are invariant


def test_frame_features_are_invariant_to_global_translation_and_rotation():
    x = inputs()
    feats, d = relative_geometry(x["tgt"], 8, 20.0)
    g = torch.Generator().manual_seed(2)
    for rot in (torch.eye(3, dtype=F64), random_rotation((), g, dtype=F64)):
        feats2, d2 = relative_geometry(transform(x["tgt"], rot, torch.tensor([30.0, -12.0, 7.0], dtype=F64)), 8, 20.0)
        assert (feats2 - feats).abs().max() < 1e-10 and (d2 - d).abs().max() < 1e-10
    assert feats.shape == (2, 3, 5, 5, 8 + 12)


@pytest.mark.parametrize("l", [0, 1])
def test_no_causal_leakage_bitwise(l):
    model, x = tiny_model(), inputs(n_frames=3)
    out = model(**x)["pred_rigids"]
    g = torch.Generator().manual_seed(9)
    later = slice(l + 1, None)
    y = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in x.items()}
    for key in ("ctx", "tgt"):
        r = x[key]
        rots, trans = r.rots.clone(), r.trans.clone()
        rots[:, later] = random_rotation(tuple(rots[:, later].shape[:-2]), g, dtype=F64)
        trans[:, later] += 10.0 * torch.randn(trans[:, later].shape, generator=g, dtype=F64)
        y[key] = Rigid(rots, trans)
    y["ctx_t"][:, later] = 0.05
    y["tgt_t"][:, later] = 0.9
    y["frame_time_ps"][:, later] += 1234.0
    out2 = model(**y)["pred_rigids"]
    assert torch.equal(out2.rots[:, : l + 1], out.rots[:, : l + 1])
    assert torch.equal(out2.trans[:, : l + 1], out.trans[:, : l + 1])
    assert max_err(out2[:, later], out[:, later]) > 1e-3  # the change did reach the later frames


def test_gradient_of_frame_l_wrt_later_frames_is_exactly_zero():
    model, x = tiny_model(), inputs(n_frames=3)
    leaves = {"ctx_rots": x["ctx"].rots, "ctx_trans": x["ctx"].trans, "tgt_rots": x["tgt"].rots,
              "tgt_trans": x["tgt"].trans, "ctx_t": x["ctx_t"], "tgt_t": x["tgt_t"], "frame_time_ps": x["frame_time_ps"]}
    for v in leaves.values():
        v.requires_grad_(True)
    x = {**x, "ctx": Rigid(leaves["ctx_rots"], leaves["ctx_trans"]), "tgt": Rigid(leaves["tgt_rots"],
                                                                                   leaves["tgt_trans"])}
    out = model(**x)["pred_rigids"]
    l = 1
    (out.rots[:, l].sum() + out.trans[:, l].sum()).backward()
    for name, v in leaves.items():
        assert torch.count_nonzero(v.grad[:, l + 1:]) == 0, name
    assert leaves["ctx_trans"].grad[:, :l].abs().max() > 0 and leaves["tgt_trans"].grad[:, l].abs().max() > 0
    assert torch.count_nonzero(leaves["ctx_trans"].grad[:, l]) == 0  # target l does not see context l


def rollout_predictions(model: StarMD, x: dict, window: int | None = None) -> tuple[list[Rigid], KVCache]:
    """Cached rollout: step on target l, then append context l."""
    cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"], window=window)
    preds = []
    for l in range(x["tgt"].shape[1]):
        before = [k.clone() for k in cache.keys if k is not None]
        preds.append(model.step(cache, x["tgt"][:, l], x["tgt_t"][:, l], x["frame_time_ps"][:, l])["pred_rigids"])
        assert all(torch.equal(a, b) for a, b in zip(before, [k for k in cache.keys if k is not None]))
        assert cache.n_frames == min(l, window or l)  # step did not grow the cache
        model.append(cache, x["ctx"][:, l], x["ctx_t"][:, l], x["frame_time_ps"][:, l])
    return preds, cache


@pytest.mark.parametrize("window", [None, 2])
def test_cached_rollout_equals_block_causal_forward(window):
    model, x = tiny_model(), inputs(n_frames=4)
    full = model(**x, window=window)["pred_rigids"]
    preds, cache = rollout_predictions(model, x, window)
    for l, pred in enumerate(preds):
        assert max_err(pred, full[:, l]) < 1e-5, l
    assert cache.frames_seen == 4 and cache.n_frames == (4 if window is None else window)
    if window is not None:  # the window really drops context: the last frame differs from the unwindowed forward
        assert max_err(preds[-1], model(**x)["pred_rigids"][:, -1]) > 1e-6


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cache_memory_is_2_layers_n_l_d_dtype(dtype):
    model = tiny_model(dtype=dtype)
    d = TINY["n_heads"] * TINY["c_hidden"]
    for n in (4, 7):
        x = inputs(b=2, n_frames=3, n=n, dtype=dtype)
        cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
        sizes = [cache.nbytes()]
        for l in range(3):
            model.append(cache, x["ctx"][:, l], x["ctx_t"][:, l], x["frame_time_ps"][:, l])
            sizes.append(cache.nbytes())
        item = torch.tensor([], dtype=dtype).element_size()
        assert sizes == [2 * TINY["n_blocks"] * 2 * n * frames * d * item for frames in range(4)]
        assert sizes[-1] == kv_cache_nbytes(TINY["n_blocks"], TINY["n_heads"], TINY["c_hidden"], n, 3, 2, dtype)
        assert cache.static_nbytes() == 2 * n * (TINY["c_s"] + n * TINY["c_z"]) * item  # held once, not per frame
    windowed = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"], window=1)
    for l in range(3):
        model.append(windowed, x["ctx"][:, l], x["ctx_t"][:, l], x["frame_time_ps"][:, l])
    assert windowed.nbytes() == 2 * TINY["n_blocks"] * 2 * 7 * 1 * d * item


def test_singles_cache_is_far_smaller_than_a_pair_cache_at_paper_scale():
    """N = 500, L = 400, 8 blocks, 8 x 32 heads vs c_z = 128, bf16: the ratio is N c_z / (2 d) = 125."""
    singles = kv_cache_nbytes(8, 8, 32, 500, 400, dtype=torch.bfloat16)
    pairs = pair_cache_nbytes(8, 128, 500, 400, dtype=torch.bfloat16)
    assert singles == 2 * 8 * 500 * 400 * 256 * 2 and pairs == 8 * 500 * 500 * 400 * 128 * 2
    assert pairs / singles == pytest.approx(125.0)


def test_residue_permutation_permutes_outputs():
    model, x = tiny_model(), inputs(n=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    y = dict(x, single=x["single"][:, perm], pair=x["pair"][:, perm][:, :, perm], ctx=x["ctx"][:, :, perm],
             tgt=x["tgt"][:, :, perm], res_mask=x["res_mask"][:, perm])
    out, out_p = model(**x), model(**y)
    assert max_err(out_p["pred_rigids"], out["pred_rigids"][:, :, perm]) < 1e-10
    assert (out_p["single"] - out["single"][:, :, perm]).abs().max() < 1e-10


def test_padded_residues_keep_their_frames_and_do_not_influence_real_ones():
    model, x = tiny_model(), inputs()
    out = model(**x)["pred_rigids"]
    # a padded residue is never updated: it keeps its anchor frame (target 0: itself; target l: context l - 1)
    assert max_err(out[1, :1, 0], x["tgt"][1, :1, 0]) < 1e-12
    assert max_err(out[1, 1:, 0], x["ctx"][1, :-1, 0]) < 1e-12
    trans = x["tgt"].trans.clone()
    trans[1, :, 0] += 50.0
    out2 = model(**{**x, "tgt": Rigid(x["tgt"].rots, trans)})["pred_rigids"]
    assert max_err(out2[1, :, 1:], out[1, :, 1:]) < 1e-10


def test_bf16_autocast_forward_and_step_run():
    model, x = tiny_model(dtype=torch.float32), inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**x)
        cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
        model.append(cache, x["ctx"][:, 0], x["ctx_t"][:, 0], x["frame_time_ps"][:, 0])
        step = model.step(cache, x["tgt"][:, 1], x["tgt_t"][:, 1], x["frame_time_ps"][:, 1])
    for pred, shape in ((out["pred_rigids"], (2, 3, 5)), (step["pred_rigids"], (2, 5))):
        assert pred.shape == shape and pred.rots.dtype == torch.float32 and pred.trans.dtype == torch.float32
        assert torch.isfinite(pred.rots).all() and torch.isfinite(pred.trans).all()
    assert out["single"].shape == (2, 3, 5, TINY["c_s"]) and step["single"].shape == (2, 5, TINY["c_s"])
    assert cache.keys[0].dtype == torch.bfloat16
    assert cache.nbytes() == 2 * TINY["n_blocks"] * 2 * 5 * TINY["n_heads"] * TINY["c_hidden"] * 2


def test_bad_inputs_raise_clear_errors():
    model, x = tiny_model(), inputs()
    with pytest.raises(ValueError, match="c_s_in"):
        model(**{**x, "single": x["single"][..., :-1]})
    with pytest.raises(ValueError, match=r"diffusion time must lie in \[0, 1\]"):
        model(**{**x, "tgt_t": x["tgt_t"] + 1.5})
    with pytest.raises(ValueError, match="delta_t_ps must be > 0"):
        model(**{**x, "delta_t_ps": -x["delta_t_ps"]})
    cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
    with pytest.raises(ValueError, match=r"frame Rigid \[B, N\]"):
        model.step(cache, x["tgt"][:, :2], x["tgt_t"][:, 0], x["frame_time_ps"][:, 0])


def test_demo_scale_model_trains_one_step_and_denoises_with_the_cache():
    """~1M parameters at the schema's demo defaults: loss finite, backward reaches every parameter, Adam moves them."""
    torch.manual_seed(0)
    model = StarMD(c_s_in=384, c_z_in=128)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    x = inputs(b=1, n_frames=2, n=6, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    x.update(single=torch.randn(1, 6, 384, generator=g), pair=torch.randn(1, 6, 6, 128, generator=g))
    clean = x["ctx"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    # Zero-initialised ("final") residual outputs pass gradient upstream only once they have moved, so reaching the
    # innermost layers (EdgeTransition feeds IPA of the next block) takes 4 steps.
    for _ in range(4):
        pred = model(**{**x, "ctx": clean})["pred_rigids"]
        loss = ((pred.trans - clean.trans) ** 2).mean() + ((pred.rots - clean.rots) ** 2).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.8 * losses[0]
    assert all(p.grad is not None for p in model.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) == len(before)
    with torch.no_grad():
        cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
        model.append(cache, clean[:, 0], x["ctx_t"][:, 0], x["frame_time_ps"][:, 0])
        out = model.step(cache, x["tgt"][:, 1], x["tgt_t"][:, 1], x["frame_time_ps"][:, 1])
    assert out["pred_rigids"].shape == (1, 6) and torch.isfinite(out["pred_rigids"].trans).all()


def test_delta_t_changes_the_prediction():
    model, x = tiny_model(), inputs()
    out = model(**x)["pred_rigids"]
    other = model(**{**x, "delta_t_ps": 2.0 * x["delta_t_ps"]})["pred_rigids"]
    assert max_err(other[:, 1:], out[:, 1:]) > 1e-3  # every target with context (and target 0) sees Delta-t


def test_previous_frame_anchor_makes_history_geometric():
    """Moving the history (all context frames) rigidly while the targets' noisy frames stay put: with "self" anchors
    the targets cannot see it (only invariant singles cross frames: the first design's blind spot, issue 13); with
    "previous" anchors the predictions of targets with context move with it."""
    g = rotvec_to_rotmat(torch.tensor([0.3, -0.2, 0.5], dtype=F64))
    shift = torch.tensor([4.0, -1.0, 2.0], dtype=F64)
    for anchor in ("self", "previous"):
        model, x = tiny_model(target_anchor=anchor), inputs()
        out = model(**x)["pred_rigids"]
        moved = Rigid(g @ x["ctx"].rots, x["ctx"].trans @ g.T + shift)
        out2 = model(**{**x, "ctx": moved})["pred_rigids"]
        moved_by = (out2.trans[:, 1:] - out.trans[:, 1:]).norm(dim=-1)[x["res_mask"].bool()[:, None].expand(-1, 2, -1)]
        if anchor == "self":
            assert max_err(out2, out) < 1e-10
        else:
            assert moved_by.mean() > 2.0  # Angstrom; the shift alone is 4.6 A


def test_context_motion_keeps_cache_equivalence_and_equivariance():
    """With context_motion the context tokens see their frame relative to the one before; the cached path (which
    keeps that frame) equals the full forward, and the output stays SE(3)-equivariant."""
    model, x = tiny_model(context_motion=True), inputs(b=1, n_frames=3)
    full = model(**x)["pred_rigids"]
    cache = model.init_cache(x["single"], x["pair"], x["res_mask"], x["delta_t_ps"])
    for l in range(3):
        step = model.step(cache, x["tgt"][:, l], x["tgt_t"][:, l], x["frame_time_ps"][:, l])["pred_rigids"]
        assert max_err(step, full[:, l]) < 1e-8
        model.append(cache, x["ctx"][:, l], x["ctx_t"][:, l], x["frame_time_ps"][:, l])
    g = rotvec_to_rotmat(torch.tensor([0.7, 0.1, -0.4], dtype=F64))
    move = lambda r: Rigid(g @ r.rots, r.trans @ g.T + 3.0)  # noqa: E731
    moved = model(**{**x, "ctx": move(x["ctx"]), "tgt": move(x["tgt"])})["pred_rigids"]
    assert max_err(moved, move(full)) < 1e-8
    # and it is a different model: the context tokens now depend on the motion between context frames
    plain = tiny_model(context_motion=False)
    assert max_err(plain(**x)["pred_rigids"], full) > 1e-3
