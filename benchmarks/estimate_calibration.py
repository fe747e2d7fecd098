"""Calibration of `python -m starmd estimate`: measured peak activation bytes and seconds of real rollout evaluations
and training steps of the paper-scale model (random init) at a few sizes, the resource model's coefficients fitted to
them (starmd.estimate.model), and its relative error at every point.

Bytes are counted deterministically (starmd.estimate.measure.PeakTensorBytes, a dispatch mode over every allocation),
not from process RSS. Seconds are medians on this machine (CPU). A GPU rollout-time constant is taken from a GPU
reference result when one is given (--gpu-reference, benchmarks/reference/gpu_h200.json): there the paper-scale
evaluation cost did not change with N (13 to 500), so only a constant per evaluation is fitted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from starmd.bench.cli import make_parser, setup
from starmd.bench.results import save_figure, write_result
from starmd.estimate import model as rm
from starmd.estimate.config import model_dims
from starmd.estimate.measure import rollout_eval, training_step

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
log = logging.getLogger("bench.estimate_calibration")


def gpu_rollout_time(path: Path) -> dict[str, float]:
    """Constant seconds per paper-scale evaluation: median over the reference's (N, steps) rows of s/frame / steps."""
    import json

    rows = [r for r in json.loads(path.read_text())["speed"] if r["scale"] == "paper_model"]
    if not rows:
        raise ValueError(f"--gpu-reference {path}: no paper_model rows under 'speed'")
    const = statistics.median(r["s_per_frame"] / r["steps"] for r in rows)
    return {name: (const if name == "const" else 0.0) for name in rm.ROLLOUT_TIME_TERMS}


def fit_and_score(points: list[dict], features, target: str, names: tuple[str, ...]) -> dict[str, float]:
    coef = rm.fit([features(p) for p in points], [p[target] for p in points], names)
    for p in points:
        p[f"{target}_fitted"] = rm.apply(coef, features(p), names)
        p[f"{target}_rel_error"] = p[f"{target}_fitted"] / p[target] - 1
    return coef


def plot(rollout: list[dict], training: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    panels = [(rollout, "activation_bytes", "rollout step activations (B)"), (training, "activation_bytes",
              "training step activations + grads (B)"), (rollout, "eval_s", "rollout eval (s, CPU)"),
              (training, "step_s", "training step (s, CPU)")]
    for ax, (rows, key, title) in zip(axes, panels):
        measured, fitted = [r[key] for r in rows], [r[f"{key}_fitted"] for r in rows]
        ax.loglog(measured, fitted, "o")
        lo, hi = min(measured + fitted), max(measured + fitted)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [1.25 * lo, 1.25 * hi], "k:", lw=0.6)
        ax.plot([lo, hi], [0.75 * lo, 0.75 * hi], "k:", lw=0.6)
        ax.set(xlabel="measured", ylabel="fitted", title=title)
        ax.title.set_fontsize(8)
    fig.suptitle("estimate calibration: fitted vs measured (dotted: +-25%)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser: argparse.ArgumentParser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--gpu-reference", type=Path, help="a GPU reference result with paper_model 'speed' rows")
    args = parser.parse_args(argv)
    settings = setup(args, SCHEMA)
    started = time.perf_counter()
    cfg, kw, fd, seed = settings["estimate_calibration"], settings["paper_model"], settings["feature_dims"], \
        settings["seed"]
    dims = model_dims(kw, fd)
    rollout = []
    for n_res, n_held, batch in cfg["rollout_points"]:
        rollout.append(rollout_eval(kw, fd, n_res, n_held, batch, cfg["repeats"], seed))
        log.info("rollout %s", rollout[-1])
    training = []
    for n_res, n_frames, batch in cfg["training_points"]:
        training.append(training_step(kw, fd, n_res, n_frames, batch, cfg["repeats"], seed))
        log.info("training %s", training[-1])
    fitted = {
        "model_dims": dims.__dict__,
        "rollout_memory": fit_and_score(rollout, lambda p: rm.rollout_memory_features(dims, p["n_res"], p["batch"]),
                                        "activation_bytes", rm.ROLLOUT_MEMORY_TERMS),
        "training_memory": fit_and_score(training, lambda p: rm.training_memory_features(
            dims, p["n_res"], p["n_frames"], p["batch"]), "activation_bytes", rm.TRAINING_MEMORY_TERMS),
        "rollout_time": {"cpu": fit_and_score(rollout, lambda p: rm.rollout_time_features(
            p["n_res"], p["n_held"], p["batch"]), "eval_s", rm.ROLLOUT_TIME_TERMS)},
        "training_time": {"cpu": fit_and_score(training, lambda p: rm.training_time_features(
            p["n_res"], p["n_frames"], p["batch"]), "step_s", rm.TRAINING_TIME_TERMS)},
    }
    if args.gpu_reference:
        fitted["rollout_time"]["cuda"] = gpu_rollout_time(args.gpu_reference)
    results = {"rollout_points": rollout, "training_points": training, "fitted": fitted,
               "gpu_reference": str(args.gpu_reference) if args.gpu_reference else None,
               "note": "CPU fp32, torch threads = benchmarks.threads; memory = tensor bytes (PeakTensorBytes); cuda "
                       "covers rollout time only (constant per evaluation from the GPU reference)"}
    write_result(args.out_json, benchmark="estimate_calibration", settings=settings, results=results, started=started)
    plot(rollout, training, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
