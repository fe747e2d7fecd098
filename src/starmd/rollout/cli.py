"""`python -m starmd rollout`: generate trajectories of one protein from a trained checkpoint.

Writes `{out}.h5` (rigids, validity, provenance attrs), `{out}.pdb` (backbone of the start structure) and
`{out}_s{k}.xtc` per sample; see docs/rollout.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from starmd.delta_t import in_trained_range, trained_delta_t_range
from starmd.evaluation.metrics import ca_valid
from starmd.io import sha256sum
from starmd.rollout.config import RolloutConfig
from starmd.rollout.inputs import check_match, load_features, load_model, load_start
from starmd.rollout.sampler import resolve_device, run_rollout
from starmd.rollout.writers import RolloutRecord, write_outputs
from starmd.training.cli import build_diffuser

log = logging.getLogger("starmd.rollout")


def rollout_protein(*, checkpoint: Path, features_path: Path, frames_path: Path, out: Path, cfg: RolloutConfig,
                    start_replica: str | None = None, start_frame: int | None = None,
                    use_cache: bool = True) -> list[Path]:
    """Load, check, sample, write. Returns the written paths ({out}.h5, .pdb, _s{k}.xtc)."""
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
    model = model.to(device)
    result = run_rollout(model, diffuser, features.single, features.pair, start.frames, cfg, use_cache=use_cache,
                         label=out.stem)
    trans = result.translations.double().numpy()  # [S, F, N, 3]
    s, f, n = trans.shape[:3]
    record = RolloutRecord(
        rotations=result.rotations.double().numpy(), translations=trans, time_ps=result.time_ps.numpy(),
        validity=ca_valid(trans.reshape(s * f, n, 3)).reshape(s, f),
        start_rotations=start.frames.rots.numpy(), start_translations=start.frames.trans.numpy(),
        aatype=np.asarray(start.aatype), residue_index=np.asarray(start.residue_index),
        attrs={"name": out.stem, "sequence": start.sequence, "delta_t_ps": cfg.delta_t_ps, "seed": cfg.seed,
               "steps": cfg.steps, "t_min": cfg.t_min, "tau": cfg.tau, "n_samples": cfg.n_samples,
               "n_frames": cfg.n_frames, "context_window": cfg.context_window, "weights": weights,
               "checkpoint": str(checkpoint), "checkpoint_sha256": sha256sum(checkpoint),
               "features": str(features_path), "start": start.source, "trained_delta_t_ps": [lo, hi],
               "kv_cache": use_cache, "peak_cache_bytes": result.peak_cache_bytes, "wall_s": result.wall_s,
               "device": str(device), "config": cfg.to_dict()})
    written = write_outputs(out, record)
    log.info("%s: CA validity %.3f over %d frames x %d samples; wrote %s", out.stem, float(record.validity.mean()), f,
             s, ", ".join(p.name for p in written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="runs/{run}/checkpoints/final.pt")
    parser.add_argument("--features", required=True, type=Path, help="data/features/{featurizer}/{name}.h5")
    parser.add_argument("--frames", required=True, type=Path, help="data/frames/{name}.h5 (start structure)")
    parser.add_argument("--out", required=True, type=Path, help="runs/{run}/rollouts/{name}.h5")
    parser.add_argument("--start-replica", help="start from an MD frame of this replica (e.g. R1) instead of the PDB")
    parser.add_argument("--start-frame", type=int, help="index of that MD frame (default 0)")
    parser.add_argument("--config-json", required=True, help="JSON of the `rollout` config section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = RolloutConfig.from_json(args.config_json)
    log.info("rollout config %s", json.dumps(cfg.to_dict(), sort_keys=True))
    rollout_protein(checkpoint=args.checkpoint, features_path=args.features, frames_path=args.frames, out=args.out,
                    cfg=cfg, start_replica=args.start_replica, start_frame=args.start_frame)
    return 0
