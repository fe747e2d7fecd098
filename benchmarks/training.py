"""Training throughput: tokens/s and frames/s of real block-causal optimizer steps (starmd.training.losses), demo
scale vs paper scale on the same synthetic windows, and peak resident memory vs L (freed heap trimmed before each L, so earlier runs do not hide it).

Tokens = target (residue, frame) pairs per step and frames = target frames, as the training loop counts them; each
step runs one pass over L context + L target frames, so attention covers 2 L N tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import loglog_slope, save_figure, write_result
from starmd.bench.synthetic import build_model, n_parameters
from starmd.bench.workloads import timed_training

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
SCALES = ("demo_model", "paper_model")
log = logging.getLogger("bench.training")


def plot(memory: dict[str, list[dict]], throughput: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(throughput)
    values = [throughput[n]["tokens_per_s"] for n in names]
    bars = ax0.bar(names, values, color=["tab:blue", "tab:orange"][:len(names)])
    ax0.bar_label(bars, [f"{v:.3g}" for v in values])
    ax0.set(ylabel="tokens / s (target residue-frames)", title="training step throughput")
    for scale, rows in memory.items():
        ls = [r["n_frames"] for r in rows]
        ax1.plot(ls, [r["peak_rss_increase_bytes"] / 2**20 for r in rows], "o-", label=f"{scale} (RSS increase)")
    ax1.set(xlabel="frames per window L (2L in the pass)", ylabel="peak memory during steps (MiB)", xscale="log",
            yscale="log", title="peak memory vs L")
    all_l = sorted({r["n_frames"] for rows in memory.values() for r in rows})
    ax1.set_xticks(all_l, [str(l) for l in all_l])
    ax1.minorticks_off()
    ax1.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args, settings, started = start_benchmark(make_parser(__doc__.split("\n")[0]), argv, SCHEMA)
    cfg = settings["training"]
    common = {"feature_dims": settings["feature_dims"], "n_res": cfg["n_res"], "batch_size": cfg["batch_size"],
              "seed": settings["seed"], "threads": settings["threads"]}
    throughput, memory = {}, {}
    for scale in SCALES:
        kwargs = settings[scale]
        params = n_parameters(build_model(kwargs, settings["feature_dims"], settings["seed"]))
        run = timed_training(kwargs, n_frames=cfg["n_frames"], timed_steps=cfg["timed_steps"], **common)
        throughput[scale] = {"n_parameters": params, **run}
        log.info("%s (%d params): %.3g tokens/s, %.3g frames/s", scale, params, run["tokens_per_s"],
                 run["frames_per_s"])
    for scale in SCALES:
        memory[scale] = [timed_training(model_kwargs=settings[scale], n_frames=l, timed_steps=1,
                                          **common) for l in sorted(cfg["memory_n_frames"])]
    slopes = {}
    for scale, rows in memory.items():
        if len(rows) >= 2:
            slopes[scale] = round(loglog_slope([r["n_frames"] for r in rows],
                                               [r["peak_rss_increase_bytes"] for r in rows]), 3)
    demo, paper = throughput["demo_model"], throughput["paper_model"]
    results = {
        "throughput": throughput,
        "ratios_demo_over_paper": {"tokens_per_s": demo["tokens_per_s"] / paper["tokens_per_s"],
                                   "frames_per_s": demo["frames_per_s"] / paper["frames_per_s"],
                                   "n_parameters_paper_over_demo": paper["n_parameters"] / demo["n_parameters"]},
        "peak_memory_vs_L": memory,
        "peak_memory_exponent_in_L": slopes,
        "note": "random-init models on synthetic windows (an ideal helix jittered by 0.5 A per frame); a step = "
                "compute_loss + backward + grad clipping + AdamW, fp32 on CPU (bf16 autocast only on CUDA)",
    }
    write_result(args.out_json, benchmark="training", settings=settings, results=results, started=started)
    plot(memory, {k.removesuffix("_model"): v for k, v in throughput.items()}, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
