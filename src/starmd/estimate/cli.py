"""`python -m starmd estimate --configfile config.yaml [--configfile override.yaml]`: per protein of the config, the
predicted peak memory and wall time of its rollout job and of training on its windows, and a warning line wherever
the prediction exceeds the memory the SLURM profile requests for that rule."""

from __future__ import annotations

import argparse
from pathlib import Path

from starmd.estimate import model as rm
from starmd.estimate.config import ROOT, feature_dims, load_config, model_dims, protein_lengths
from starmd.estimate.slurm import requested_mem_mb

DEFAULT_CALIBRATION = ROOT / "benchmarks" / "reference" / "cpu" / "estimate_calibration.json"
MB = 1e6


def estimate_rows(config: dict, cal: rm.Calibration, device: str) -> list[dict]:
    """One row per protein: rollout (n_samples trajectories of n_frames) and training (a cropped window batch)."""
    dims = model_dims(config["model"], feature_dims(config))
    ro, tr = config["rollout"], config["training"]
    checkpointing = tr["activation_checkpointing"]
    rows = []
    for name, info in sorted(protein_lengths(config).items()):
        n = info["n_res"]
        held = min(ro["n_frames"], ro["context_window"] or ro["n_frames"]) + 1  # + the start frame
        n_train = min(n, tr["crop_size"])
        rows.append({
            "name": name, "n_res": n, "splits": info["splits"],
            "rollout_bytes": rm.rollout_peak_bytes(cal, dims, n, held, ro["n_samples"])["total"],
            "rollout_s": rm.rollout_seconds(cal, dims, device, n, ro["n_frames"], ro["steps"], ro["n_samples"],
                                            ro["context_window"]),
            "train_bytes": rm.training_peak_bytes(cal, dims, n_train, tr["num_frames"], tr["batch_size"],
                                                  checkpointing)["total"],
            "train_s": rm.training_seconds(cal, dims, device, n_train, tr["num_frames"], tr["batch_size"],
                                           tr["steps"] * tr["grad_accum"], checkpointing),
        })
    return rows


def warnings(rows: list[dict], limits: dict[str, int | None]) -> list[str]:
    """A line per protein and rule whose predicted peak exceeds the rule's requested mem_mb (rollout: test
    proteins; train: train/val proteins, which the one training job holds one window of at a time)."""
    out = []
    for r in rows:
        for rule, key, wanted in (("rollout", "rollout_bytes", "test"), ("train", "train_bytes", "train")):
            limit = limits.get(rule)
            if limit is not None and wanted in r["splits"] and r[key] > limit * MB:
                out.append(f"WARNING {r['name']} (N={r['n_res']}): {rule} needs ~{r[key] / MB:,.0f} MB, the SLURM "
                           f"profile requests mem_mb={limit} for rule {rule}")
    return out


def _hours(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 3600:.3g} h"


def format_table(rows: list[dict], device: str) -> str:
    head = f"{'protein':<12} {'N':>5} {'splits':<15} {'rollout MB':>11} {'rollout time':>13} {'train MB':>10} " \
           f"{'train time':>11}"
    lines = [head] + [f"{r['name']:<12} {r['n_res']:>5} {','.join(r['splits']):<15} {r['rollout_bytes'] / MB:>11,.0f} "
                      f"{_hours(r['rollout_s']):>13} {r['train_bytes'] / MB:>10,.0f} {_hours(r['train_s']):>11}"
                      for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd estimate", description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", type=Path, action="append", required=True,
                        help="workflow config YAML; repeat to override, as with snakemake")
    parser.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION,
                        help="bench_estimate_calibration result JSON")
    parser.add_argument("--slurm-profile", type=Path, default=ROOT / "slurm" / "config.yaml",
                        help="profile whose mem_mb per rule is checked")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the config's rollout.device")
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    device = args.device or config["rollout"]["device"]
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cal = rm.Calibration.load(args.calibration)
    rows = estimate_rows(config, cal, device)
    limits = {rule: requested_mem_mb(args.slurm_profile, rule) for rule in ("rollout", "train")}
    print(f"starmd estimate: {len(rows)} proteins, device {device}, calibration {args.calibration} "
          f"(N = sequence length; memory = fp32 tensors; rollout = {config['rollout']['n_samples']} samples x "
          f"{config['rollout']['n_frames']} frames x {config['rollout']['steps']} steps; train = one process, "
          f"{config['training']['steps']} steps of batch {config['training']['batch_size']}, crop "
          f"{config['training']['crop_size']}; n/a = no calibration for this device)")
    print(format_table(rows, device))
    for line in warnings(rows, limits):
        print(line)
    return 0
