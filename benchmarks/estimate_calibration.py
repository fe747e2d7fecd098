"""Calibration of `python -m starmd estimate`: measured peak activation bytes and seconds of rollout evaluations (up
to hundreds of held frames) and training steps of random-init models of two widths (paper scale and the known-answer
study's), the resource model's coefficients fitted to them (starmd.estimate.model), its relative error at every
point, and a held-out check: whole rollouts and training steps of a third width, timed and predicted.

Bytes are counted deterministically (starmd.estimate.measure.PeakTensorBytes, a dispatch mode over every allocation),
not from process RSS. Training is measured with and without activation checkpointing (two fits each). Seconds are
medians on this machine (CPU). A GPU rollout-time constant is taken from a GPU reference result when one is given
(--gpu-reference, benchmarks/reference/gpu_h200.json): there the paper-scale evaluation cost did not change with N
(13 to 500), so only a per-block constant (launch-bound) is fitted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import save_figure, write_result
from starmd.estimate import model as rm
from starmd.estimate.config import model_dims
from starmd.estimate.measure import rollout_eval, training_step

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
log = logging.getLogger("bench.estimate_calibration")


def gpu_rollout_time(path: Path, paper_blocks: int) -> dict[str, float]:
    """Per-block seconds per paper-scale evaluation (launch-bound): median over the reference's (N, steps) rows of
    s/frame / steps / blocks."""
    import json

    rows = [r for r in json.loads(path.read_text())["speed"] if r["scale"] == "paper_model"]
    if not rows:
        raise ValueError(f"--gpu-reference {path}: no paper_model rows under 'speed'")
    per_block = statistics.median(r["s_per_frame"] / r["steps"] for r in rows) / paper_blocks
    return {name: (per_block if name == "per_block" else 0.0) for name in rm.ROLLOUT_TIME_TERMS}


def fit_and_score(points: list[dict], features, target: str, names: tuple[str, ...]) -> dict[str, float]:
    coef = rm.fit([features(p) for p in points], [p[target] for p in points], names)
    score(points, coef, features, target, names)
    return coef


def score(points: list[dict], coef: dict[str, float], features, target: str, names: tuple[str, ...]) -> None:
    for p in points:
        p[f"{target}_fitted"] = rm.apply(coef, features(p), names)
        p[f"{target}_rel_error"] = p[f"{target}_fitted"] / p[target] - 1


def validation_rollout(kw: dict, fd: dict, n_res: int, n_frames: int, steps: int, batch: int, seed: int) -> dict:
    """A whole rollout from an empty cache (run_rollout, all history held), timed end to end."""
    from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
    from starmd.diffusion import SE3Diffuser
    from starmd.rollout.config import RolloutConfig
    from starmd.rollout.sampler import run_rollout

    model = build_model(kw, fd, seed)
    single, pair = synthetic_features(n_res, fd, torch.Generator().manual_seed(seed))
    cfg = RolloutConfig(n_frames=n_frames, steps=steps, n_samples=batch, seed=seed, progress_bar=False)
    diffuser, start = SE3Diffuser(), helix_frames(n_res)  # built before the clock, as a rollout does at start-up
    tic = time.perf_counter()
    run_rollout(model, diffuser, single, pair, start, cfg)
    return {"n_res": n_res, "n_frames": n_frames, "steps": steps, "batch": batch,
            "wall_s": time.perf_counter() - tic}


def plot(rollout: list[dict], training: list[dict], validation: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    panels = [(rollout, "activation_bytes", "activation_bytes_fitted", "rollout step activations (B)"),
              (training, "activation_bytes", "activation_bytes_fitted", "training step activations + grads (B)"),
              (rollout, "eval_s", "eval_s_fitted", "rollout eval (s, CPU)"),
              (training, "step_s", "step_s_fitted", "training step (s, CPU; with and without checkpointing)")]
    held = [(validation["rollouts"], "wall_s", "predicted_s", 2), (validation["training"], "step_s", "predicted_s", 3),
            (validation["training"], "activation_bytes", "predicted_bytes", 1)]
    for i, (ax, (rows, key, fit_key, title)) in enumerate(zip(axes, panels)):
        for model, marker in (("paper", "o"), ("small", "s")):
            sel = [r for r in rows if r["model"] == model]
            ax.loglog([r[key] for r in sel], [r[fit_key] for r in sel], marker, label=f"{model} (fitted)", ms=5)
        values = [r[key] for r in rows] + [r[fit_key] for r in rows]
        for v_rows, v_key, p_key, panel in held:
            if panel == i:
                ax.loglog([r[v_key] for r in v_rows], [r[p_key] for r in v_rows], "r^",
                          label="held-out width (predicted)", ms=7)
                values += [r[v_key] for r in v_rows] + [r[p_key] for r in v_rows]
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [1.25 * lo, 1.25 * hi], "k:", lw=0.6)
        ax.plot([lo, hi], [0.75 * lo, 0.75 * hi], "k:", lw=0.6)
        ax.set(xlabel="measured", ylabel="model", title=title)
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    axes[2].set_xlabel("measured (held-out: whole rollouts, s)")
    fig.suptitle("estimate calibration: model vs measured (dotted: +-25%)", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser: argparse.ArgumentParser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--gpu-reference", type=Path, help="a GPU reference result with paper_model 'speed' rows")
    args, settings, started = start_benchmark(parser, argv, SCHEMA)
    cfg, fd, seed = settings["estimate_calibration"], settings["feature_dims"], settings["seed"]
    widths = {"paper": settings["paper_model"], "small": cfg["small_model"]}
    dims = {name: model_dims(kw, fd) for name, kw in widths.items()}
    rollout, training = [], []
    for name, kw in widths.items():
        for n_res, n_held, batch in cfg["rollout_points"]:
            rollout.append({"model": name, **rollout_eval(kw, fd, n_res, n_held, batch, cfg["repeats"], seed,
                                                          cfg["reverse_steps"])})
            log.info("rollout %s", rollout[-1])
        for n_res, n_frames, batch in cfg["training_points"]:
            for checkpointing in (False, True):
                training.append({"model": name, **training_step(kw, fd, n_res, n_frames, batch, cfg["repeats"], seed,
                                                                checkpointing)})
                log.info("training %s", training[-1])

    def rollout_time(p: dict) -> list[float]:
        return rm.rollout_time_features(dims[p["model"]], p["n_res"], p["n_held"], p["batch"])

    def training_time(p: dict) -> list[float]:
        return rm.training_time_features(dims[p["model"]], p["n_res"], p["n_frames"], p["batch"])

    def training_memory(p: dict) -> list[float]:
        return rm.training_memory_features(dims[p["model"]], p["n_res"], p["n_frames"], p["batch"])

    def rollout_memory_features(p: dict) -> list[float]:
        return rm.rollout_memory_features(dims[p["model"]], p["n_res"], p["batch"], p["n_held"])

    rollout_memory = rm.fit_rollout_memory([rollout_memory_features(p) for p in rollout],
                                           [p["activation_bytes"] for p in rollout])
    for p in rollout:
        p["activation_bytes_fitted"] = rm.rollout_activation_bytes(rollout_memory, rollout_memory_features(p))
        p["activation_bytes_rel_error"] = p["activation_bytes_fitted"] / p["activation_bytes"] - 1
    plain, checkpointed = ([p for p in training if p["checkpointing"] is c] for c in (False, True))
    fitted = {
        "model_dims": dims["paper"].__dict__,
        "calibrated_dims": {name: d.__dict__ for name, d in dims.items()},
        "rollout_memory": rollout_memory,
        "training_memory": fit_and_score(plain, training_memory, "activation_bytes", rm.TRAINING_MEMORY_TERMS),
        "training_memory_checkpointed": fit_and_score(checkpointed, training_memory, "activation_bytes",
                                                      rm.TRAINING_MEMORY_TERMS),
        "rollout_time": {"cpu": fit_and_score(rollout, rollout_time, "eval_s", rm.ROLLOUT_TIME_TERMS)},
        "training_time": {"cpu": fit_and_score(plain, training_time, "step_s", rm.TRAINING_TIME_TERMS)},
        "training_time_checkpointed": {"cpu": fit_and_score(checkpointed, training_time, "step_s",
                                                            rm.TRAINING_TIME_TERMS)},
    }
    if args.gpu_reference:
        fitted["rollout_time"]["cuda"] = gpu_rollout_time(args.gpu_reference, dims["paper"].n_blocks)
    validation = held_out(cfg, fd, seed, fitted)
    results = {"rollout_points": rollout, "training_points": training, "fitted": fitted, "validation": validation,
               "gpu_reference": str(args.gpu_reference) if args.gpu_reference else None,
               "note": "CPU fp32, torch threads = benchmarks.threads; memory = tensor bytes (PeakTensorBytes); memory "
                       "and time fitted over both widths; validation = a width never fitted; cuda "
                       "covers rollout time only (per-block constant from the GPU reference)"}
    write_result(args.out_json, benchmark="estimate_calibration", settings=settings, results=results, started=started)
    plot(rollout, training, validation, args.out_png)
    return 0


def held_out(cfg: dict, fd: dict, seed: int, fitted: dict) -> dict:
    """Whole rollouts and training steps of the validation width, measured and predicted by the fitted model."""
    kw = cfg["validation_model"]
    dims = model_dims(kw, fd)
    cal = rm.Calibration(Path("."), fitted["rollout_memory"], fitted["training_memory"], fitted["rollout_time"],
                         fitted["training_time"], fitted["training_memory_checkpointed"],
                         fitted["training_time_checkpointed"])
    rollouts = []
    for n_res, n_frames, steps, batch in cfg["validation_rollouts"]:
        row = validation_rollout(kw, fd, n_res, n_frames, steps, batch, seed)
        row["predicted_s"] = rm.rollout_seconds(cal, dims, "cpu", n_res, n_frames, steps, batch, 0)
        row["rel_error"] = row["predicted_s"] / row["wall_s"] - 1
        rollouts.append(row)
        log.info("validation rollout %s", row)
    training = []
    for n_res, n_frames, batch in cfg["validation_training"]:
        for checkpointing in (False, True):
            row = training_step(kw, fd, n_res, n_frames, batch, cfg["repeats"], seed, checkpointing)
            row["predicted_s"] = rm.training_seconds(cal, dims, "cpu", n_res, n_frames, batch, 1, checkpointing)
            row["rel_error"] = row["predicted_s"] / row["step_s"] - 1
            row["predicted_bytes"] = rm.training_peak_bytes(cal, dims, n_res, n_frames, batch,
                                                            checkpointing)["activations"]
            row["bytes_rel_error"] = row["predicted_bytes"] / row["activation_bytes"] - 1
            training.append(row)
            log.info("validation training %s", row)
    return {"model_dims": dims.__dict__, "rollouts": rollouts, "training": training}


if __name__ == "__main__":
    raise SystemExit(main())
