"""The resource model: peak memory and wall time of rollout and training as linear functions of shape features,
whose non-negative coefficients are fitted to measurements (benchmarks/estimate_calibration.py) and stored in a
calibration JSON.

Memory = what is known exactly (weights, optimizer state, inputs, projected static features, the KV cache formula of
starmd.model.cache) + fitted activations. Activation features carry the model widths (N c_s for singles, N^2 c_z for
pair-sized tensors, the parameter count for gradients), so a calibration at one model scale transfers approximately
to another; it is exact only at the calibrated dims (recorded in the JSON).

Time = fitted seconds over work features that carry the widths too: a fixed and a per-block overhead (Python and
kernel launches), blocks x c_s^2 per residue, blocks x c_z^2 per residue pair, blocks x heads x c_hidden per query-key
pair of the S x T attention (over the frames held at inference, over the 2L-frame window in training), the parameter
count for the optimizer. The calibration fits them jointly over models of two widths and many held frames, and
checks the fit on a third width it did not see (benchmarks/estimate_calibration.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from starmd.model.cache import kv_cache_nbytes

FP32 = 4
# Names of the fitted coefficients, in feature order (see the *_features functions).
ROLLOUT_MEMORY_TERMS = ("per_B_N_c_s", "per_B_N2_c_z", "attention_per_B_N_c_s", "attention_per_B_N_L_H_C")
TRAINING_MEMORY_TERMS = ("per_parameter", "per_B_2L_N_block_c_s", "per_B_2L_N2_block_c_z", "per_B_2L_N2_c_z")
ROLLOUT_TIME_TERMS = ("const", "per_block", "per_B_N", "per_B_N2_c_z", "per_B_N_block_c_s2", "per_B_N2_block_c_z2",
                      "per_B_N2_L_block_H_C")
TRAINING_TIME_TERMS = ("const", "per_block", "per_parameter", "per_B_L_N", "per_B_L_N2_c_z", "per_B_L_N_block_c_s2",
                       "per_B_L_N2_block_c_z2", "per_B_L2_N2_block_H_C")


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


def rollout_memory_features(dims: Dims, n_res: int, batch: int, n_held: int) -> list[float]:
    """Activations of one denoising step, in two phases whose larger one is the peak (`rollout_activation_bytes`):
    the trunk's singles [B, N, c_s] and pair-sized [B, N, N, c_z] tensors; the S x T attention's singles and the held
    keys/values joined with the frame's own [B, H, (L + 1) N, C] (at hundreds of held frames the largest tensors)."""
    singles = batch * n_res * dims.c_s
    return [singles, batch * n_res**2 * dims.c_z, singles, batch * n_res * n_held * dims.n_heads * dims.c_hidden]


def rollout_activation_bytes(coefficients: dict[str, float], features: list[float]) -> float:
    """Peak of the two phases of `rollout_memory_features` (their tensors are not alive at the same time: a sum
    over-predicted a small model's peak at 48 held frames by 26%)."""
    terms = [coefficients[n] * f for n, f in zip(ROLLOUT_MEMORY_TERMS, features)]
    return max(terms[0] + terms[1], terms[2] + terms[3])


def fit_rollout_memory(rows: list[list[float]], targets: list[float], rounds: int = 20) -> dict[str, float]:
    """Fit the two phases of `rollout_activation_bytes`: start with every point in the trunk phase, then alternately
    refit each phase on the points it explains and reassign every point to the phase predicting more (the max of
    two non-negative linear models; converges in a few rounds)."""
    a = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    attention = np.zeros(len(y), dtype=bool)
    coef = np.zeros(4)
    for _ in range(rounds):
        trunk = fit(a[~attention, :2].tolist(), y[~attention].tolist(), ROLLOUT_MEMORY_TERMS[:2])
        coef[:2] = [trunk[n] for n in ROLLOUT_MEMORY_TERMS[:2]]
        # first round: the points the trunk phase under-explains seed the attention phase
        members = attention if attention.any() else a[:, :2] @ coef[:2] < y
        if members.any():
            att = fit(a[members, 2:].tolist(), y[members].tolist(), ROLLOUT_MEMORY_TERMS[2:])
            coef[2:] = [att[n] for n in ROLLOUT_MEMORY_TERMS[2:]]
        new = a[:, 2:] @ coef[2:] > a[:, :2] @ coef[:2]
        if (new == attention).all() or new.all():
            break
        attention = new
    return dict(zip(ROLLOUT_MEMORY_TERMS, coef.tolist()))


def training_memory_features(dims: Dims, n_res: int, n_frames: int, batch: int) -> list[float]:
    """Gradients (one per parameter) and the activations of 2L frames held for backward: singles and per-frame pairs
    in every block, and the FrameEncoder's pair features once."""
    tokens = batch * 2 * n_frames * n_res
    k = dims.n_blocks
    return [dims.n_parameters, tokens * k * dims.c_s, tokens * n_res * k * dims.c_z, tokens * n_res * dims.c_z]


def rollout_time_features(dims: Dims, n_res: int, n_held: float, batch: int) -> list[float]:
    """Seconds per network evaluation (with its reverse step): overheads, width-free per-residue geometry (sampler,
    rigids), the frame's pair features (c_z wide, outside the blocks), per-residue and per-pair work of the blocks,
    attention of the frame's N tokens over the N x n_held held ones."""
    k = dims.n_blocks
    return [1.0, k, batch * n_res, batch * n_res**2 * dims.c_z, batch * n_res * k * dims.c_s**2,
            batch * n_res**2 * k * dims.c_z**2, batch * n_res**2 * n_held * k * dims.n_heads * dims.c_hidden]


