"""`python -m starmd plot-training`: loss curves (total, parts, validation) and learning rate from metrics.jsonl."""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from starmd.io import atomic_path  # noqa: E402
from starmd.training.metrics import read_metrics  # noqa: E402


def plot_training(metrics_path: str, out_path: str) -> None:
    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    if not train:
        raise ValueError(f"{metrics_path}: no training-loss records to plot")
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True, height_ratios=[3, 1])
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss", color="black")
    for part in sorted(train[-1]["parts"]):
        ax_loss.plot(steps, [r["parts"].get(part, float("nan")) for r in train], label=part, lw=0.8)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss (EMA)")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize="small")
    ax_lr.plot(steps, [r["lr"] for r in train], color="grey")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m starmd plot-training", description=__doc__)
    p.add_argument("--metrics", required=True, help="metrics.jsonl written by `starmd train`")
    p.add_argument("--out", required=True, help="figure path (.png or .pdf)")
    args = p.parse_args(argv)
    try:
        plot_training(args.metrics, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"plot-training: {exc}", file=sys.stderr)
        return 1
    return 0
