"""The resource model: peak memory and wall time of rollout and training as linear functions of shape features,
whose non-negative coefficients are fitted to measurements (benchmarks/estimate_calibration.py) and stored in a
calibration JSON.

Memory = what is known exactly (weights, optimizer state, inputs, projected static features, the KV cache formula of
starmd.model.cache) + fitted activations. Activation features carry the model widths (N c_s for singles, N^2 c_z for
pair-sized tensors, the parameter count for gradients), so a calibration at one model scale transfers approximately
to another; it is exact only at the calibrated dims (recorded in the JSON).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from starmd.model.cache import kv_cache_nbytes

FP32 = 4
# Names of the fitted coefficients, in feature order (see the *_features functions).
ROLLOUT_MEMORY_TERMS = ("per_B_N_c_s", "per_B_N2_c_z")
TRAINING_MEMORY_TERMS = ("per_parameter", "per_B_2L_N_c_s", "per_B_2L_N2_c_z")
ROLLOUT_TIME_TERMS = ("const", "per_B_N", "per_B_N2", "per_B_N2_L")
TRAINING_TIME_TERMS = ("const", "per_B_L_N", "per_B_L_N2", "per_B_L2_N2")


@dataclass(frozen=True)
class Dims:
    """The model widths the memory model needs (config `model` keys plus the frozen feature widths)."""

    c_s: int
    c_z: int
    n_blocks: int
    n_heads: int
    c_hidden: int
    c_s_in: int
    c_z_in: int
    n_parameters: int


def rollout_memory_features(dims: Dims, n_res: int, batch: int) -> list[float]:
    """Activations of one denoising step: singles [B, N, c_s] and pair-sized [B, N, N, c_z] tensors (the step's
    attention over the cache runs in SDPA's fused kernel, which measured no growth with the frames held)."""
    return [batch * n_res * dims.c_s, batch * n_res**2 * dims.c_z]


def training_memory_features(dims: Dims, n_res: int, n_frames: int, batch: int) -> list[float]:
    """Gradients (one per parameter) and the activations of 2L frames held for backward (pairs are per frame)."""
    tokens = batch * 2 * n_frames * n_res
    return [dims.n_parameters, tokens * dims.c_s, tokens * n_res * dims.c_z]


def rollout_time_features(n_res: int, n_held: float, batch: int) -> list[float]:
    """Seconds per network evaluation: launch overhead, per-residue and pair work, attention over the held frames."""
    return [1.0, batch * n_res, batch * n_res**2, batch * n_res**2 * n_held]


def training_time_features(n_res: int, n_frames: int, batch: int) -> list[float]:
    """Seconds per optimizer step: overhead, per-token and per-pair work, block-causal attention over 2L N tokens."""
    return [1.0, batch * n_frames * n_res, batch * n_frames * n_res**2, batch * (n_frames * n_res) ** 2]


def fit(rows: list[list[float]], targets: list[float], names: tuple[str, ...]) -> dict[str, float]:
    """Non-negative least squares in relative error (each row scaled by its target), so small and large sizes
    weigh alike and no coefficient turns negative (a negative byte or second count would extrapolate to nonsense)."""
    a = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale / y[:, None], np.ones_like(y))
    return dict(zip(names, (coef / scale).tolist()))


def apply(coefficients: dict[str, float], features: list[float], names: tuple[str, ...]) -> float:
    return float(sum(coefficients[n] * f for n, f in zip(names, features)))


@dataclass(frozen=True)
class Calibration:
    """Fitted coefficients (see the *_TERMS names) per quantity; time per device (cpu always, cuda when measured)."""

    path: Path
    rollout_memory: dict[str, float]
    training_memory: dict[str, float]
    rollout_time: dict[str, dict[str, float]]  # device -> coefficients
    training_time: dict[str, dict[str, float]]
    dims: dict  # the model the constants were measured on

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            fitted = json.loads(path.read_text())["fitted"]
        except FileNotFoundError:
            raise FileNotFoundError(f"estimate calibration {path} not found; run `snakemake "
                                    f"bench_estimate_calibration` or pass --calibration") from None
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"estimate calibration {path}: not a bench_estimate_calibration result ({exc})") from None
        return cls(path, fitted["rollout_memory"], fitted["training_memory"], fitted["rollout_time"],
                   fitted["training_time"], fitted["model_dims"])


