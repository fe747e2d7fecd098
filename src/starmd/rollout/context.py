"""How the sampler asks the network for an x0 prediction given the frames generated so far.

`CachedContext` is the rollout path: the singles keys/values of every finished (re-noised) frame are kept in the
model's KVCache, so each denoising step costs one frame. `RecomputedContext` is the reference it must equal: it
keeps the re-noised frames themselves and runs the full block-causal forward over all of them at every step
(quadratic in the horizon; used by the tests and for debugging the cache).
"""

from __future__ import annotations

from typing import Protocol

import torch

from starmd.geometry import Rigid
from starmd.model.network import StarMD


class Context(Protocol):
    peak_nbytes: int  # largest KV-cache size reached (0 when nothing is cached)

    def denoise(self, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor) -> dict:
        """The network's output for a noisy frame [B, N] at diffusion time t [B], time frame_time_ps [B]:
        pred_rigids Rigid [B, N] (A)[, step_log_std [B, N, 2]] (`SE3Diffuser.x0_estimate` turns it into x0)."""

    def append(self, frame: Rigid, tau: torch.Tensor, frame_time_ps: torch.Tensor) -> None:
        """Add a finished frame [B, N], already re-noised to diffusion time tau [B], to the context."""


class CachedContext:
    """Context held as the singles K/V cache (O(N L d) memory, one frame of compute per step).

    With `compiled` the cache is a StaticKVCache sized for `max_frames` and every network call goes through the
    torch.compile'd `frame_pass` (CUDA graphs on a GPU): the rollout.compile fast path."""

    def __init__(self, model: StarMD, single: torch.Tensor, pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, window: int | None, compiled: bool = False,
                 max_frames: int | None = None) -> None:
        if compiled and max_frames is None:
            raise ValueError("a compiled context needs max_frames (the most frames the rollout will hold)")
        self.model = model
        self.cache = model.init_cache(single, pair, res_mask, delta_t_ps, window,
                                      max_frames if compiled else None)
        self.frame_pass = model.compile_frame_pass(res_mask.device, self.cache.shape_count()) if compiled else None
        self.peak_nbytes = 0

    def denoise(self, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor) -> dict:
        return self.model.step(self.cache, frame, t, frame_time_ps, self.frame_pass)

    def append(self, frame: Rigid, tau: torch.Tensor, frame_time_ps: torch.Tensor) -> None:
        self.model.append(self.cache, frame, tau, frame_time_ps, self.frame_pass)
        self.peak_nbytes = max(self.peak_nbytes, self.cache.nbytes())


class RecomputedContext:
    """Context held as frames; every denoising step reruns the block-causal forward over all of them.

    The query frame l sits in the target slot l of an (l + 1)-frame forward pass: it sees context frames 0..l-1 and
    itself, exactly what `model.step` sees through the cache. The other target slots and context slot l are
    placeholders that the mask hides from target l (they are filled with the query frame only to be valid input).
    """

    def __init__(self, model: StarMD, single: torch.Tensor, pair: torch.Tensor, res_mask: torch.Tensor,
                 delta_t_ps: torch.Tensor, window: int | None) -> None:
        self.model, self.single, self.pair, self.res_mask = model, single, pair, res_mask
        self.delta_t_ps, self.window = delta_t_ps, window
        self.peak_nbytes = 0
        self.frames: list[Rigid] = []  # each [B, N]
        self.taus: list[torch.Tensor] = []  # each [B]
        self.times: list[torch.Tensor] = []  # each [B]

    def denoise(self, frame: Rigid, t: torch.Tensor, frame_time_ps: torch.Tensor) -> dict:
        n_ctx = len(self.frames)
        ctx = Rigid.stack(self.frames + [frame], dim=1)  # [B, l + 1, N]; slot l is a placeholder
        ctx_t = torch.stack(self.taus + [t], dim=1)  # [B, l + 1]
        tgt = Rigid.stack([frame] * (n_ctx + 1), dim=1)  # only slot l is read
        tgt_t = t[:, None].expand(-1, n_ctx + 1)
        times = torch.stack(self.times + [frame_time_ps], dim=1)  # [B, l + 1]
        out = self.model(self.single, self.pair, ctx, ctx_t, tgt, tgt_t, times, self.delta_t_ps, self.res_mask,
                         window=self.window)
        return {k: v[:, n_ctx] for k, v in out.items()}

    def append(self, frame: Rigid, tau: torch.Tensor, frame_time_ps: torch.Tensor) -> None:
        self.frames.append(frame)
        self.taus.append(tau)
        self.times.append(frame_time_ps)
