"""The measured work itself: real rollouts and real training steps of random-init models on synthetic proteins.

Each function returns a JSON-ready dict and brackets only its measured part with `peak_rss` (freed heap handed back
to the kernel first, then the resident high-water mark reset), so model construction, imports and what an earlier
measurement left behind are not counted.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from starmd.bench.machine import reset_peak_rss, rss_bytes
from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
from starmd.diffusion import SE3Diffuser
from starmd.geometry import Rigid
from starmd.rollout.config import RolloutConfig
from starmd.rollout.sampler import iter_frames, make_context
from starmd.training.config import TrainingConfig
from starmd.training.losses import compute_loss
from starmd.training.optim import build_optimizer


@contextlib.contextmanager
def peak_rss(out: dict) -> Iterator[None]:
    """Record the resident memory before the block and its peak during it (bytes) into `out`; the increase is None
    where the high-water mark could not be reset (it would include everything before the block)."""
    reset = reset_peak_rss()
    out["rss_before_bytes"] = rss_bytes()
    yield
    out["peak_rss_bytes"] = rss_bytes("VmHWM")
    out["peak_rss_increase_bytes"] = out["peak_rss_bytes"] - out["rss_before_bytes"] if reset else None


# --- rollout -----------------------------------------------------------------------------------------------------
def timed_rollout(model_kwargs: dict, feature_dims: dict, n_res: int, n_frames: int, steps: int, seed: int,
                  threads: int, delta_t_ps: float = 100.0, use_cache: bool = True, device: str = "cpu",
                  start_frames: Rigid | None = None, bf16: bool = False, compiled: bool = False) -> dict:
    """A real autoregressive rollout (starmd.rollout.sampler) of a random-init model on a synthetic protein.

    Returns per-frame wall times (s; frame l's time covers its `steps` denoising evaluations and the cache append of
    the frame before it), the peak singles-cache bytes and the process's peak resident memory during the rollout.
    start_frames: Rigid [N] (Angstrom) to start from, else an ideal helix. bf16 autocasts the network on CUDA, as
    `rollout.bf16` does; compiled runs the rollout.compile path (its compilation falls in the first frames' times).
    """
    if start_frames is not None and start_frames.shape != (n_res,):
        raise ValueError(f"start_frames must be Rigid [N] = ({n_res},), got {tuple(start_frames.shape)}")
    torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_kwargs, feature_dims, seed, dev)
    single, pair = synthetic_features(n_res, feature_dims, gen, dev)
    start = (helix_frames(n_res) if start_frames is None else start_frames).to(device=dev)
    cfg = RolloutConfig(n_frames=n_frames, delta_t_ps=delta_t_ps, n_samples=1, steps=steps, seed=seed,
                        progress_bar=False, device=device)
    diffuser = SE3Diffuser()
    out: dict = {"n_res": n_res, "n_frames": n_frames, "steps": steps, "kv_cache": use_cache, "compiled": compiled}
    frame_s = []
    with torch.no_grad(), peak_rss(out):
        context = make_context(model, single, pair, 1, delta_t_ps, None, use_cache, compiled, n_frames + 1)
        generator = torch.Generator(device=dev).manual_seed(seed)
        _sync(dev)
        tic = time.perf_counter()
        for _ in iter_frames(context, diffuser, start.unsqueeze(0), cfg, generator, lambda: _autocast(dev, bf16)):
            _sync(dev)
            toc = time.perf_counter()
            frame_s.append(toc - tic)
            tic = toc
    out["frame_s"] = frame_s
    out["peak_cache_bytes"] = getattr(context, "peak_nbytes", 0)
    if dev.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
    return out


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- training ----------------------------------------------------------------------------------------------------
def synthetic_batch(n_res: int, n_frames: int, batch_size: int, feature_dims: dict, generator: torch.Generator,
                    delta_t_ps: float = 10.0) -> dict[str, torch.Tensor]:
    """A training batch in starmd.training.dataset.collate's layout: helix frames jittered per frame (0.5 A)."""
    helix = helix_frames(n_res)
    rots = helix.rots.expand(batch_size, n_frames, n_res, 3, 3).clone()  # [B, L, N, 3, 3]
    trans = helix.trans + 0.5 * torch.randn(batch_size, n_frames, n_res, 3, generator=generator)  # [B, L, N, 3]
    single, pair = synthetic_features(n_res, feature_dims, generator)
    return {"rots": rots, "trans": trans, "single": single.expand(batch_size, -1, -1).clone(),
            "pair": pair.expand(batch_size, -1, -1, -1).clone(), "res_mask": torch.ones(batch_size, n_res),
            "frame_time_ps": delta_t_ps * torch.arange(n_frames, dtype=torch.float32).expand(batch_size, -1).clone(),
            "delta_t_ps": torch.full((batch_size,), delta_t_ps),
            "noise_seed": torch.randint(0, 2**31 - 1, (batch_size,), generator=generator)}


def timed_training(model_kwargs: dict, feature_dims: dict, n_res: int, n_frames: int, batch_size: int,
                   timed_steps: int, seed: int, threads: int, device: str = "cpu", bf16: bool = False) -> dict:
    """One warm-up and `timed_steps` real optimizer steps (starmd.training.losses.compute_loss, AdamW, clipping) of
    one block-causal pass over L context + L target frames. Tokens = target (residue, frame) pairs, as the training
    loop counts them. Peak resident memory covers the timed steps; bf16 autocasts on CUDA, as `training.bf16` does."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_kwargs, feature_dims, seed, dev).train()
    cfg = TrainingConfig(num_frames=n_frames, batch_size=batch_size)
    optimizer, _ = build_optimizer(model, cfg)
    diffuser = SE3Diffuser()
    batch = {k: v.to(dev) for k, v in synthetic_batch(n_res, n_frames, batch_size, feature_dims, gen).items()}

    def step() -> float:
        _sync(dev)
        tic = time.perf_counter()
        with _autocast(dev, bf16):
            loss = compute_loss(model, diffuser, batch, cfg)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(dev)
        return time.perf_counter() - tic

    out: dict = {"n_res": n_res, "n_frames": n_frames, "batch_size": batch_size}
    out["warmup_s"] = step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with peak_rss(out):
        times = [step() for _ in range(timed_steps)]
    out["step_s"] = times
    mean = sum(times) / len(times)
    out["frames_per_s"] = batch_size * n_frames / mean
    out["tokens_per_s"] = batch_size * n_frames * n_res / mean
    if dev.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
    return out
