"""`python -m starmd train`: train STAR-MD on frames/features HDF5 files into a run directory.

Single process (CPU or one GPU):  python -m starmd train --frames ... --features ... --run-dir runs/x --config-json ..
Several GPUs / nodes:             torchrun --nproc-per-node 4 -m starmd train <same arguments>
Rerunning the same command resumes from `run_dir/checkpoints/last.pt`. A last.pt written with a different config or
different input files is refused, or with --restart-if-changed moved aside (checkpoints.superseded-<UTC time>/) so that
training starts afresh: the Snakemake rule passes it, since Snakemake reruns `train` exactly when its params or
inputs changed, while a requeued job (same config, same files) still resumes.

Exit status: 0 done (final.pt written); 75 stopped by SIGUSR1/SIGTERM after saving last.pt (rerun to resume, see
starmd.training.signals); 1 failed (bad input, reported as one line by `python -m starmd`; non-finite loss K steps
in a row).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import torch

from starmd.diffusion import SE3Diffuser
from starmd.errors import open_h5
from starmd.estimate.at_start import log_estimate, training_predictor
from starmd.estimate.config import model_dims
from starmd.features.io import FEATURES_FIX, check_features
from starmd.io import file_fingerprint
from starmd.model import StarMD, model_hparams
from starmd.training.config import TrainingConfig
from starmd.training.dataset import FrameWindowDataset
from starmd.training.distributed import init_distributed, shutdown_distributed
from starmd.training.loop import NonFiniteLoss, Trainer
from starmd.training.signals import REQUEUE_EXIT_CODE, Preempted

log = logging.getLogger("starmd.train")

SECTIONS = ("training", "model", "diffusion")


def parse_config(text: str) -> dict[str, Any]:
    """--config-json holds the three sections the run depends on; each one is also stored in the checkpoints."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or set(config) - set(SECTIONS):
        raise ValueError(f"--config-json must be an object with sections {list(SECTIONS)}, got keys "
                         f"{sorted(config) if isinstance(config, dict) else type(config).__name__}")
    return {s: dict(config.get(s, {})) for s in SECTIONS}


def feature_dims(paths: list[str]) -> tuple[int, int]:
    """(c_s, c_z) shared by every features file; the model's input widths."""
    dims = set()
    for p in paths:
        with open_h5(p, "features HDF5", FEATURES_FIX) as f:
            dims.add(check_features(f, p)[1:])
    if len(dims) != 1:
        raise ValueError(f"features files disagree on (c_s, c_z): {sorted(dims)}; use one featurizer for a run")
    return dims.pop()


def build_model(config: dict[str, Any], c_s_in: int, c_z_in: int) -> StarMD:
    """The network from the checkpointed config (rollout calls this too, with dims from the checkpoint)."""
    return StarMD(c_s_in=c_s_in, c_z_in=c_z_in, **config["model"])


def build_diffuser(config: dict[str, Any]) -> SE3Diffuser:
    return SE3Diffuser(**config["diffusion"])


def log_training_estimate(config: dict[str, Any], cfg: TrainingConfig, data: FrameWindowDataset,
                          device: torch.device) -> None:
    """Size one process's training on the longest training protein (its crop gives the largest windows, so the
    peak), and warn if that exceeds the memory this job was granted (starmd.estimate.at_start)."""
    longest = max(data.entries, key=lambda e: e.n_residues)
    n_res = min(longest.n_residues, cfg.crop_size)
    dims = model_dims(config["model"], config["features"])
    micro_steps = cfg.steps * cfg.grad_accum  # the time model is per micro-batch of batch_size windows
    log_estimate(log, f"training ({cfg.steps} steps x {cfg.grad_accum} micro-batches of {cfg.batch_size} windows x "
                 f"{cfg.num_frames} frames, longest protein {longest.name} cropped to N={n_res})", longest.name, dims,
                 training_predictor(dims, n_res, cfg.num_frames, cfg.batch_size, micro_steps, device.type,
                                    cfg.activation_checkpointing), device)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m starmd train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", nargs="+", required=True, help="training frames HDF5 files")
    p.add_argument("--features", nargs="+", required=True, help="features HDF5 files, same order as --frames")
    p.add_argument("--val-frames", nargs="*", default=[], help="validation frames HDF5 files")
    p.add_argument("--val-features", nargs="*", default=[], help="validation features, same order as --val-frames")
    p.add_argument("--run-dir", required=True, help="run directory (checkpoints/, metrics.jsonl)")
    p.add_argument("--config-json", default="{}", help='{"training": {...}, "model": {...}, "diffusion": {...}}')
    p.add_argument("--restart-if-changed", action="store_true",
                   help="move a checkpoints/ of a different config or different input files aside and start afresh "
                        "(default: refuse)")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    env = init_distributed(args.device)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        config = parse_config(args.config_json)
        cfg = TrainingConfig.from_dict(config["training"])
        config["training"] = cfg.to_dict()  # stored with defaults filled in, so resume compares like with like
        config["model"] = model_hparams(config.get("model", {}))
        data_kw = dict(num_frames=cfg.num_frames, strides=cfg.strides, crop_size=cfg.crop_size, centre=cfg.centre)
        train_data = FrameWindowDataset(frames=args.frames, features=args.features, seed=cfg.seed, **data_kw)
        val_data = (FrameWindowDataset(frames=args.val_frames, features=args.val_features, seed=cfg.seed + 1,
                                       **data_kw) if args.val_frames else None)
        c_s_in, c_z_in = feature_dims(list(args.features) + list(args.val_features))
        config["features"] = {"c_s": c_s_in, "c_z": c_z_in}
        config["data"] = {key: [file_fingerprint(p) for p in getattr(args, key)]
                          for key in ("frames", "features", "val_frames", "val_features")}
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        model = build_model(config, c_s_in, c_z_in)
        model.activation_checkpointing = cfg.activation_checkpointing
        if env.is_main:
            log_training_estimate(config, cfg, train_data, env.device)
        trainer = Trainer(model=model, diffuser=build_diffuser(config), cfg=cfg, config=config,
                          train_data=train_data, val_data=val_data, run_dir=args.run_dir, env=env,
                          restart_if_changed=args.restart_if_changed)
        trainer.fit()
        log.info("training finished: %s", trainer.final_path)
        return 0
    except Preempted as exc:
        log.warning("%s", exc)
        return REQUEUE_EXIT_CODE
    except NonFiniteLoss as exc:  # bad inputs (ValueError) are reported by `python -m starmd`, like every step's
        log.error("%s", exc)
        return 1
    finally:
        shutdown_distributed()
