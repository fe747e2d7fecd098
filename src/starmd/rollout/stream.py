"""Streaming rollout outputs that double as the resume state.

While a rollout runs, its outputs grow in a hidden scratch folder beside them, `.{name}.h5.partial/`:
- `frames.h5`: the final HDF5 layout (docs/rollout.md) with F resizable, one chunk per frame, so a running job can
  be watched (`h5py.File(..., locking=False)`; `n_frames_written` attr) and nothing is held in memory beyond the
  `checkpoint_every` frames not yet flushed;
- `s{k}.xtc`: the backbone trajectory of sample k, appended at the same time;
- `context.h5`: every frame as it entered the KV cache (re-noised to tau, model dtype), what a resume re-appends;
- `state.pt` (atomic): frames done, the generator state, the last frame, wall time and peak cache so far, and the
  fingerprint of the inputs. It is written after the files above are flushed, so they hold at least its frames.
At the end the files are renamed onto the outputs (`{name}.h5`, `{name}_s{k}.xtc`; the pdb is written atomically
at the start) and the folder removed: Snakemake only ever sees complete outputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import mdtraj as md
import numpy as np
import torch

from starmd.evaluation.metrics import ca_valid
from starmd.geometry import Rigid
from starmd.io import atomic_path
from starmd.rollout.backbone import backbone_topology
from starmd.rollout.sampler import Generated, ResumePoint
from starmd.rollout.writers import FORMAT_VERSION, backbone_xyz_nm, sample_xtc_path

log = logging.getLogger("starmd.rollout")

_FRAME_DATASETS = {"rotations": (3, 3), "translations": (3,)}  # per-residue trailing shape


def scratch_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


class StaleState(ValueError):
    """A saved partial rollout was made from other inputs or another config."""


class RolloutStream:
    """Frames of one rollout (S samples, N residues) to disk, every `every` frames, resumable."""

    def __init__(self, out: Path, *, n_samples: int, aatype: np.ndarray, residue_index: np.ndarray,
                 start: Rigid, static_attrs: dict[str, Any], fingerprint: dict[str, Any], every: int) -> None:
        self.out, self.dir = Path(out), scratch_dir(Path(out))
        self.n_samples, self.aatype, self.every = n_samples, np.asarray(aatype), every
        self.residue_index, self.start, self.static_attrs = np.asarray(residue_index), start, static_attrs
        self.fingerprint = fingerprint
        self.top = backbone_topology(self.aatype, self.residue_index)
        self.pending: list[Generated] = []
        self.frames_done = 0  # frames on disk (and in state.pt)
        self.wall_s, self.t0 = 0.0, time.perf_counter()  # wall time of earlier runs of this rollout
        self.xtcs: list[md.formats.XTCTrajectoryFile] = []

    # --- resume -------------------------------------------------------------------------------------------------
    def resume(self, restart_if_changed: bool) -> ResumePoint | None:
        """The saved state, or None (fresh start: the scratch folder is (re)created empty). A state of other inputs
        or another config raises StaleState, or with restart_if_changed is discarded with a warning."""
        state = self._load_state()
        if state is not None:
            changed = sorted(k for k in set(state["fingerprint"]) | set(self.fingerprint)
                             if state["fingerprint"].get(k) != self.fingerprint.get(k))
            if changed and not restart_if_changed:
                raise StaleState(f"{self.dir}: a partial rollout of different {changed} is saved here; rerun with "
                                 f"--restart-if-changed to discard it, or delete {self.dir}")
            if changed:
                log.warning("%s: discarding a partial rollout of different %s", self.dir, changed)
                state = None
        if state is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            self._create()
            self._open_xtcs()
            return None
        self.frames_done, self.wall_s = int(state["frames_done"]), float(state["wall_s"])
        self._open_xtcs()
        self._truncate_to(self.frames_done)
        log.info("%s: resuming after frame %d", self.out.name, self.frames_done)
        return ResumePoint(self.frames_done, self._history(), Rigid(state["last_rots"], state["last_trans"]),
                           state["generator_state"])

    def _load_state(self) -> dict[str, Any] | None:
        path = self.dir / "state.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, weights_only=False)
            with h5py.File(self.dir / "frames.h5", "r") as h5, h5py.File(self.dir / "context.h5", "r") as ctx:
                if h5.attrs["n_frames_written"] < state["frames_done"] or \
                        ctx["rotations"].shape[1] < state["frames_done"]:
                    raise ValueError("outputs hold fewer frames than the saved state")
        except Exception as exc:  # killed mid-write: the files no longer agree, start over rather than guess
            log.warning("%s: partial rollout unusable (%s); starting from frame 0", self.dir, exc)
            return None
        return state

    def _history(self):
        """Frames 0..frames_done - 1 as they entered the context, read one at a time."""
        with h5py.File(self.dir / "context.h5", "r") as ctx:
            for index in range(self.frames_done):
                yield Rigid(torch.from_numpy(ctx["rotations"][:, index]), torch.from_numpy(ctx["translations"][:,
                                                                                                              index]))

    # --- files --------------------------------------------------------------------------------------------------
    def _create(self) -> None:
        s, n = self.n_samples, len(self.aatype)
        with h5py.File(self.dir / "frames.h5", "w") as h5:
            for key, tail in _FRAME_DATASETS.items():
                h5.create_dataset(key, (s, 0, n, *tail), np.float32, maxshape=(s, None, n, *tail),
                                  chunks=(s, 1, n, *tail))
            h5.create_dataset("time_ps", (0,), np.float64, maxshape=(None,), chunks=(1024,))
            h5.create_dataset("validity", (s, 0), bool, maxshape=(s, None), chunks=(s, 1024))
            h5.create_dataset("start/rotations", data=self.start.rots.numpy().astype(np.float32))
            h5.create_dataset("start/translations", data=self.start.trans.numpy().astype(np.float32))
            h5.create_dataset("aatype", data=self.aatype.astype(np.int8))
            h5.create_dataset("residue_index", data=self.residue_index.astype(np.int32))
            h5.attrs["n_frames_written"] = 0
        with h5py.File(self.dir / "context.h5", "w"):
            pass  # datasets created with the model dtype at the first flush

    def _truncate_to(self, frames: int) -> None:
        """Cut frames beyond the saved state (written before a hard kill) and rewrite the XTCs from the HDF5."""
        with h5py.File(self.dir / "frames.h5", "a") as h5:
            for key in (*_FRAME_DATASETS, "validity"):
                h5[key].resize(frames, axis=1)
            h5["time_ps"].resize(frames, axis=0)
            h5.attrs["n_frames_written"] = frames
            for k, xtc in enumerate(self.xtcs):
                for lo in range(0, frames, self.every):
                    hi = min(lo + self.every, frames)
                    xyz = backbone_xyz_nm(h5["rotations"][k, lo:hi], h5["translations"][k, lo:hi], self.aatype)
                    xtc.write(xyz, time=h5["time_ps"][lo:hi], step=np.arange(lo, hi))
        with h5py.File(self.dir / "context.h5", "a") as ctx:
            for key in _FRAME_DATASETS:
                ctx[key].resize(frames, axis=1)

    # --- FrameSink ----------------------------------------------------------------------------------------------
    def add(self, generated: Generated, generator: torch.Generator) -> None:
        self.pending.append(generated)
        if generated.index % self.every == 0:
            self.flush(generator)

    def flush(self, generator: torch.Generator) -> None:
        """Flush pending frames to the HDF5, the XTCs and the context file, then write state.pt atomically."""
        if not self.pending:
            return
        gens = self.pending
        rots = torch.stack([g.frame.rots for g in gens], dim=1).cpu()  # [S, k, N, 3, 3]
        trans = torch.stack([g.frame.trans for g in gens], dim=1).cpu()  # [S, k, N, 3]
        lo, hi = self.frames_done, self.frames_done + len(gens)
        times = np.array([g.index for g in gens], np.float64) * self.static_attrs["delta_t_ps"]
        s, k, n = trans.shape[:3]
        validity = ca_valid(trans.double().numpy().reshape(s * k, n, 3)).reshape(s, k)
        with h5py.File(self.dir / "frames.h5", "a") as h5:
            for key, value in (("rotations", rots), ("translations", trans)):
                h5[key].resize(hi, axis=1)
                h5[key][:, lo:hi] = value.double().numpy().astype(np.float32)
            h5["validity"].resize(hi, axis=1)
            h5["validity"][:, lo:hi] = validity
            h5["time_ps"].resize(hi, axis=0)
            h5["time_ps"][lo:hi] = times
            h5.attrs["n_frames_written"] = hi
        xyz = backbone_xyz_nm(rots.double().numpy(), trans.double().numpy(), self.aatype)  # [S, k, 4N, 3]
        for sample, xtc in enumerate(self.xtcs):
            # explicit steps: mdtraj numbers each write call from 0, so chunking would show in the file's bytes
            xtc.write(xyz[sample], time=times, step=np.arange(lo, hi))
        with h5py.File(self.dir / "context.h5", "a") as ctx:
            for key, value in (("rotations", [g.entered.rots for g in gens]),
                               ("translations", [g.entered.trans for g in gens])):
                block = torch.stack(value, dim=1).cpu().numpy()  # [S, k, N, ...] model dtype
                if key not in ctx:
                    ctx.create_dataset(key, (s, 0, *block.shape[2:]), block.dtype, maxshape=(s, None,
                                                                                             *block.shape[2:]),
                                       chunks=(s, 1, *block.shape[2:]))
                ctx[key].resize(hi, axis=1)
                ctx[key][:, lo:hi] = block
        last = gens[-1].frame
        with atomic_path(self.dir / "state.pt") as tmp:
            torch.save({"frames_done": hi, "generator_state": generator.get_state(), "last_rots": last.rots.cpu(),
                        "last_trans": last.trans.cpu(), "wall_s": self.wall_s + time.perf_counter() - self.t0,
                        "fingerprint": self.fingerprint}, tmp)
        self.frames_done = hi
        self.pending = []

    def _open_xtcs(self) -> None:
        """XTCs stay open for the whole run (mdtraj writes them only from the start, mode "w"); a resume rewrites
        them from the HDF5."""
        self.close()
        self.xtcs = [md.formats.XTCTrajectoryFile(str(self.dir / f"s{k}.xtc"), "w") for k in range(self.n_samples)]

    def close(self) -> None:
        for xtc in self.xtcs:
            xtc.close()
        self.xtcs = []

    # --- the end ------------------------------------------------------------------------------------------------
    def finish(self, attrs: dict[str, Any]) -> list[Path]:
        """Write the final attrs and rename the files onto the outputs; returns [h5, xtc_0, ...]."""
        with h5py.File(self.dir / "frames.h5", "a") as h5:
            del h5.attrs["n_frames_written"]
            h5.attrs["format_version"] = FORMAT_VERSION
            for key, value in {**self.static_attrs, **attrs}.items():
                h5.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        self.close()
        written = []
        for k in range(self.n_samples):
            os.replace(self.dir / f"s{k}.xtc", sample_xtc_path(self.out, k))
            written.append(sample_xtc_path(self.out, k))
        os.replace(self.dir / "frames.h5", self.out)  # last: the h5 is the file evaluation reads
        shutil.rmtree(self.dir)
        return [self.out, *written]
