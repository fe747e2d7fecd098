"""Deterministic peak tensor memory of one network call, on any device: a dispatch mode counts the bytes of every
storage an op allocates until its last tensor dies. Process RSS on a shared machine moves by tens of MB between runs
and includes the allocator's cache; this count is the same on every run, so a memory model can be fitted and tested
on it to a few percent."""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorBytes(TorchDispatchMode):
    """Live and peak bytes of the storages allocated inside the `with` block (tensors that existed before it, such
    as parameters, inputs or a filled KV cache, and views of them are not counted).

    A storage counts from the op that creates it until the last tensor viewing it is garbage (autograd's saved
    tensors keep theirs alive, so activations held for backward count until backward frees them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, tensors alive that view it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or (key in inputs and key not in self.live):
            return  # a view of (or in-place op on) memory that existed before the block
        if key not in self.live:
            self.live[key] = [nbytes, 0]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        self.live[key][1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def rollout_eval(model_kwargs: dict, feature_dims: dict, n_res: int, n_held: int, batch: int, repeats: int,
                 seed: int = 0, steps: int = 4) -> dict:
    """One network evaluation of a rollout of B samples holding `n_held` frames in the KV cache: peak activation
    bytes of `StarMD.step` (the filled cache, static features and weights are not counted) and seconds per
    evaluation, the median over `repeats` generated frames (`denoise_frame` with `steps` reverse steps + the cache
    append, divided by steps + 1: the sampler's own geometry counts, as in a real rollout).

    The cache is filled by one real append and copies of its keys/values (what a step costs depends on the shapes
    held, not on their values), so long histories are calibrated without generating them."""
    from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
    from starmd.diffusion import SE3Diffuser
    from starmd.rollout.config import RolloutConfig
    from starmd.rollout.sampler import denoise_frame, make_context

    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_kwargs, feature_dims, seed)
    single, pair = synthetic_features(n_res, feature_dims, gen)
    frame = helix_frames(n_res).unsqueeze(0).expand(batch, n_res)  # Rigid [B, N]
    cfg, diffuser = RolloutConfig(steps=steps, progress_bar=False), SE3Diffuser()
    with torch.no_grad():
        context = make_context(model, single, pair, batch, 100.0, n_held, use_cache=True)  # appends keep n_held
        cache, tau = context.cache, torch.full((batch,), 0.05)
        model.append(cache, frame, tau, torch.zeros(batch))
        kvs = [(k.clone(), v.clone()) for k, v in zip(cache.keys, cache.values)]
        for l in range(1, n_held):
            cache.push(kvs, frame, torch.full((batch,), 100.0 * l))
        t, when = torch.full((batch,), 0.5), torch.full((batch,), 100.0 * n_held)
        with PeakTensorBytes() as tracker:
            model.step(cache, frame, t, when)

        def one_frame() -> None:
            denoise_frame(context, diffuser, 100.0 * n_held, (batch, n_res), cfg, gen, torch.float32,
                          torch.device("cpu"), contextlib.nullcontext)
            model.append(cache, frame, tau, when)  # the append a real frame ends with (the window keeps n_held)

        seconds = _median_seconds(one_frame, repeats) / (steps + 1)
    return {"n_res": n_res, "n_held": n_held, "batch": batch, "activation_bytes": tracker.peak, "eval_s": seconds}


def training_step(model_kwargs: dict, feature_dims: dict, n_res: int, n_frames: int, batch: int, repeats: int,
                  seed: int = 0, checkpointing: bool = False) -> dict:
    """One block-causal training loss + backward over L context + L target frames: peak bytes of what it allocates
    (activations, saved tensors, gradients; weights, optimizer state and the batch are not counted) and the median
    wall time of `repeats` optimizer steps (loss, backward, AdamW step, EMA update; s)."""
    from starmd.bench.synthetic import build_model
    from starmd.bench.workloads import synthetic_batch
    from starmd.diffusion import SE3Diffuser
    from starmd.training.config import TrainingConfig
    from starmd.training.losses import compute_loss
    from starmd.training.optim import build_ema, build_optimizer

    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_kwargs, feature_dims, seed).train()
    model.activation_checkpointing = checkpointing  # training.activation_checkpointing
    data = synthetic_batch(n_res, n_frames, batch, feature_dims, gen)
    cfg, diffuser = TrainingConfig(num_frames=n_frames, batch_size=batch), SE3Diffuser()

    def backward() -> None:
        compute_loss(model, diffuser, data, cfg)["loss"].backward()

    optimizer, _ = build_optimizer(model, cfg)
    ema = build_ema(model, cfg)

    def step() -> None:  # what the training loop does per optimizer step (one micro-batch)
        backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(model)

    with PeakTensorBytes() as tracker:
        backward()
        model.zero_grad(set_to_none=True)
    seconds = _median_seconds(step, repeats)
    return {"n_res": n_res, "n_frames": n_frames, "batch": batch, "checkpointing": checkpointing,
            "activation_bytes": tracker.peak, "step_s": seconds}


def _median_seconds(fn, repeats: int) -> float:
    import statistics
    import time

    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)
