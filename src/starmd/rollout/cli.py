"""`python -m starmd rollout`: generate trajectories of one protein from a trained checkpoint.

Writes `{out}.h5` (rigids, validity, provenance attrs), `{out}.pdb` (backbone of the start structure) and
`{out}_s{k}.xtc` per sample; see docs/rollout.md. Frames stream into `.{out}.partial/` as they are generated; rerunning
the same command continues from the last save there.

Exit status: 0 done; 75 stopped by SIGTERM/SIGUSR1 after saving (rerun to resume); 1 bad input (one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import h5py
import torch

from starmd.delta_t import in_trained_range, trained_delta_t_range
from starmd.estimate.at_start import log_estimate, rollout_predictor
from starmd.estimate.config import model_dims
from starmd.io import file_fingerprint, sha256sum
from starmd.rollout.config import RolloutConfig
from starmd.rollout.inputs import check_match, load_features, load_model, load_start
from starmd.rollout.sampler import generate, resolve_device
from starmd.rollout.stream import RolloutStream
from starmd.rollout.writers import write_start_pdb
from starmd.training.cli import build_diffuser
from starmd.training.signals import REQUEUE_EXIT_CODE, Preempted, PreemptionFlag

log = logging.getLogger("starmd.rollout")


def rollout_protein(*, checkpoint: Path, features_path: Path, frames_path: Path, out: Path, cfg: RolloutConfig,
                    start_replica: str | None = None, start_frame: int | None = None,
                    use_cache: bool = True, restart_if_changed: bool = False) -> list[Path]:
    """Load, check, sample while streaming to disk, rename into place. Returns the written paths ({out}.h5, .pdb,
    _s{k}.xtc). Continues a partial rollout of the same inputs and config saved beside `out` (see
    starmd.rollout.stream); raises Preempted after saving when SIGTERM/SIGUSR1 arrives."""
    features = load_features(features_path)
    start = load_start(frames_path, start_replica, start_frame)
    check_match(features, start)
    model, config, weights = load_model(checkpoint, features, cfg.use_ema)
    diffuser = build_diffuser(config)
    lo, hi = trained_delta_t_range(config.get("training", {}).get("strides", []), start.dt_ps)
    if not in_trained_range(cfg.delta_t_ps, lo, hi):  # the workflow refuses this at start unless allowed
        log.warning("rollout.delta_t_ps = %g ps is outside the Delta-t range the checkpoint was trained on "
                    "[%g, %g] ps (training.strides x dt_ps of %s): extrapolating in time%s", cfg.delta_t_ps, lo, hi,
                    frames_path, " (rollout.allow_delta_t_extrapolation)" if cfg.allow_delta_t_extrapolation else "")
    crop = config.get("training", {}).get("crop_size")
    n_res = start.frames.shape[-1]
    if crop is not None and n_res > crop:  # 33 of the 82 ATLAS test chains are longer than the paper crop (256)
        log.warning("%s has %d residues, more than the checkpoint's training crop (training.crop_size = %d): the "
                    "model never saw a chain this long; quality beyond the crop is not measured (docs/rollout.md)",
                    out.stem, n_res, crop)
    device = resolve_device(cfg.device)
    dims = model_dims(config["model"], config["features"])
    log_estimate(log, f"rollout of {out.stem} (N={n_res}, {cfg.n_samples} samples x {cfg.n_frames} frames x "
                 f"{cfg.steps} steps)", out.stem, dims,
                 rollout_predictor(dims, n_res, cfg.n_samples, cfg.n_frames, cfg.steps, cfg.context_window,
                                   device.type), device)
    model = model.to(device)
    checkpoint_sha256 = sha256sum(checkpoint)
    science = {k: v for k, v in cfg.to_dict().items() if k not in RolloutConfig.RESUMABLE}
    fingerprint = {**{f"rollout.{k}": v for k, v in science.items()}, "checkpoint_sha256": checkpoint_sha256,
                   "features": file_fingerprint(features_path), "frames": file_fingerprint(frames_path),
                   "start": start.source, "kv_cache": use_cache, "dtype": str(next(model.parameters()).dtype)}
    pdb = write_start_pdb(out, start.frames.rots.numpy(), start.frames.trans.numpy(), start.aatype,
                          start.residue_index)
    stream = RolloutStream(
        out, n_samples=cfg.n_samples, aatype=start.aatype, residue_index=start.residue_index, start=start.frames,
        fingerprint=fingerprint, every=cfg.checkpoint_every,
        static_attrs={"name": out.stem, "sequence": start.sequence, "delta_t_ps": cfg.delta_t_ps, "seed": cfg.seed,
                      "steps": cfg.steps, "t_min": cfg.t_min, "tau": cfg.tau, "n_samples": cfg.n_samples,
                      "n_frames": cfg.n_frames, "context_window": cfg.context_window, "weights": weights,
                      "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256,
                      "features": str(features_path), "start": start.source, "trained_delta_t_ps": [lo, hi],
                      "kv_cache": use_cache, "device": str(device), "config": cfg.to_dict()})
    resume = stream.resume(restart_if_changed)
    try:
        with PreemptionFlag() as preempt:
            stats = generate(model, diffuser, features.single, features.pair, start.frames, cfg, stream,
                             use_cache=use_cache, label=out.stem, resume=resume,
                             stop=lambda: preempt.requested is not None, aatype=torch.as_tensor(start.aatype))
    finally:
        stream.close()
    if stats.frames_done < cfg.n_frames:
        raise Preempted(preempt.requested or signal.SIGTERM, stats.frames_done, saved=str(stream.dir), unit="frame")
    written = stream.finish({"peak_cache_bytes": stats.peak_cache_bytes, "wall_s": stream.wall_s + stats.wall_s})
    with h5py.File(out, "r") as h5:
        validity = h5["validity"][()]  # [S, F] bool
    log.info("%s: CA validity %.3f over %d frames x %d samples; wrote %s", out.stem, float(validity.mean()),
             cfg.n_frames, cfg.n_samples, ", ".join(p.name for p in [written[0], pdb, *written[1:]]))
    return [written[0], pdb, *written[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="runs/{run}/checkpoints/final.pt")
    parser.add_argument("--features", required=True, type=Path, help="data/features/{featurizer}/{name}.h5")
    parser.add_argument("--frames", required=True, type=Path, help="data/frames/{name}.h5 (start structure)")
    parser.add_argument("--out", required=True, type=Path, help="runs/{run}/rollouts/{name}.h5")
    parser.add_argument("--start-replica", help="start from an MD frame of this replica (e.g. R1) instead of the PDB")
    parser.add_argument("--start-frame", type=int, help="index of that MD frame (default 0)")
    parser.add_argument("--config-json", required=True, help="JSON of the `rollout` config section")
    parser.add_argument("--restart-if-changed", action="store_true",
                        help="discard a partial rollout saved for other inputs or another config (default: refuse)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = RolloutConfig.from_json(args.config_json)
    log.info("rollout config %s", json.dumps(cfg.to_dict(), sort_keys=True))
    try:
        rollout_protein(checkpoint=args.checkpoint, features_path=args.features, frames_path=args.frames,
                        out=args.out, cfg=cfg, start_replica=args.start_replica, start_frame=args.start_frame,
                        restart_if_changed=args.restart_if_changed)
    except Preempted as exc:
        log.warning("%s", exc)
        return REQUEUE_EXIT_CODE
    return 0
