"""Checkpoints: one torch.save'd dict, written atomically (temp file + rename), so `last.pt` is always loadable.

Contents (format_version 1):
  step             optimizer steps completed (= data position: the sampler restarts at this step)
  model, ema       state dicts (unwrapped from DDP); `ema` is the AveragedModel's, its `module.*` are the weights
                   rollout should use
  optimizer, scheduler, nonfinite (counters)
  rng              list with one entry per rank: python/numpy/torch(/cuda) generator states
  config           {"training": ..., "model": ..., "diffusion": ...} so rollout can rebuild the network and check
                   feature dimensions without the run's config.yaml
  world_size       ranks that wrote it (RNG states are only restored when it matches)
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starmd.errors import InputError, describe, missing_fix
from starmd.io import atomic_path

FORMAT_VERSION = 1
# what to do about a checkpoint nothing can load
CHECKPOINT_FIX = "delete it; snakemake reruns train"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomic torch.save: a kill mid-write leaves the previous file untouched."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check the format; errors name the file.

    weights_only=False: the file holds numpy/python RNG states; checkpoints are our own trusted outputs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint", missing_fix(CHECKPOINT_FIX))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise InputError(path, f"not a loadable starmd checkpoint, truncated? ({describe(exc)})", CHECKPOINT_FIX) \
            from exc
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"not a starmd checkpoint with format_version {FORMAT_VERSION}", CHECKPOINT_FIX)
    for key in ("step", "model", "ema", "optimizer", "scheduler", "rng", "config"):
        if key not in ckpt:
            raise InputError(path, f"checkpoint lacks {key!r}", CHECKPOINT_FIX)
    return ckpt
