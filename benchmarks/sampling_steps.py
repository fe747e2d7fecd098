"""Reverse-diffusion steps vs quality: rollouts of a trained checkpoint with 200, 100, 50, 20, 10 steps per frame
(same seed, start and horizon), scored against an MD replica of the same protein with starmd.evaluation.metrics:
CA validity, CA+AA validity (of the reconstructed backbone), Jensen-Shannon distance of CA pair distances and of the
radius of gyration, and wall time.

The recommended step count is the smallest whose CA and CA+AA validity are each within `validity_tolerance` of the
first (reference) count's and whose mean JSD is within `jsd_tolerance` of it; none if the reference's own CA validity
is below `min_reference_validity` (an undertrained model is "as good" at any step count). Each validity comes with
its binomial standard error over the scored frames, a lower bound (frames of one trajectory are correlated): a
tolerance below it cannot separate two step counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import save_figure, write_result
from starmd.data.residues import sequence_to_aatype
from starmd.diffusion import SE3Diffuser
from starmd.evaluation import metrics as M
from starmd.geometry import Rigid
from starmd.geometry.backbone import backbone_atoms
from starmd.rollout.config import RolloutConfig
from starmd.rollout.inputs import check_match, load_features, load_model, load_start
from starmd.rollout.sampler import run_rollout

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
log = logging.getLogger("bench.sampling_steps")


def reference_ca(frames_path: Path, replica: str) -> np.ndarray:
    """CA positions [T, N, 3] (Angstrom) of one MD replica in the frames file (translations = CA)."""
    with h5py.File(frames_path, "r") as h5:
        key = f"replicas/{replica}/translations"
        if key not in h5:
            raise ValueError(f"{frames_path}: no {key}; replicas: {sorted(h5.get('replicas', {}))}")
        return np.asarray(h5[key][()], dtype=np.float64)


def quality(backbone: np.ndarray, reference: np.ndarray) -> dict:
    """Validity of generated backbones [F, N, 4, 3] (N, CA, C, O) and the JSDs of their CA to reference CA
    [T, N, 3] (Str2Str definitions, 50 bins)."""
    generated = backbone[:, :, 1]
    pairs = M.distance_pairs(reference.shape[1])
    out = {"n_frames_scored": len(backbone)}
    for key, valid in (("ca_validity", M.ca_valid(generated)), ("ca_aa_validity", M.ca_aa_valid(backbone))):
        p = float(valid.mean())
        out[key], out[f"{key}_se"] = p, float(np.sqrt(p * (1 - p) / len(valid)))
    out["jsd_radius_of_gyration"] = float(M.jsd(M.radius_of_gyration(reference), M.radius_of_gyration(generated)))
    out["jsd_pairwise_distance"] = (float(np.mean(M.jsd(M.pair_distances(reference, pairs),
                                                        M.pair_distances(generated, pairs)))) if len(pairs) else None)
    parts = [v for k, v in out.items() if k.startswith("jsd_") and v is not None]
    out["jsd_mean"] = float(np.mean(parts))
    return out


def recommend(rows: list[dict], validity_tol: float, jsd_tol: float, min_reference_validity: float = 0.0
              ) -> int | None:
    """Smallest step count whose CA and CA+AA validity and mean JSD are within tolerance of the first row's (the
    reference).

    None when the reference itself has CA validity below `min_reference_validity`: "as good as 200 steps" means
    nothing for a model whose 200-step frames are invalid (an undertrained checkpoint)."""
    ref = rows[0]
    if ref["ca_validity"] < min_reference_validity:
        return None
    ok = [r["steps"] for r in rows if r["ca_validity"] >= ref["ca_validity"] - validity_tol
          and r["ca_aa_validity"] >= ref["ca_aa_validity"] - validity_tol and r["jsd_mean"] <= ref["jsd_mean"] + jsd_tol]
    return min(ok)


def plot(rows: list[dict], recommended: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["steps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key, marker, label in (("ca_validity", "o-", "CA validity"), ("ca_aa_validity", "D-", "CA+AA validity")):
        ax.errorbar(steps, [r[key] for r in rows], yerr=[r[f"{key}_se"] for r in rows], fmt=marker, capsize=2,
                    label=f"{label} (+- binomial s.e.)")
    ax.plot(steps, [r["jsd_mean"] for r in rows], "s-", label="JSD (mean of pair distances, Rg)")
    ax.set(xscale="log", xlabel="reverse-diffusion steps per frame", ylabel="validity / JSD", ylim=(0, 1.05))
    if recommended is not None:
        ax.axvline(recommended, color="grey", ls=":", label=f"recommended: {recommended}")
    else:
        ax.set_title(f"no recommendation: {steps[0]}-step CA validity below the floor", fontsize=8)
    twin = ax.twinx()
    twin.plot(steps, [r["wall_s"] for r in rows], "^--", color="tab:red", label="wall time")
    twin.set(ylabel="rollout wall time (s)", yscale="log")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="center right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="runs/{run}/checkpoints/final.pt")
    parser.add_argument("--features", required=True, type=Path, help="data/features/{featurizer}/{name}.h5")
    parser.add_argument("--frames", required=True, type=Path, help="data/frames/{name}.h5 (start + MD reference)")
    args, settings, started = start_benchmark(parser, argv, SCHEMA)
    cfg = settings["sampling_steps"]
    for p in (args.checkpoint, args.features, args.frames):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    features = load_features(args.features)
    start = load_start(args.frames)
    check_match(features, start)
    model, config, weights = load_model(args.checkpoint, features)
    diffuser = SE3Diffuser(**config["diffusion"])
    reference = reference_ca(args.frames, cfg["reference_replica"])
    aatype = torch.from_numpy(sequence_to_aatype(start.sequence).astype(np.int64))
    rows = []
    for steps in cfg["steps"]:
        rollout_cfg = RolloutConfig(n_frames=cfg["n_frames"], delta_t_ps=cfg["delta_t_ps"],
                                    n_samples=cfg["n_samples"], steps=steps, seed=settings["seed"],
                                    progress_bar=False, device="cpu")
        result = run_rollout(model, diffuser, features.single, features.pair, start.frames, rollout_cfg,
                             label=f"{steps} steps")
        frames = Rigid(result.rotations.double(), result.translations.double())  # [S, F, N]
        backbone = backbone_atoms(frames, aatype).numpy()  # [S, F, N, 4, 3]
        rows.append({"steps": steps, "wall_s": result.wall_s,
                     **quality(backbone.reshape(-1, *backbone.shape[2:]), reference)})
        log.info("%d steps: %s", steps, rows[-1])
    recommended = recommend(rows, cfg["validity_tolerance"], cfg["jsd_tolerance"], cfg["min_reference_validity"])
    if recommended is None:
        log.warning("%d-step CA validity %.3f < min_reference_validity %.3f: no step count recommended (checkpoint "
                    "%s undertrained?)", rows[0]["steps"], rows[0]["ca_validity"], cfg["min_reference_validity"],
                    args.checkpoint)
    results = {"rows": rows, "reference_steps": rows[0]["steps"], "recommended_steps": recommended,
               "criterion": f"smallest step count with CA and CA+AA validity >= reference - "
                            f"{cfg['validity_tolerance']} and "
                            f"mean JSD <= reference + {cfg['jsd_tolerance']} (reference = {rows[0]['steps']} steps); "
                            f"none if the reference's CA validity < {cfg['min_reference_validity']}",
               "checkpoint": str(args.checkpoint), "weights": weights, "features": str(args.features),
               "frames": str(args.frames), "protein": start.sequence}
    write_result(args.out_json, benchmark="sampling_steps", settings=settings, results=results, started=started)
    plot(rows, recommended, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
