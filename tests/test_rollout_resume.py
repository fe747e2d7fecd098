"""Kill a real `python -m starmd rollout` process mid-run, rerun the same command, and get the uninterrupted outputs.

SIGTERM (SLURM's warning before the time limit / on preemption): the partial outputs are saved at the end of the
current frame and the process exits with REQUEUE_EXIT_CODE. SIGKILL: the rerun continues from the last periodic save
(`checkpoint_every`). Either way the HDF5 and XTCs equal the uninterrupted run's bit for bit (CPU, one thread). While
a rollout runs, its partial HDF5 is readable; its final files equal the in-memory (non-streaming) rollout's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import mdtraj as md
import numpy as np
import pytest
import torch

from starmd.evaluation.metrics import ca_valid
from starmd.rollout.config import RolloutConfig
from starmd.rollout.inputs import load_features, load_model, load_start
from starmd.rollout.sampler import run_rollout
from starmd.rollout.stream import scratch_dir
from starmd.rollout.writers import RolloutRecord, sample_xtc_path, write_outputs
from starmd.training.cli import build_diffuser
from starmd.training.signals import REQUEUE_EXIT_CODE
from test_rollout import files, villin_frames  # noqa: F401  (module fixtures: checkpoint, features, frames)

N_FRAMES, EVERY = 24, 3
CFG = dict(n_frames=N_FRAMES, delta_t_ps=20.0, n_samples=2, steps=25, tau=0.1, seed=7, checkpoint_every=EVERY,
           progress_bar=False, device="cpu")
DATASETS = ("rotations", "translations", "time_ps", "validity", "start/rotations", "start/translations", "aatype",
            "residue_index")


def _command(files, out: Path, cfg: dict, *extra: str) -> list[str]:  # noqa: F811
    return [sys.executable, "-m", "starmd", "rollout", "--checkpoint", str(files["checkpoint"]), "--features",
            str(files["features"]), "--frames", str(files["frames"]), "--out", str(out), "--config-json",
            json.dumps(cfg), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(files, out: Path, cfg: dict = CFG, *extra: str) -> subprocess.CompletedProcess:  # noqa: F811
    return subprocess.run(_command(files, out, cfg, *extra), env=_env(), capture_output=True, text=True,
                          timeout=300)


def _partial_frames(out: Path) -> int:
    """Frames the running rollout has written so far, read the way a user watching it would (no file lock)."""
    try:
        with h5py.File(scratch_dir(out) / "frames.h5", "r", locking=False) as h5:
            return int(h5.attrs["n_frames_written"])
    except (OSError, KeyError):  # not created yet, or being written this instant
        return 0


def _run_and_kill(files, out: Path, sig: int, after_frames: int) -> tuple[subprocess.CompletedProcess, dict]:  # noqa: F811
    """Start a rollout, send `sig` once its partial HDF5 holds `after_frames` frames; returns the exit and what the
    partial file showed at that moment."""
    proc = subprocess.Popen(_command(files, out, CFG), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: dict = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if _partial_frames(out) >= after_frames:
            with h5py.File(scratch_dir(out) / "frames.h5", "r", locking=False) as h5:
                seen = {"rotations": h5["rotations"][()], "time_ps": h5["time_ps"][()]}
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    out_text, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err), seen


def _assert_same_outputs(a: Path, b: Path) -> None:
    with h5py.File(a) as ha, h5py.File(b) as hb:
        for key in DATASETS:
            assert ha[key].dtype == hb[key].dtype and np.array_equal(ha[key][()], hb[key][()]), key
        attrs_a, attrs_b = ({k: v for k, v in h.attrs.items() if k != "wall_s"} for h in (ha, hb))
        assert attrs_a.keys() == attrs_b.keys()
        assert all(np.array_equal(attrs_a[k], attrs_b[k]) for k in attrs_a), attrs_a
    for k in range(CFG["n_samples"]):
        assert sample_xtc_path(a, k).read_bytes() == sample_xtc_path(b, k).read_bytes()
    assert a.with_suffix(".pdb").read_bytes() == b.with_suffix(".pdb").read_bytes()


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("uninterrupted") / "villin8.h5"
    done = _run(files, out)
    assert done.returncode == 0, done.stderr
    assert not scratch_dir(out).exists()
    return out


def test_sigterm_saves_exits_requeueable_and_resumes_exactly(files, reference, tmp_path):  # noqa: F811
    out = tmp_path / "villin8.h5"
    killed, seen = _run_and_kill(files, out, signal.SIGTERM, after_frames=EVERY)
    assert killed.returncode == REQUEUE_EXIT_CODE, killed.stderr
    assert "received SIGTERM" in killed.stderr and "exiting with 75" in killed.stderr
    assert not out.exists() and not sample_xtc_path(out, 0).exists()  # Snakemake sees no output yet
    # mid-run, the partial HDF5 was readable and held the first frames of the final result
    n_seen = seen["rotations"].shape[1]
    assert EVERY <= n_seen < N_FRAMES
    np.testing.assert_array_equal(seen["time_ps"], 20.0 * np.arange(1, n_seen + 1))
    with h5py.File(reference) as h5:
        np.testing.assert_array_equal(seen["rotations"], h5["rotations"][:, :n_seen])
    with h5py.File(scratch_dir(out) / "frames.h5") as h5:
        saved = int(h5.attrs["n_frames_written"])
    assert n_seen <= saved < N_FRAMES  # SIGTERM saved the frames generated since the last periodic save
    resumed = _run(files, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after frame {saved}" in resumed.stderr
    _assert_same_outputs(reference, out)
    assert not scratch_dir(out).exists()


def test_sigkill_resumes_from_last_periodic_save(files, reference, tmp_path):  # noqa: F811
    out = tmp_path / "villin8.h5"
    killed, _ = _run_and_kill(files, out, signal.SIGKILL, after_frames=2 * EVERY)
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(scratch_dir(out) / "state.pt", weights_only=False)
    assert state["frames_done"] % EVERY == 0 and EVERY <= state["frames_done"] < N_FRAMES  # state.pt lags the h5
    resumed = _run(files, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after frame {state['frames_done']}" in resumed.stderr
    _assert_same_outputs(reference, out)


def test_changed_config_does_not_resume_a_stale_partial(files, tmp_path):  # noqa: F811
    out = tmp_path / "villin8.h5"
    killed, _ = _run_and_kill(files, out, signal.SIGTERM, after_frames=EVERY)
    assert killed.returncode == REQUEUE_EXIT_CODE, killed.stderr
    other = {**CFG, "seed": 8, "n_frames": 4}
    refused = _run(files, out, other)
    assert refused.returncode == 1
    assert "rollout.n_frames" in refused.stderr and "rollout.seed" in refused.stderr
    assert "--restart-if-changed" in refused.stderr and scratch_dir(out).exists()
    restarted = _run(files, out, other, "--restart-if-changed")
    assert restarted.returncode == 0, restarted.stderr
    assert "discarding a partial rollout" in restarted.stderr and "resuming" not in restarted.stderr
    with h5py.File(out) as h5:
        assert h5["rotations"].shape[1] == 4 and h5.attrs["seed"] == 8


def test_streamed_outputs_equal_the_in_memory_rollout(files, reference, tmp_path):  # noqa: F811
    """The CLI's streamed files == `run_rollout` (frames kept in memory) written by `write_outputs` at the end."""
    cfg = RolloutConfig(**CFG)
    features = load_features(files["features"])
    model, config, _ = load_model(files["checkpoint"], features)
    start = load_start(files["frames"])
    result = run_rollout(model, build_diffuser(config), features.single, features.pair, start.frames, cfg)
    trans = result.translations.double().numpy()
    s, f, n = trans.shape[:3]
    out = tmp_path / "villin8.h5"
    write_outputs(out, RolloutRecord(
        rotations=result.rotations.double().numpy(), translations=trans, time_ps=result.time_ps.numpy(),
        validity=ca_valid(trans.reshape(s * f, n, 3)).reshape(s, f), start_rotations=start.frames.rots.numpy(),
        start_translations=start.frames.trans.numpy(), aatype=start.aatype, residue_index=start.residue_index))
    with h5py.File(reference) as streamed, h5py.File(out) as in_memory:
        for key in DATASETS:
            np.testing.assert_array_equal(streamed[key][()], in_memory[key][()], err_msg=key)
        assert streamed["rotations"].chunks[1] == 1  # chunked per frame, grown as frames came
    for k in range(s):
        a = md.load(sample_xtc_path(reference, k), top=reference.with_suffix(".pdb"))
        b = md.load(sample_xtc_path(out, k), top=out.with_suffix(".pdb"))
        np.testing.assert_array_equal(a.xyz, b.xyz)
        np.testing.assert_array_equal(a.time, b.time)