def rollout_peak_bytes(cal: Calibration, dims: Dims, n_res: int, n_held: int, batch: int) -> dict[str, int]:
    """Peak bytes of a rollout holding n_held frames for B samples, by part: weights, frozen inputs and their
    projection (one copy shared by the samples), the KV cache (exact formula) and the step's activations."""
    parts = {
        "weights": FP32 * dims.n_parameters,
        "static": FP32 * (n_res * (dims.c_s_in + dims.c_s) + n_res**2 * (dims.c_z_in + dims.c_z)),
        "kv_cache": kv_cache_nbytes(dims.n_blocks, dims.n_heads, dims.c_hidden, n_res, n_held, batch),
        "activations": round(apply(cal.rollout_memory, rollout_memory_features(dims, n_res, batch),
                                   ROLLOUT_MEMORY_TERMS)),
    }
    return {**parts, "total": sum(parts.values())}


def training_peak_bytes(cal: Calibration, dims: Dims, n_res: int, n_frames: int, batch: int) -> dict[str, int]:
    """Peak bytes of one training process: weights, AdamW's two moments and the EMA copy (4 x parameters), the batch
    (frozen features per window) and the fitted activations + gradients of one step."""
    parts = {
        "weights_optimizer_ema": 4 * FP32 * dims.n_parameters,
        "batch": FP32 * batch * (n_res * dims.c_s_in + n_res**2 * dims.c_z_in + n_frames * n_res * 12),
        "activations": round(apply(cal.training_memory, training_memory_features(dims, n_res, n_frames, batch),
                                   TRAINING_MEMORY_TERMS)),
    }
    return {**parts, "total": sum(parts.values())}


def time_width_factors(dims: Dims, calibrated: dict) -> list[float]:
    """Per time term (overhead, per-residue, per-pair, attention; the order of the *_TIME_TERMS), the work of a
    model of these widths relative to the calibrated one: parameters (the size-independent part: optimizer and EMA
    updates, weight reads), blocks x c_s^2, blocks x c_z^2, blocks x heads x c_hidden. The time calibration is
    measured on one model; without this the known-answer config's 0.35M-parameter model was predicted 60x too slow
    (15.6 h for a ~15 min training). Exactly 1 at the calibrated widths; elsewhere an approximation."""
    def work(d: dict) -> list[float]:
        blocks = d["n_blocks"]
        return [d["n_parameters"], blocks * d["c_s"] ** 2, blocks * d["c_z"] ** 2,
                blocks * d["n_heads"] * d["c_hidden"]]

    return [a / b for a, b in zip(work(dataclasses.asdict(dims)), work(calibrated))]


def _scaled(coef: dict[str, float], names: tuple[str, ...], factors: list[float]) -> dict[str, float]:
    return {name: coef[name] * f for name, f in zip(names, factors)}


def rollout_seconds(cal: Calibration, dims: Dims, device: str, n_res: int, n_frames: int, steps: int, batch: int,
                    window: int) -> float | None:
    """Wall time of F frames x (steps + 1 cache append) evaluations; the attention term grows with the frames held,
    so it is taken at their mean over the rollout. None when the device has no calibration."""
    coef = cal.rollout_time.get(device)
    if coef is None:
        return None
    coef = _scaled(coef, ROLLOUT_TIME_TERMS, time_width_factors(dims, cal.dims))
    held = [min(l, window) if window else l for l in range(1, n_frames + 1)]
    per_eval = apply(coef, rollout_time_features(n_res, sum(held) / len(held), batch), ROLLOUT_TIME_TERMS)
    return n_frames * (steps + 1) * per_eval


def training_seconds(cal: Calibration, dims: Dims, device: str, n_res: int, n_frames: int, batch: int,
                     steps: int) -> float | None:
    """Wall time of `steps` optimizer steps of one process on windows of this protein; None when uncalibrated."""
    coef = cal.training_time.get(device)
    if coef is None:
        return None
    coef = _scaled(coef, TRAINING_TIME_TERMS, time_width_factors(dims, cal.dims))
    per_step = apply(coef, training_time_features(n_res, n_frames, batch), TRAINING_TIME_TERMS)
    return steps * per_step
