"""Block-causal training attention, dense token mask vs mask-free (frame by frame): wall time of forward + backward
and peak resident memory of one paper-scale S x T attention layer over 2 L N tokens, side by side in one process.

The dense side builds the mask as the training path did before issue 15 (block_causal_mask combined with the residue
mask, [B, 1, 2LN, 2LN]) and runs SDPA with it; the mask-free side passes a BlockCausalLayout. Same layer, same
inputs; their outputs are checked equal before timing.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.machine import release_freed_memory
from starmd.bench.results import save_figure, write_result
from starmd.bench.workloads import peak_rss
from starmd.model.attention import (BlockCausalLayout, SpatioTemporalAttention, block_causal_mask,
                                    residue_attention_mask)

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
log = logging.getLogger("bench.attention")


def dense_mask(layout: BlockCausalLayout) -> torch.Tensor:
    """[B, 1, 2LN, 2LN]: what the training path built before the mask-free attention."""
    valid = layout.res_mask.repeat(1, 2 * layout.n_frames)
    return residue_attention_mask(block_causal_mask(layout.n_frames, layout.n_res, layout.window), valid, valid)


def measure(layer: SpatioTemporalAttention, s: torch.Tensor, layout: BlockCausalLayout, dense: bool,
            reps: int) -> dict:
    """Median wall time (s) of mask construction + forward + backward, and the peak RSS increase of one such pass."""
    def once() -> None:
        x = s.detach().requires_grad_()
        out, _ = layer(x, dense_mask(layout) if dense else layout)
        out.square().sum().backward()

    once()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    release_freed_memory()
    mem: dict = {}
    with peak_rss(mem):
        once()
    return {"median_s": statistics.median(times), "peak_rss_increase_bytes": mem["peak_rss_increase_bytes"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for n_res in sorted({r["n_res"] for r in rows}):
        sel = [r for r in rows if r["n_res"] == n_res]
        tokens = [2 * r["n_frames"] * n_res for r in sel]
        for kind, style in (("dense", "o--"), ("mask_free", "s-")):
            axes[0].plot(tokens, [r[kind]["median_s"] for r in sel], style, label=f"{kind} N={n_res}")
            axes[1].plot(tokens, [r[kind]["peak_rss_increase_bytes"] / 2**20 for r in sel], style,
                         label=f"{kind} N={n_res}")
    axes[0].set(xlabel="tokens 2 L N", ylabel="forward + backward (s)", xscale="log", yscale="log",
                title="block-causal S x T attention, time")
    axes[1].set(xlabel="tokens 2 L N", ylabel="peak RSS increase (MiB)", xscale="log", yscale="log",
                title="peak memory")
    axes[1].legend(fontsize=6)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args, settings, started = start_benchmark(make_parser(__doc__.split("\n")[0]), argv, SCHEMA)
    cfg, model = settings["attention"], settings["paper_model"]
    torch.manual_seed(settings["seed"])
    layer = SpatioTemporalAttention(model["c_s"], model["n_heads"], model["c_hidden"])
    torch.nn.init.normal_(layer.linear_out.weight, std=0.02)  # "final" init is zero: give the backward real work
    rows = []
    for n_res in cfg["n_res"]:
        for n_frames in cfg["n_frames"]:
            res_mask = torch.ones(cfg["batch_size"], n_res, dtype=torch.bool)
            res_mask[:, n_res - cfg["padded_res"]:] = False
            layout = BlockCausalLayout(n_frames, n_res, res_mask)
            s = torch.randn(cfg["batch_size"], 2 * n_frames * n_res, model["c_s"])
            with torch.no_grad():
                real = layout.res_mask.repeat(1, 2 * n_frames)[..., None]
                diff = (layer(s, dense_mask(layout))[0] - layer(s, layout)[0]).mul(real).abs().max().item()
            row = {"n_res": n_res, "n_frames": n_frames, "tokens": 2 * n_frames * n_res, "max_abs_diff": diff,
                   "dense_mask_bytes": cfg["batch_size"] * (2 * n_frames * n_res) ** 2}
            for kind, dense in (("dense", True), ("mask_free", False)):
                row[kind] = measure(layer, s, layout, dense, cfg["reps"])
            row["speedup"] = row["dense"]["median_s"] / row["mask_free"]["median_s"]
            row["memory_ratio"] = row["dense"]["peak_rss_increase_bytes"] / max(
                row["mask_free"]["peak_rss_increase_bytes"], 1)
            log.info("N=%d L=%d: dense %.3f s %.0f MiB, mask-free %.3f s %.0f MiB (x%.2f time, x%.2f memory), "
                     "max |diff| %.1e", n_res, n_frames, row["dense"]["median_s"],
                     row["dense"]["peak_rss_increase_bytes"] / 2**20, row["mask_free"]["median_s"],
                     row["mask_free"]["peak_rss_increase_bytes"] / 2**20, row["speedup"], row["memory_ratio"], diff)
            rows.append(row)
    write_result(args.out_json, benchmark="training_attention", settings=settings, results={"rows": rows},
                 started=started)
    plot(rows, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