def test_streaming_memory_does_not_grow_with_the_number_of_frames(files, tmp_path, monkeypatch):  # noqa: F811
    """With a bounded context (context_window 2), the torch memory a streamed rollout holds after each frame (live
    storages allocated since it started, counted exactly by starmd.estimate.measure.PeakTensorBytes, read after
    every frame reaches the sink) is the same after frame 6 and frame 40, up to the <= checkpoint_every frames not
    yet flushed; the in-memory rollout, which keeps every frame, grows by exactly the frames it keeps."""
    from starmd.estimate.measure import PeakTensorBytes
    from starmd.rollout.cli import rollout_protein
    from starmd.rollout.sampler import MemorySink
    from starmd.rollout.stream import RolloutStream

    every, n_frames = 3, 40
    frame_bytes = 2 * 8 * 12 * 4  # 2 samples x 8 residues x (9 + 3) float32
    cfg = RolloutConfig(**{**CFG, "n_frames": n_frames, "steps": 2, "context_window": 2, "checkpoint_every": every})

    def live_after_each_frame(sink_class: type, run) -> list[int]:
        live: list[int] = []
        add = sink_class.add
        monkeypatch.setattr(sink_class, "add", lambda self, g, gen: (add(self, g, gen), live.append(tracker.current)))
        with torch.no_grad(), PeakTensorBytes() as tracker:
            run()
        monkeypatch.setattr(sink_class, "add", add)
        assert len(live) == n_frames
        return live

    streamed = live_after_each_frame(RolloutStream, lambda: rollout_protein(
        checkpoint=files["checkpoint"], features_path=files["features"], frames_path=files["frames"],
        out=tmp_path / "villin8.h5", cfg=cfg))
    assert max(streamed[5:]) - min(streamed[5:]) <= every * frame_bytes, streamed
    features = load_features(files["features"])
    model, config, _ = load_model(files["checkpoint"], features)
    kept = live_after_each_frame(MemorySink, lambda: run_rollout(
        model, build_diffuser(config), features.single, features.pair, load_start(files["frames"]).frames, cfg))
    assert kept[-1] - kept[5] >= (n_frames - 6) * frame_bytes, kept  # not vacuous: the tracker sees kept frames
