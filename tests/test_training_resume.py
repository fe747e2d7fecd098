"""Kill a real `python -m starmd train` process mid-run, rerun the same command, and get the uninterrupted result.

SIGTERM (what SLURM sends before the time limit / on preemption): last.pt is saved at the current step and the
process exits with REQUEUE_EXIT_CODE. SIGKILL (no warning): the rerun resumes from the last periodic checkpoint.
Either way the final weights, EMA and optimizer state equal the uninterrupted run's bit for bit (CPU, one thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from starmd.training.checkpoint import load_checkpoint
from starmd.training.signals import REQUEUE_EXIT_CODE
from training_data import TINY_MODEL, make_two_proteins

STEPS = 14
TRAINING = {"steps": STEPS, "batch_size": 2, "num_frames": 3, "strides": [1, 2], "crop_size": 12, "log_every": 1,
            "val_every": 5, "val_samples": 2, "checkpoint_every": 3, "warmup_steps": 2, "lr": 1e-3, "num_workers": 1}


def _command(files, run_dir: Path) -> list[str]:
    frames, features = files
    return [sys.executable, "-m", "starmd", "train", "--frames", *map(str, frames), "--features", *map(str, features),
            "--val-frames", str(frames[1]), "--val-features", str(features[1]), "--run-dir", str(run_dir),
            "--config-json", json.dumps({"training": TRAINING, "model": TINY_MODEL})]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(files, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(files, run_dir), env=_env(), capture_output=True, text=True, timeout=300)


def _run_and_kill(files, run_dir: Path, sig: int, after_step: int) -> subprocess.CompletedProcess:
    """Start training, send `sig` once metrics show `after_step` steps done, wait for the exit."""
    metrics = run_dir / "checkpoints" / "metrics.jsonl"
    proc = subprocess.Popen(_command(files, run_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_step:
            os.killpg(proc.pid, sig)  # like SLURM: every process of the step, DataLoader workers included
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == STEPS
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys() and state_a  # one entry per parameter, none missing or extra
    for index, pa in state_a.items():
        assert pa.keys() == state_b[index].keys()
        assert all(torch.equal(pa[k], state_b[index][k]) for k in pa), f"optimizer state {index}"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    files = make_two_proteins(root / "proteins")
    done = _run(files, root / "uninterrupted")
    assert done.returncode == 0, done.stderr[-3000:]
    return files, root, load_checkpoint(root / "uninterrupted" / "checkpoints" / "final.pt")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_requeueable_and_resumes_exactly(reference):
    files, root, final = reference
    run = root / "sigterm"
    killed = _run_and_kill(files, run, signal.SIGTERM, after_step=5)
    assert killed.returncode == REQUEUE_EXIT_CODE, killed.stderr[-3000:]
    assert "received SIGTERM" in killed.stderr
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 5 <= stopped["step"] < STEPS
    assert not (run / "checkpoints" / "final.pt").exists() and not (run / "metrics.jsonl").exists()
    resumed = _run(files, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {run / 'checkpoints' / 'last.pt'} at step {stopped['step']}" in resumed.stderr
    _assert_same_state(final, load_checkpoint(run / "checkpoints" / "final.pt"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigkill_resumes_from_last_periodic_checkpoint(reference):
    files, root, final = reference
    run = root / "sigkill"
    killed = _run_and_kill(files, run, signal.SIGKILL, after_step=8)
    assert killed.returncode == -signal.SIGKILL
    survived = load_checkpoint(run / "checkpoints" / "last.pt")  # loadable despite the kill (atomic writes)
    assert survived["step"] in (6, 9, 12)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = run / "checkpoints" / f".last.pt.tmp-{dead.pid}.pt"  # what a kill during torch.save leaves behind
    partial.write_bytes(b"cut short")
    resumed = _run(files, run)
    assert not partial.exists()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {survived['step']}" in resumed.stderr
    _assert_same_state(final, load_checkpoint(run / "checkpoints" / "final.pt"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # rows logged after the checkpoint by the killed run were dropped
