"""Training windows from the frames/features HDF5 files (schemas in docs/architecture.md).

Map-style and keyed by a *global sample id*: sample `g` is drawn from a generator seeded by (seed, g) alone, so its
content (protein, replica, stride, window start, crop) and its diffusion noise seed do not depend on which rank,
micro-batch or DataLoader worker loads it. `StepBatchSampler` maps (step, rank, micro-batch) to sample ids, so a run
resumed at step s sees exactly the samples an uninterrupted run sees, and a 2-rank run splits the very same global
batch a 1-rank run uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from starmd.data.frames import FRAMES_FIX, check_frames
from starmd.errors import open_h5
from starmd.features.io import FEATURES_FIX, check_features


@dataclass(frozen=True)
class ProteinEntry:
    """Metadata read once at construction (the files are reopened lazily in each worker)."""

    name: str
    frames_path: Path
    features_path: Path
    n_residues: int
    dt_ps: float
    replicas: tuple[str, ...]
    n_frames: tuple[int, ...]  # stored frames per replica


def _read_entry(frames_path: Path, features_path: Path) -> ProteinEntry:
    """Check the two files against the documented schema and each other; errors name the file and key."""
    with open_h5(frames_path, "frames HDF5", FRAMES_FIX) as f:
        n = check_frames(f, frames_path)
        replicas = sorted(f["replicas"])
        n_frames = [int(f["replicas"][rep]["translations"].shape[0]) for rep in replicas]
        name, sequence, dt_ps = str(f.attrs["name"]), str(f.attrs["sequence"]), float(f.attrs["dt_ps"])
    with open_h5(features_path, "features HDF5", FEATURES_FIX) as h:
        if check_features(h, features_path)[0] != n:
            raise ValueError(f"{features_path}: single {h['single'].shape} / pair {h['pair'].shape} do not match "
                             f"{n} residues of {frames_path}")
        feat_seq = str(h.attrs.get("sequence", sequence))
    if feat_seq != sequence:
        raise ValueError(f"{features_path}: sequence attribute differs from {frames_path} (different proteins?)")
    return ProteinEntry(name, frames_path, features_path, n, dt_ps, tuple(replicas), tuple(n_frames))


class FrameWindowDataset(Dataset):
    """Sample g -> one window of `num_frames` frames of a random protein/replica/stride/start/crop.

    Item (cropped to n = min(N, crop_size) residues):
      rots [L, n, 3, 3], trans [L, n, 3] (Angstrom, centred), single [n, c_s], pair [n, n, c_z],
      frame_time_ps [L] (time since the replica's first stored frame, the model's "since trajectory start"),
      delta_t_ps [] (stride * dt_ps),
      res_mask [n], noise_seed [] int64 (seeds the sample's diffusion noise in `compute_loss`).
    Centring: "per_frame" subtracts each frame's own CA centroid (ATLAS trajectories are already fitted, and the
    VP-SDE prior is a centred Gaussian per frame); "first_frame" subtracts the window's first-frame centroid from all
    frames, keeping the drift of the centre of mass.
    """

    def __init__(self, *, frames: Sequence[str | os.PathLike], features: Sequence[str | os.PathLike],
                 num_frames: int, strides: Sequence[int], crop_size: int, centre: str, seed: int) -> None:
        if len(frames) != len(features) or not frames:
            raise ValueError(f"need one features file per frames file, got {len(frames)} frames and "
                             f"{len(features)} features files")
        self.entries = [_read_entry(Path(a), Path(b)) for a, b in zip(frames, features)]
        self.num_frames, self.strides, self.crop_size = num_frames, tuple(strides), crop_size
        self.centre, self.seed = centre, seed
        for e in self.entries:
            for rep, t in zip(e.replicas, e.n_frames):
                if (num_frames - 1) * min(self.strides) + 1 > t:
                    raise ValueError(f"{e.frames_path}: replica {rep} has {t} frames, too few for a window of "
                                     f"{num_frames} frames at stride {min(self.strides)}")
        self._files: dict[Path, h5py.File] = {}
        self._pid = -1

    def __len__(self) -> int:
        # Sample ids are unbounded (the sampler decides which to draw); report a nominal epoch of one id per frame.
        return sum(sum(e.n_frames) for e in self.entries)

    def _file(self, path: Path) -> h5py.File:
        """Open lazily, once per process: h5py handles must not cross a fork into DataLoader workers."""
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]

    def draw(self, g: int) -> dict[str, int]:
        """The random choices for sample g: protein, replica, stride, window start, crop start, noise seed."""
        rng = np.random.default_rng([self.seed, g])
        p = int(rng.integers(len(self.entries)))
        e = self.entries[p]
        r = int(rng.integers(len(e.replicas)))
        t = e.n_frames[r]
        fitting = [s for s in self.strides if (self.num_frames - 1) * s + 1 <= t]
        stride = int(fitting[rng.integers(len(fitting))])
        start = int(rng.integers(t - (self.num_frames - 1) * stride))
        crop = int(rng.integers(e.n_residues - self.crop_size + 1)) if e.n_residues > self.crop_size else 0
        noise_seed = int(rng.integers(2**62))
        return dict(protein=p, replica=r, stride=stride, start=start, crop=crop, noise_seed=noise_seed)

    def __getitem__(self, g: int) -> dict[str, torch.Tensor]:
        c = self.draw(g)
        e = self.entries[c["protein"]]
        n = min(e.n_residues, self.crop_size)
        res = slice(c["crop"], c["crop"] + n)
        frames = slice(c["start"], c["start"] + (self.num_frames - 1) * c["stride"] + 1, c["stride"])
        rep = self._file(e.frames_path)["replicas"][e.replicas[c["replica"]]]
        rots = torch.from_numpy(np.asarray(rep["rotations"][frames, res], dtype=np.float32))  # [L, n, 3, 3]
        trans = torch.from_numpy(np.asarray(rep["translations"][frames, res], dtype=np.float32))  # [L, n, 3]
        t0 = float(rep["time_ps"][0])
        time_ps = torch.from_numpy(np.asarray(rep["time_ps"][frames], dtype=np.float64) - t0)  # [L]
        if self.centre == "per_frame":
            trans = trans - trans.mean(dim=1, keepdim=True)
        else:
            trans = trans - trans[0].mean(dim=0)
        feats = self._file(e.features_path)
        single = torch.from_numpy(np.asarray(feats["single"][res], dtype=np.float32))  # [n, c_s]
        pair = torch.from_numpy(np.asarray(feats["pair"][res, res], dtype=np.float32))  # [n, n, c_z]
        return dict(rots=rots, trans=trans, single=single, pair=pair,
                    frame_time_ps=time_ps.float(),
                    delta_t_ps=torch.tensor(c["stride"] * e.dt_ps, dtype=torch.float32),
                    res_mask=torch.ones(n), noise_seed=torch.tensor(c["noise_seed"], dtype=torch.int64))


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples, padding residues to the longest crop (identity frames, zero features, res_mask 0)."""
    n = max(it["res_mask"].shape[0] for it in items)

    def pad(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        widths = [0, 0] * x.dim()
        for d in dims:  # F.pad lists widths from the last dimension backwards
            widths[2 * (x.dim() - 1 - d) + 1] = n - x.shape[d]
        return torch.nn.functional.pad(x, widths)

    out: dict[str, torch.Tensor] = {}
    for key, dims in (("trans", (1,)), ("single", (0,)), ("pair", (0, 1)), ("res_mask", (0,))):
        out[key] = torch.stack([pad(it[key], dims) for it in items])
    eye = torch.eye(3)
    out["rots"] = torch.stack([torch.cat([it["rots"], eye.expand(it["rots"].shape[0], n - it["rots"].shape[1], 3, 3)],
                                         dim=1) for it in items])
    for key in ("frame_time_ps", "delta_t_ps", "noise_seed"):
        out[key] = torch.stack([it[key] for it in items])
    return out


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of global sample ids for steps start_step, ..., steps - 1.

    Global step s owns ids [s * G, (s + 1) * G) with G = world_size * grad_accum * batch_size; micro-batch a of rank r
    takes the contiguous slice at offset (a * world_size + r) * batch_size, so every id is used exactly once.
    """

    def __init__(self, *, start_step: int, steps: int, batch_size: int, grad_accum: int, rank: int,
                 world_size: int) -> None:
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.grad_accum, self.rank, self.world_size = batch_size, grad_accum, rank, world_size

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0) * self.grad_accum

    def ids(self, step: int, micro: int) -> list[int]:
        g = self.world_size * self.grad_accum * self.batch_size
        first = step * g + (micro * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            for micro in range(self.grad_accum):
                yield self.ids(step, micro)
