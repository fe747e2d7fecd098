"""Inference fast path vs the previous one, side by side in one run: time of one denoising evaluation
(`StarMD.step` against a filled KV cache) and bytes of the projected static features held for n_samples
trajectories.

previous: an all-True attention mask [B, 1, N, T] rebuilt at every step, and the static pair projected per sample;
fast: no mask when nothing is padded (decided once per cache), the static pair projected once and expanded.
Both run on the same random-init paper-scale model, cache and noisy frame, alternating evaluation by evaluation, so
machine load hits both alike.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from starmd.bench.cli import make_parser, setup
from starmd.bench.results import save_figure, write_result
from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
from starmd.geometry import Rigid

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
PATHS = ("previous", "fast")
log = logging.getLogger("bench.inference_path")


def compare(model, n_res: int, n_samples: int, n_held: int, timed_steps: int, feature_dims: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    single, pair = synthetic_features(n_res, feature_dims, gen, "cpu")
    res_mask = torch.ones(n_samples, n_res)
    dt = torch.full((n_samples,), 100.0)
    caches = {
        "previous": model.init_cache(single.repeat(n_samples, 1, 1), pair.repeat(n_samples, 1, 1, 1), res_mask, dt),
        "fast": model.init_cache(single.expand(n_samples, -1, -1), pair.expand(n_samples, -1, -1, -1), res_mask, dt),
    }
    caches["previous"].masked = True  # the mask path, as every step ran before
    frame = helix_frames(n_res).unsqueeze(0).expand(n_samples, n_res)
    frame = Rigid(frame.rots.contiguous(), frame.trans.contiguous())
    tau = torch.full((n_samples,), 0.05)
    times = {p: [] for p in PATHS}
    with torch.no_grad():
        for l in range(n_held):
            for cache in caches.values():
                model.append(cache, frame, tau, torch.full((n_samples,), 100.0 * l))
        t, ft = torch.full((n_samples,), 0.5), torch.full((n_samples,), 100.0 * n_held)
        preds = {p: model.step(caches[p], frame, t, ft)["pred_rigids"] for p in PATHS}  # warm-up
        for _ in range(timed_steps):
            for p in PATHS:
                tic = time.perf_counter()
                model.step(caches[p], frame, t, ft)
                times[p].append(time.perf_counter() - tic)
    diff = max((preds["fast"].trans - preds["previous"].trans).abs().max().item(),
               (preds["fast"].rots - preds["previous"].rots).abs().max().item())
    row = {"n_res": n_res, "n_samples": n_samples, "n_frames_held": n_held, "max_abs_diff": diff}
    for p in PATHS:
        row[p] = {"step_s_median": statistics.median(times[p]), "step_s": times[p],
                  "static_bytes": caches[p].static_nbytes()}
    row["speedup"] = row["previous"]["step_s_median"] / row["fast"]["step_s_median"]
    row["static_bytes_ratio"] = row["previous"]["static_bytes"] / row["fast"]["static_bytes"]
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = range(len(rows))
    labels = [f"N={r['n_res']}" for r in rows]
    for i, (p, colour) in enumerate(zip(PATHS, ("tab:grey", "tab:green"))):
        xs = [j + (i - 0.5) * 0.38 for j in x]
        ax0.bar(xs, [r[p]["step_s_median"] * 1e3 for r in rows], 0.38, color=colour, label=p)
        ax1.bar(xs, [r[p]["static_bytes"] / 2**20 for r in rows], 0.38, color=colour, label=p)
    ax0.set(xticks=list(x), xticklabels=labels, ylabel="ms per network evaluation (median)",
            title=f"one denoising step, B={rows[0]['n_samples']}")
    ax1.set(xticks=list(x), xticklabels=labels, ylabel="projected static features (MiB)", title="static memory")
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__.split("\n")[0]).parse_args(argv)
    settings = setup(args, SCHEMA)
    started = time.perf_counter()
    cfg = settings["inference_path"]
    model = build_model(settings["paper_model"], settings["feature_dims"], settings["seed"]).eval()
    rows = []
    for n_res in cfg["n_res"]:
        row = compare(model, n_res, cfg["n_samples"], cfg["n_frames_held"], cfg["timed_steps"],
                      settings["feature_dims"], settings["seed"])
        log.info("N=%d: previous %.4g s, fast %.4g s per step (x%.2f); static %.3g -> %.3g MiB; max diff %.2g",
                 n_res, row["previous"]["step_s_median"], row["fast"]["step_s_median"], row["speedup"],
                 row["previous"]["static_bytes"] / 2**20, row["fast"]["static_bytes"] / 2**20, row["max_abs_diff"])
        rows.append(row)
    results = {"rows": rows, "note": "paper-scale random-init model, fp32 on CPU; previous and fast evaluated "
                                      "alternately on the same cache and frame in one process"}
    write_result(args.out_json, benchmark="inference_path", settings=settings, results=results, started=started)
    plot(rows, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
