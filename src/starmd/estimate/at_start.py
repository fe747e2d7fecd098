"""The estimate logged by `python -m starmd rollout` and `train` at start, inside the step rather than as rule params
(params would make every unrelated config change rerun the jobs): predicted peak memory and wall time of what the job
is about to do, from the committed calibration (no measurement), and a WARNING when that peak exceeds the memory
actually granted to the job: SLURM's allocation for host memory, the GPU's total memory on CUDA. An estimate never
fails a job: a missing or unreadable calibration is one log line."""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Optional

import torch

from starmd.estimate import model as rm
from starmd.estimate.cli import DEFAULT_CALIBRATION

MIB = 2**20  # SLURM's "MB" (SLURM_MEM_PER_NODE=1000 is 1000 MiB)
Predictor = Callable[[rm.Calibration], tuple[int, Optional[float]]]  # calibration -> (peak bytes, seconds or None)


def slurm_granted_bytes(env: Mapping[str, str]) -> tuple[int, str] | None:
    """(bytes, how) SLURM grants this job on its node: SLURM_MEM_PER_NODE, else SLURM_MEM_PER_CPU x
    SLURM_CPUS_ON_NODE (MiB). None outside SLURM, and for --mem=0 (0 = all of the node's memory)."""
    if env.get("SLURM_MEM_PER_NODE"):
        mib, how = int(env["SLURM_MEM_PER_NODE"]), f"SLURM_MEM_PER_NODE={env['SLURM_MEM_PER_NODE']}"
    elif env.get("SLURM_MEM_PER_CPU") and env.get("SLURM_CPUS_ON_NODE"):
        mib = int(env["SLURM_MEM_PER_CPU"]) * int(env["SLURM_CPUS_ON_NODE"])
        how = f"SLURM_MEM_PER_CPU={env['SLURM_MEM_PER_CPU']} x SLURM_CPUS_ON_NODE={env['SLURM_CPUS_ON_NODE']}"
    else:
        return None
    return (mib * MIB, how) if mib > 0 else None


def granted_bytes(device: torch.device, env: Mapping[str, str]) -> tuple[int, str] | None:
    """The memory the predicted (device-resident) tensors must fit: the GPU's total memory on CUDA, else the host
    memory SLURM grants; None when nothing limits it that the job can read (CPU outside SLURM)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"total memory of {props.name}"
    return slurm_granted_bytes(env)


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.0f} MiB"


def _time(seconds: float | None) -> str:
    return "n/a (device not calibrated)" if seconds is None else f"{seconds / 3600:.3g} h"


def describe(dims: rm.Dims) -> str:
    """The model widths the prediction used, so a log reader can tell which model was sized."""
    return (f"c_s={dims.c_s} c_z={dims.c_z} blocks={dims.n_blocks} heads={dims.n_heads}x{dims.c_hidden} "
            f"{dims.n_parameters:,} parameters")


def log_estimate(log: logging.Logger, what: str, label: str, dims: rm.Dims, predict: Predictor,
                 device: torch.device, env: Mapping[str, str] | None = None) -> None:
    """Log `what`'s predicted peak memory and time (`predict(calibration)` -> (bytes, seconds)) and warn, naming
    `label` and both numbers, when the peak exceeds the granted memory. A missing or unreadable calibration is logged
    in one line and the job goes on."""
    try:
        cal = rm.Calibration.load(DEFAULT_CALIBRATION)
    except (FileNotFoundError, ValueError) as exc:
        log.info("estimate skipped: %s", exc)
        return
    peak, seconds = predict(cal)
    log.info("estimate %s, model %s: peak memory ~%s (fp32 tensors), time ~%s on %s (calibration %s)", what,
             describe(dims), _mib(peak), _time(seconds), device.type, cal.path.name)
    granted = granted_bytes(device, os.environ if env is None else env)
    if granted is not None and peak > granted[0]:
        log.warning("%s: predicted peak memory ~%s exceeds the ~%s granted to this job (%s); it may be killed for "
                    "memory (`python -m starmd estimate` sizes every protein)", label, _mib(peak), _mib(granted[0]),
                    granted[1])


def rollout_predictor(dims: rm.Dims, n_res: int, n_samples: int, n_frames: int, steps: int, context_window: int,
                      device: str) -> Predictor:
    """Peak bytes and seconds of one protein's rollout (the KV cache holds at most window + start frames)."""
    held = min(n_frames, context_window or n_frames) + 1

    def predict(cal: rm.Calibration) -> tuple[int, float | None]:
        return (rm.rollout_peak_bytes(cal, dims, n_res, held, n_samples)["total"],
                rm.rollout_seconds(cal, dims, device, n_res, n_frames, steps, n_samples, context_window))
    return predict


def training_predictor(dims: rm.Dims, n_res: int, n_frames: int, batch: int, steps: int, device: str,
                       checkpointing: bool) -> Predictor:
    """Peak bytes and seconds of one training process on windows of `n_res` residues (already cropped)."""

    def predict(cal: rm.Calibration) -> tuple[int, float | None]:
        return (rm.training_peak_bytes(cal, dims, n_res, n_frames, batch, checkpointing)["total"],
                rm.training_seconds(cal, dims, device, n_res, n_frames, batch, steps, checkpointing))
    return predict
