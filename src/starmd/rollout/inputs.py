"""Rollout inputs: the trained network from a checkpoint, a protein's frozen features and its starting frame.

Every mismatch between the three (feature widths vs the checkpoint, residue count or sequence of the features vs the
structure) is an error naming both files, raised before any sampling starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starmd.data.frames import FRAMES_FIX, check_frames
from starmd.errors import InputError, open_h5
from starmd.features.io import FEATURES_FIX, read_features
from starmd.geometry import Rigid
from starmd.model.network import StarMD
from starmd.training.checkpoint import load_checkpoint
from starmd.training.cli import build_model

_EMA_PREFIX = "module."  # torch.optim.swa_utils.AveragedModel keeps the averaged model under `module`


@dataclass(frozen=True)
class Features:
    single: torch.Tensor  # [N, c_s]
    pair: torch.Tensor  # [N, N, c_z]
    sequence: str
    path: Path


@dataclass(frozen=True)
class StartStructure:
    frames: Rigid  # [N] (Angstrom)
    sequence: str
    aatype: np.ndarray  # [N]
    residue_index: np.ndarray  # [N]
    dt_ps: float  # spacing of the stored MD frames (the unit of the training strides)
    source: str  # "frames.h5:start" or "frames.h5:replicas/R1[k]"


def load_features(path: str | Path) -> Features:
    path = Path(path)
    raw = read_features(path)
    if "sequence" not in raw["attrs"]:
        raise InputError(path, "missing root attribute 'sequence'", FEATURES_FIX)
    single = torch.from_numpy(np.asarray(raw["single"], dtype=np.float32))
    pair = torch.from_numpy(np.asarray(raw["pair"], dtype=np.float32))
    sequence = str(raw["attrs"]["sequence"])
    n = single.shape[0]
    if single.ndim != 2 or pair.ndim != 3 or pair.shape[:2] != (n, n) or len(sequence) != n:
        raise ValueError(f"{path}: expected single [N, c_s], pair [N, N, c_z] and a length-N sequence; got single "
                         f"{tuple(single.shape)}, pair {tuple(pair.shape)}, sequence of length {len(sequence)}")
    return Features(single, pair, sequence, path)


def load_start(path: str | Path, replica: str | None = None, frame: int | None = None) -> StartStructure:
    """The `start` group of a frames HDF5, or MD frame `frame` of `replicas/{replica}` when a replica is given."""
    path = Path(path)
    with open_h5(path, "frames HDF5", FRAMES_FIX) as h5:
        check_frames(h5, path)
        if replica is None:
            if frame is not None:
                raise ValueError("a start frame index needs a replica (--start-replica R1 --start-frame k)")
            group, index, source = h5["start"], (), f"{path}:start"
        else:
            if f"replicas/{replica}" not in h5:
                raise ValueError(f"{path}: no replica {replica!r}; available: {sorted(h5['replicas'])}")
            group = h5["replicas"][replica]
            n_frames = group["translations"].shape[0]
            k = 0 if frame is None else frame
            if not -n_frames <= k < n_frames:
                raise ValueError(f"{path}: replica {replica} has {n_frames} frames; start frame {k} is out of range")
            index, source = (k,), f"{path}:replicas/{replica}[{k}]"
        rots = torch.from_numpy(np.asarray(group["rotations"][index], dtype=np.float64))
        trans = torch.from_numpy(np.asarray(group["translations"][index], dtype=np.float64))
        return StartStructure(Rigid(rots, trans), str(h5.attrs["sequence"]), h5["aatype"][()],
                              h5["residue_index"][()], float(h5.attrs["dt_ps"]), source)


def check_match(features: Features, start: StartStructure) -> None:
    """Features and structure must describe the same chain, residue for residue."""
    n_feat, n_start = features.single.shape[0], start.frames.shape[0]
    if n_feat != n_start:
        raise ValueError(f"{features.path} has N = {n_feat} residues but the start structure {start.source} has "
                         f"N = {n_start}")
    if features.sequence != start.sequence:
        diff = [i for i, (a, b) in enumerate(zip(features.sequence, start.sequence)) if a != b]
        raise ValueError(f"sequence of {features.path} differs from the start structure {start.source} at residue "
                         f"position(s) {diff[:10]}: {features.sequence!r} vs {start.sequence!r}")


def load_model(path: str | Path, features: Features, use_ema: bool = True) -> tuple[StarMD, dict[str, Any], str]:
    """Rebuild the network from a training checkpoint and load its EMA (or raw) weights.

    Returns (model in eval mode on CPU, the checkpoint's config {"training", "model", "diffusion", "features"}, the
    key of the weights used). The frozen-feature widths the network was trained on (`config["features"]`, written by
    `python -m starmd train`) must equal those of `features`: a file from another featurizer is an error naming both.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    config = ckpt["config"]
    missing = [k for k in ("model", "diffusion", "features") if k not in config]
    if missing:
        raise ValueError(f"{path}: checkpoint config lacks section(s) {missing} needed to rebuild the network")
    for dim, got in (("c_s", features.single.shape[-1]), ("c_z", features.pair.shape[-1])):
        trained = config["features"].get(dim)
        if trained != got:
            raise ValueError(f"{path} was trained on features with {dim} = {trained} channels, but {features.path} "
                             f"has {dim} = {got} (features from another featurizer?)")
    if use_ema:
        state = {k[len(_EMA_PREFIX):]: v for k, v in ckpt["ema"].items() if k.startswith(_EMA_PREFIX)}
        which = "ema"
    else:
        state, which = ckpt["model"], "model"
    model = build_model(config, config["features"]["c_s"], config["features"]["c_z"])
    model.load_state_dict(state)
    return model.eval(), config, which
