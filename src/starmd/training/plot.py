"""Loss curves from metrics.jsonl: the `training` figure of the report and `python -m starmd plot-training`.

The CLI is for watching a live run (`runs/{run}/checkpoints/metrics.jsonl` grows while training); the `figures`
rule draws the same figure from the finished run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from starmd.io import atomic_path
from starmd.training.metrics import read_metrics


def training_figure(records: list[dict[str, Any]], source: str = "metrics.jsonl") -> Figure:
    """Total loss, its parts and the EMA validation loss (log scale) over the learning rate, vs optimizer step.

    pyplot-free, so the caller controls style and rendering (byte-reproducible in the report).
    """
    train = [r for r in records if "loss" in r]
    val = [r for r in records if r.get("val_loss") is not None]
    if not train:
        raise ValueError(f"{source}: no line has key 'loss' (expected the metrics.jsonl written by `starmd train`)")
    fig = Figure(figsize=(6.4, 5.0))
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="train loss", color="black")
    for part in sorted(train[-1].get("parts", {})):
        ax_loss.plot(steps, [r.get("parts", {}).get(part, float("nan")) for r in train], label=part, lw=0.8)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", markersize=3,
                     label="val loss (EMA)")
    if all(r["loss"] > 0 for r in train) and all(r["val_loss"] > 0 for r in val):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="best")
    if all("lr" in r for r in train):
        ax_lr.plot(steps, [r["lr"] for r in train], color="grey")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m starmd plot-training", description=__doc__)
    p.add_argument("--metrics", required=True, type=Path, help="metrics.jsonl written by `starmd train`")
    p.add_argument("--out", required=True, type=Path, help="figure path (.png or .pdf)")
    args = p.parse_args(argv)
    try:
        fig = training_figure(read_metrics(args.metrics), str(args.metrics))
    except (OSError, ValueError) as exc:
        print(f"plot-training: {exc}", file=sys.stderr)
        return 1
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format=args.out.suffix.lstrip(".") or "png")
    return 0
