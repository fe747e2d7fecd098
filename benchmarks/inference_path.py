"""Inference fast path vs the previous one, side by side in one run: time of one denoising evaluation
(`StarMD.step` against a filled KV cache) and bytes of the projected static features held for n_samples
trajectories.

previous: an all-True attention mask [B, 1, N, T] rebuilt at every step, and the static pair projected per sample;
fast: no mask when nothing is padded (decided once per cache), the static pair projected once and expanded;
compiled: rollout.compile, the fast path's call through torch.compile over a StaticKVCache (preallocated slots;
CUDA graphs on a GPU), timed after its compilation (reported apart).
All run on the same random-init paper-scale model, cache contents and noisy frame, alternating evaluation by
evaluation, so machine load hits them alike.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import save_figure, write_result
from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
from starmd.geometry import Rigid

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
ALL_PATHS = ("previous", "fast", "compiled")
log = logging.getLogger("bench.inference_path")


def compare(model, n_res: int, n_samples: int, n_held: int, timed_steps: int, feature_dims: dict, seed: int,
            compiled: bool) -> dict:
    paths = ALL_PATHS if compiled else ALL_PATHS[:2]
    gen = torch.Generator().manual_seed(seed)
    single, pair = synthetic_features(n_res, feature_dims, gen, "cpu")
    res_mask = torch.ones(n_samples, n_res)
    dt = torch.full((n_samples,), 100.0)
    caches = {
        "previous": model.init_cache(single.repeat(n_samples, 1, 1), pair.repeat(n_samples, 1, 1, 1), res_mask, dt),
        "fast": model.init_cache(single.expand(n_samples, -1, -1), pair.expand(n_samples, -1, -1, -1), res_mask, dt),
    }
    caches["previous"].masked = True  # the mask path, as every step ran before
    passes = {"previous": None, "fast": None}
    if compiled:
        caches["compiled"] = model.init_cache(single.expand(n_samples, -1, -1), pair.expand(n_samples, -1, -1, -1),
                                              res_mask, dt, max_frames=n_held)
        passes["compiled"] = model.compile_frame_pass(torch.device("cpu"), caches["compiled"].shape_count())
    frame = helix_frames(n_res).unsqueeze(0).expand(n_samples, n_res)
    frame = Rigid(frame.rots.contiguous(), frame.trans.contiguous())
    tau = torch.full((n_samples,), 0.05)
    times = {p: [] for p in paths}
    with torch.no_grad():
        for l in range(n_held):
            for p, cache in caches.items():
                model.append(cache, frame, tau, torch.full((n_samples,), 100.0 * l), passes[p])
        t, ft = torch.full((n_samples,), 0.5), torch.full((n_samples,), 100.0 * n_held)
        warmup = {}
        preds = {}
        for p in paths:  # warm-up (the compiled path compiles here)
            tic = time.perf_counter()
            preds[p] = model.step(caches[p], frame, t, ft, passes[p])["pred_rigids"]
            warmup[p] = time.perf_counter() - tic
        for _ in range(timed_steps):
            for p in paths:
                tic = time.perf_counter()
                model.step(caches[p], frame, t, ft, passes[p])
                times[p].append(time.perf_counter() - tic)

    def diff(p: str) -> float:
        return max((preds[p].trans - preds["previous"].trans).abs().max().item(),
                   (preds[p].rots - preds["previous"].rots).abs().max().item())

    row = {"n_res": n_res, "n_samples": n_samples, "n_frames_held": n_held, "max_abs_diff": diff("fast")}
    for p in paths:
        row[p] = {"step_s_median": statistics.median(times[p]), "step_s": times[p],
                  "static_bytes": caches[p].static_nbytes()}
    row["speedup"] = row["previous"]["step_s_median"] / row["fast"]["step_s_median"]
    if compiled:
        row.update(compiled_max_abs_diff=diff("compiled"), compiled_first_call_s=warmup["compiled"],
                   compiled_speedup=row["previous"]["step_s_median"] / row["compiled"]["step_s_median"])
    row["static_bytes_ratio"] = row["previous"]["static_bytes"] / row["fast"]["static_bytes"]
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = range(len(rows))
    labels = [f"N={r['n_res']}" for r in rows]
    paths = [p for p in ALL_PATHS if p in rows[0]]
    width = 0.8 / len(paths)
    for i, (p, colour) in enumerate(zip(paths, ("tab:grey", "tab:green", "tab:blue"))):
        xs = [j + (i - (len(paths) - 1) / 2) * width for j in x]
        ax0.bar(xs, [r[p]["step_s_median"] * 1e3 for r in rows], width, color=colour, label=p)
        ax1.bar(xs, [r[p]["static_bytes"] / 2**20 for r in rows], width, color=colour, label=p)
    ax0.set(xticks=list(x), xticklabels=labels, ylabel="ms per network evaluation (median)",
            title=f"one denoising step, B={rows[0]['n_samples']}")
    ax1.set(xticks=list(x), xticklabels=labels, ylabel="projected static features (MiB)", title="static memory")
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args, settings, started = start_benchmark(make_parser(__doc__.split("\n")[0]), argv, SCHEMA)
    cfg = settings["inference_path"]
    model = build_model(settings["paper_model"], settings["feature_dims"], settings["seed"]).eval()
    rows = []
    for n_res in cfg["n_res"]:
        row = compare(model, n_res, cfg["n_samples"], cfg["n_frames_held"], cfg["timed_steps"],
                      settings["feature_dims"], settings["seed"], cfg["compiled"])
        log.info("N=%d: previous %.4g s, fast %.4g s per step (x%.2f); static %.3g -> %.3g MiB; max diff %.2g",
                 n_res, row["previous"]["step_s_median"], row["fast"]["step_s_median"], row["speedup"],
                 row["previous"]["static_bytes"] / 2**20, row["fast"]["static_bytes"] / 2**20, row["max_abs_diff"])
        if cfg["compiled"]:
            log.info("N=%d: compiled %.4g s per step (x%.2f vs previous; first call, compiling, %.0f s); max diff %.2g",
                     n_res, row["compiled"]["step_s_median"], row["compiled_speedup"], row["compiled_first_call_s"],
                     row["compiled_max_abs_diff"])
        rows.append(row)
    results = {"rows": rows, "note": "paper-scale random-init model, fp32 on CPU; the three paths evaluated "
                                      "alternately on the same cache contents and frame in one process"}
    write_result(args.out_json, benchmark="inference_path", settings=settings, results=results, started=started)
    plot(rows, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