def training_time_features(dims: Dims, n_res: int, n_frames: int, batch: int) -> list[float]:
    """Seconds per optimizer step: overheads, optimizer work per parameter, then as `rollout_time_features` over the
    B L N tokens, with block-causal attention over 2L N tokens."""
    k = dims.n_blocks
    tokens = batch * n_frames * n_res
    return [1.0, k, dims.n_parameters, tokens, tokens * n_res * dims.c_z, tokens * k * dims.c_s**2,
            tokens * n_res * k * dims.c_z**2, batch * (n_frames * n_res) ** 2 * k * dims.n_heads * dims.c_hidden]


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
    # with training.activation_checkpointing (blocks recomputed in backward: less memory, more time)
    training_memory_checkpointed: dict[str, float]
    training_time_checkpointed: dict[str, dict[str, float]]

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
        try:
            cal = cls(path, fitted["rollout_memory"], fitted["training_memory"], fitted["rollout_time"],
                      fitted["training_time"], fitted["training_memory_checkpointed"],
                      fitted["training_time_checkpointed"])
        except KeyError as exc:
            raise ValueError(f"estimate calibration {path}: no {exc} (made by an older version); rerun `snakemake "
                             f"bench_estimate_calibration`") from None
        expected = [("rollout_memory", cal.rollout_memory, ROLLOUT_MEMORY_TERMS),
                    ("training_memory", cal.training_memory, TRAINING_MEMORY_TERMS),
                    ("training_memory_checkpointed", cal.training_memory_checkpointed, TRAINING_MEMORY_TERMS)]
        expected += [(f"rollout_time.{d}", c, ROLLOUT_TIME_TERMS) for d, c in cal.rollout_time.items()]
        expected += [(f"{key}.{d}", c, TRAINING_TIME_TERMS) for key in ("training_time", "training_time_checkpointed")
                     for d, c in getattr(cal, key).items()]
        for key, coef, names in expected:
            if sorted(coef) != sorted(names):
                raise ValueError(f"estimate calibration {path}: '{key}' has terms {sorted(coef)}, this version of "
                                 f"the resource model expects {sorted(names)}; rerun `snakemake "
                                 f"bench_estimate_calibration`")
        return cal


def rollout_peak_bytes(cal: Calibration, dims: Dims, n_res: int, n_held: int, batch: int) -> dict[str, int]:
    """Peak bytes of a rollout holding n_held frames for B samples, by part: weights, frozen inputs and their
    projection (one copy shared by the samples), the KV cache (exact formula) and the step's activations."""
    parts = {
        "weights": FP32 * dims.n_parameters,
        "static": FP32 * (n_res * (dims.c_s_in + dims.c_s) + n_res**2 * (dims.c_z_in + dims.c_z)),
        "kv_cache": kv_cache_nbytes(dims.n_blocks, dims.n_heads, dims.c_hidden, n_res, n_held, batch),
        "activations": round(rollout_activation_bytes(cal.rollout_memory,
                                                      rollout_memory_features(dims, n_res, batch, n_held))),
    }
    return {**parts, "total": sum(parts.values())}


def training_peak_bytes(cal: Calibration, dims: Dims, n_res: int, n_frames: int, batch: int,
                        checkpointing: bool = False) -> dict[str, int]:
    """Peak bytes of one training process: weights, AdamW's two moments and the EMA copy (4 x parameters), the batch
    (frozen features per window) and the fitted activations + gradients of one step (with or without activation
    checkpointing)."""
    coef = cal.training_memory_checkpointed if checkpointing else cal.training_memory
    parts = {
        "weights_optimizer_ema": 4 * FP32 * dims.n_parameters,
        "batch": FP32 * batch * (n_res * dims.c_s_in + n_res**2 * dims.c_z_in + n_frames * n_res * 12),
        "activations": round(apply(coef, training_memory_features(dims, n_res, n_frames, batch),
                                   TRAINING_MEMORY_TERMS)),
    }
    return {**parts, "total": sum(parts.values())}


def rollout_seconds(cal: Calibration, dims: Dims, device: str, n_res: int, n_frames: int, steps: int, batch: int,
                    window: int) -> float | None:
    """Wall time of F frames x (steps + 1 cache append) evaluations; the attention term grows with the frames held,
    so it is taken at their mean over the rollout. None when the device has no calibration."""
    coef = cal.rollout_time.get(device)
    if coef is None:
        return None
    held = [min(l, window) if window else l for l in range(1, n_frames + 1)]
    per_eval = apply(coef, rollout_time_features(dims, n_res, sum(held) / len(held), batch), ROLLOUT_TIME_TERMS)
    return n_frames * (steps + 1) * per_eval


def training_seconds(cal: Calibration, dims: Dims, device: str, n_res: int, n_frames: int, batch: int,
                     steps: int, checkpointing: bool = False) -> float | None:
    """Wall time of `steps` optimizer steps of one process on windows of this protein (activation checkpointing
    recomputes every block in backward: ~1.45x at the study's width); None when uncalibrated."""
    coef = (cal.training_time_checkpointed if checkpointing else cal.training_time).get(device)
    if coef is None:
        return None
    per_step = apply(coef, training_time_features(dims, n_res, n_frames, batch), TRAINING_TIME_TERMS)
    return steps * per_step
