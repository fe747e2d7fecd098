"""rollout.compile (issue 16): the StaticKVCache (preallocated frame slots, the same shapes at every step) equals the
growing KVCache, and the torch.compile'd per-frame call equals the eager one, on a tiny random-weight StarMD.

Tolerances: float64 eager, static vs growing cache: 1e-10 (empty slots get exactly zero attention weight; only
summation order differs). float32 compiled vs eager: 1e-4 A / 1e-4 on rotation entries per network call (inductor
fuses and reorders float32 arithmetic), 1e-3 over a whole short rollout (errors pass through the sampler).
"""

from __future__ import annotations

import pytest
import torch

from starmd.diffusion import SE3Diffuser
from starmd.geometry import Rigid
from starmd.model.cache import KVCache, StaticKVCache
from starmd.model.network import StarMD
from starmd.rollout.config import RolloutConfig
from starmd.rollout.context import CachedContext
from starmd.rollout.sampler import run_rollout
from test_rollout import C_S_IN, C_Z_IN, MODEL, N_RES, _randomise

DIFFUSION = {"so3": {"num_sigma": 64, "num_omega": 256}}


@pytest.fixture(autouse=True, scope="module")
def _reset_dynamo():
    """Drop the compiled graphs (and the fake tensors dynamo keeps with them) once this module is done, so later
    tests that walk every live tensor (test_rollout's cache-memory check) see only real ones."""
    yield
    torch._dynamo.reset()


def _model(dtype: torch.dtype) -> StarMD:
    model = StarMD(c_s_in=C_S_IN, c_z_in=C_Z_IN, **MODEL).to(dtype)
    _randomise(model, 0)
    return model.eval()


def _features(dtype: torch.dtype, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    single = torch.randn(N_RES, C_S_IN, generator=g, dtype=dtype)
    pair = torch.randn(N_RES, N_RES, C_Z_IN, generator=g, dtype=dtype)
    return single.expand(n_samples, -1, -1), pair.expand(n_samples, -1, -1, -1)


def _max_diff(a: Rigid, b: Rigid, mask: torch.Tensor) -> float:
    """Largest difference over the residues `mask` [N] keeps (every sample)."""
    keep = mask.bool()
    return max((a.trans - b.trans)[:, keep].abs().max().item(), (a.rots - b.rots)[:, keep].abs().max().item())


@pytest.mark.parametrize("window,padded", [(None, False), (None, True), (3, False), (3, True)])
def test_static_cache_equals_the_growing_cache(window, padded):
    """Every step and append of 11 frames: the slots grow 8 -> 11 (no window) or wrap as a ring of 3 (window 3);
    with a padded residue (masked path) the real residues agree."""
    dtype, s, n_frames = torch.float64, 2, 11
    model = _model(dtype)
    single, pair = _features(dtype, s)
    res_mask = torch.ones(s, N_RES, dtype=dtype)
    if padded:
        res_mask[:, -1] = 0
    dt = torch.full((s,), 20.0, dtype=dtype)
    growing = model.init_cache(single, pair, res_mask, dt, window)
    static = model.init_cache(single, pair, res_mask, dt, window, max_frames=n_frames)
    assert isinstance(growing, KVCache) and isinstance(static, StaticKVCache)
    diffuser = SE3Diffuser(**DIFFUSION)
    g = torch.Generator().manual_seed(0)
    shapes = set()
    with torch.no_grad():
        for f in range(n_frames):
            frame = diffuser.sample_ref((s, N_RES), g, dtype=dtype)
            times = torch.full((s,), 20.0 * f, dtype=dtype)
            t = torch.full((s,), 0.3, dtype=dtype)
            preds = [model.step(c, frame, t, times)["pred_rigids"] for c in (growing, static)]
            assert _max_diff(*preds, res_mask[0]) < 1e-10
            for c in (growing, static):
                model.append(c, frame, torch.full((s,), 0.05, dtype=dtype), times)
            shapes.add(tuple(static.keys[0].shape))
            assert static.n_frames == growing.n_frames
    slots = [shape[2] // N_RES for shape in sorted(shapes)]
    assert slots == ([3] if window else [8, 11])
    assert len(slots) + 1 <= static.shape_count()  # + the empty cache: what the recompile limit is lifted to


def test_static_cache_refuses_more_frames_than_allocated():
    dtype = torch.float64
    model = _model(dtype)
    single, pair = _features(dtype, 1)
    cache = model.init_cache(single, pair, torch.ones(1, N_RES, dtype=dtype), torch.full((1,), 20.0, dtype=dtype),
                             max_frames=2)
    frame = SE3Diffuser(**DIFFUSION).sample_ref((1, N_RES), torch.Generator().manual_seed(0), dtype=dtype)
    with torch.no_grad():
        for f in range(2):
            model.append(cache, frame, torch.full((1,), 0.05, dtype=dtype), torch.full((1,), 20.0 * f, dtype=dtype))
        with pytest.raises(ValueError, match="max_frames = 2"):
            model.append(cache, frame, torch.full((1,), 0.05, dtype=dtype), torch.full((1,), 40.0, dtype=dtype))


def test_compiled_frame_pass_equals_eager():
    """Lockstep: the same frames appended to an eager and a compiled context, the same noisy frames denoised."""
    dtype, s, n_frames = torch.float32, 2, 3
    model = _model(dtype)
    single, pair = _features(dtype, s)
    args = (single, pair, torch.ones(s, N_RES), torch.full((s,), 20.0), None)
    eager = CachedContext(model, *args)
    compiled = CachedContext(model, *args, compiled=True, max_frames=n_frames)
    assert compiled.frame_pass is not None
    diffuser = SE3Diffuser(**DIFFUSION)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for f in range(n_frames):
            times, tau = torch.full((s,), 20.0 * f), torch.full((s,), 0.05)
            frame = diffuser.sample_ref((s, N_RES), g)
            for c in (eager, compiled):
                c.append(frame, tau, times)
            noisy = diffuser.sample_ref((s, N_RES), g)
            preds = [c.denoise(noisy, torch.full((s,), 0.4), times + 20.0)["pred_rigids"] for c in (eager, compiled)]
            assert _max_diff(*preds, torch.ones(N_RES)) < 1e-4
            assert not torch.equal(preds[1].trans[0], preds[1].trans[1])  # samples stay distinct


def test_compiled_rollout_matches_the_eager_rollout():
    """rollout.compile through the sampler (make_context, cache sized n_frames + 1)."""
    model = _model(torch.float32)
    g = torch.Generator().manual_seed(4)
    single, pair = torch.randn(N_RES, C_S_IN, generator=g), torch.randn(N_RES, N_RES, C_Z_IN, generator=g)
    start = SE3Diffuser(**DIFFUSION).sample_ref((N_RES,), torch.Generator().manual_seed(2))
    base = dict(n_frames=3, delta_t_ps=20.0, n_samples=2, steps=3, tau=0.05, seed=5, progress_bar=False,
                device="cpu")
    runs = [run_rollout(model, SE3Diffuser(**DIFFUSION), single, pair, start, RolloutConfig(**base, compile=c))
            for c in (False, True)]
    assert (runs[0].translations - runs[1].translations).abs().max() < 1e-3
    assert (runs[0].rotations - runs[1].rotations).abs().max() < 1e-3
    assert runs[1].peak_cache_bytes == 2 * MODEL["n_blocks"] * 2 * N_RES * 4 * MODEL["n_heads"] * MODEL["c_hidden"] * 4
