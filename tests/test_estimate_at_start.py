"""`python -m starmd train` and `rollout`, run as real processes under a SLURM-like environment, log the estimate of
what they are about to do at start and warn, naming the protein and both numbers, when the predicted peak exceeds
the memory SLURM grants; with enough memory they log the estimate and no warning."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from starmd.estimate.at_start import MIB, slurm_granted_bytes
from training_data import TINY_MODEL, make_protein

# c_z 32 and 8 samples of 24 residues: the predicted rollout peak (~2.6 MiB) is above SLURM's smallest grant, 1 MiB
MODEL = {**TINY_MODEL, "c_z": 32}
N_RES = 24
TRAINING = {"steps": 1, "batch_size": 1, "num_frames": 2, "strides": [1], "crop_size": N_RES, "warmup_steps": 1,
            "log_every": 1, "val_every": 1, "checkpoint_every": 1}
ROLLOUT = {"n_frames": 1, "n_samples": 8, "steps": 1, "delta_t_ps": 10.0, "device": "cpu", "progress_bar": False}
TINY_GRANT = {"SLURM_MEM_PER_NODE": "1"}  # 1 MiB
LARGE_GRANT = {"SLURM_MEM_PER_CPU": "4000", "SLURM_CPUS_ON_NODE": "2"}  # 8000 MiB
WARNING = re.compile(r"WARNING (\S+): predicted peak memory ~([\d,]+) MiB exceeds the ~([\d,]+) MiB granted")


def starmd(step: str, args: list[str], grant: dict[str, str]) -> str:
    """Run a step as its own process with `grant` as SLURM's environment; return its log (stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | grant
    proc = subprocess.run([sys.executable, "-m", "starmd", step, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def train(protein: tuple[Path, Path], run_dir: Path, grant: dict[str, str]) -> str:
    frames, features = protein
    return starmd("train", ["--frames", str(frames), "--features", str(features), "--run-dir", str(run_dir),
                            "--config-json", json.dumps({"training": TRAINING, "model": MODEL})], grant)


@pytest.fixture(scope="module")
def protein(tmp_path_factory) -> tuple[Path, Path]:
    return make_protein(tmp_path_factory.mktemp("estimate"), "pz_A", "ACDEFGHIKLMNPQRSTVWYACDE", n_frames=8,
                        n_replicas=1)


@pytest.fixture(scope="module")
def trained(protein, tmp_path_factory) -> tuple[Path, str]:
    """(final.pt, the log) of a one-step training run granted 1 MiB."""
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir / "checkpoints" / "final.pt", train(protein, run_dir, TINY_GRANT)


def rollout(protein: tuple[Path, Path], checkpoint: Path, out: Path, grant: dict[str, str]) -> str:
    frames, features = protein
    return starmd("rollout", ["--checkpoint", str(checkpoint), "--features", str(features), "--frames", str(frames),
                              "--out", str(out), "--config-json", json.dumps(ROLLOUT)], grant)


def assert_warns(log: str, name: str, granted_mib: int) -> None:
    """One warning naming the protein, a predicted peak above the grant, and the grant itself."""
    warnings = WARNING.findall(log)
    assert len(warnings) == 1, log[-3000:]
    warned, peak, granted = warnings[0]
    assert warned == name and int(granted.replace(",", "")) == granted_mib
    assert int(peak.replace(",", "")) > granted_mib


def test_train_warns_when_the_granted_memory_is_too_small(trained):
    log = trained[1]
    assert re.search(rf"estimate training .*longest protein pz_A cropped to N={N_RES}\), model c_s=16 c_z=32 .*"
                     r"peak memory ~[\d,]+ MiB", log), log[-3000:]
    assert "SLURM_MEM_PER_NODE=1)" in log
    assert_warns(log, "pz_A", 1)


def test_train_logs_the_estimate_without_warning_when_memory_suffices(protein, tmp_path):
    log = train(protein, tmp_path / "run", LARGE_GRANT)
    assert "estimate training" in log and "WARNING" not in log, log[-3000:]


def test_rollout_warns_when_the_granted_memory_is_too_small(protein, trained, tmp_path):
    log = rollout(protein, trained[0], tmp_path / "pz_A.h5", TINY_GRANT)
    assert re.search(rf"estimate rollout of pz_A \(N={N_RES}, 8 samples x 1 frames x 1 steps\), model c_s=16 c_z=32 "
                     r".*peak memory ~[\d,]+ MiB .* on cpu", log), log[-3000:]
    assert_warns(log, "pz_A", 1)


def test_rollout_logs_the_estimate_without_warning_when_memory_suffices(protein, trained, tmp_path):
    log = rollout(protein, trained[0], tmp_path / "pz_A.h5", LARGE_GRANT)
    assert "estimate rollout of pz_A" in log and "WARNING" not in log, log[-3000:]


def test_slurm_grant_is_per_node_else_per_cpu_times_cpus_and_zero_means_the_whole_node():
    assert slurm_granted_bytes({}) is None
    assert slurm_granted_bytes({"SLURM_MEM_PER_NODE": "0"}) is None
    assert slurm_granted_bytes({"SLURM_MEM_PER_NODE": "500", **LARGE_GRANT})[0] == 500 * MIB
    assert slurm_granted_bytes(LARGE_GRANT)[0] == 8000 * MIB
