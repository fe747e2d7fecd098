"""KV-cache memory: the singles-only cache STAR-MD keeps vs caching every frame's pair state.

- measured: a real paper-scale StarMD fills a real KVCache by `append` (small N, L; CPU fp32), and next to it a
  pair cache of the same N, L is allocated for real (one zero-filled [N, N, c_z] tensor per frame and block);
- analytic: `kv_cache_nbytes` / `pair_cache_nbytes` over the paper grid (N up to 500, L up to 400), checked against
  the measured points; pair caches within `pair_budget_bytes` are also allocated for real (resident, zero-filled);
- peak resident memory of the process during real demo-scale rollouts vs L.
Exponents in L and N are log-log slopes; the N=500, L=400 ratio is compared with the paper's.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from pathlib import Path

import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.machine import reset_peak_rss, rss_bytes
from starmd.bench.results import loglog_slope, save_figure, write_result
from starmd.bench.synthetic import build_model, helix_frames, n_parameters, synthetic_features
from starmd.bench.workloads import timed_rollout
from starmd.model import StarMD, kv_cache_nbytes, pair_cache_nbytes

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PAPER = {"ratio": 196, "singles_bytes": 200e6, "pairs_bytes": 40e9, "n_res": 500, "n_frames": 400}
log = logging.getLogger("bench.kv_cache")


def model_dims(settings: dict) -> dict:
    """The cache-relevant dims of the paper-scale model (StarMD's defaults where paper_model leaves a key out)."""
    model = build_model(settings["paper_model"], settings["feature_dims"], settings["seed"])
    defaults = {k: p.default for k, p in inspect.signature(StarMD.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    kw = {**defaults, **settings["paper_model"]}
    return {**{k: kw[k] for k in ("n_blocks", "n_heads", "c_hidden", "c_z", "c_s")},
            "n_parameters": n_parameters(model)}


def allocate_pair_cache(dims: dict, n_res: int, n_frames: int, dtype: torch.dtype) -> dict:
    """A real pair cache: per frame and block one zero-filled [N, N, c_z] tensor, grown frame by frame as a
    rollout would. Returns the summed storage bytes and the resident-memory increase it caused."""
    reset = reset_peak_rss()
    before = rss_bytes()
    held: list[torch.Tensor] = []
    for _ in range(n_frames):
        held.extend(torch.zeros(n_res, n_res, dims["c_z"], dtype=dtype) for _ in range(dims["n_blocks"]))
    out = {"bytes": sum(t.untyped_storage().nbytes() for t in held),
           "rss_increase_bytes": rss_bytes("VmHWM") - before if reset else None}
    del held
    return out


def measure_singles(settings: dict, dims: dict, pair_dtype: torch.dtype) -> list[dict]:
    """Real appends of a paper-scale model; at each recorded L the cache bytes, the formula and a real pair cache."""
    cfg = settings["kv_cache"]
    recorded = sorted(set(cfg["measured_n_frames"]))
    gen = torch.Generator().manual_seed(settings["seed"])
    model = build_model(settings["paper_model"], settings["feature_dims"], settings["seed"])
    rows = []
    for n_res in sorted(set(cfg["measured_n_res"])):
        single, pair = synthetic_features(n_res, settings["feature_dims"], gen)
        frame = helix_frames(n_res).unsqueeze(0)  # [1, N]
        tic = time.perf_counter()
        with torch.no_grad():
            cache = model.init_cache(single[None], pair[None], torch.ones(1, n_res), torch.tensor([100.0]))
            for l in range(1, recorded[-1] + 1):
                model.append(cache, frame, torch.tensor([0.05]), torch.tensor([100.0 * l]))
                if l not in recorded:
                    continue
                dtype = cache.keys[0].dtype
                formula = kv_cache_nbytes(dims["n_blocks"], dims["n_heads"], dims["c_hidden"], n_res, l, 1, dtype)
                pairs = allocate_pair_cache(dims, n_res, l, pair_dtype)
                rows.append({"n_res": n_res, "n_frames": l, "singles_bytes": cache.nbytes(),
                             "singles_formula_bytes": formula, "singles_dtype": str(dtype).removeprefix("torch."),
                             "static_bytes": cache.static_nbytes(), "pairs_bytes": pairs["bytes"],
                             "pairs_formula_bytes": pair_cache_nbytes(dims["n_blocks"], dims["c_z"], n_res, l, 1,
                                                                      pair_dtype),
                             "pairs_rss_increase_bytes": pairs["rss_increase_bytes"],
                             "pairs_dtype": str(pair_dtype).removeprefix("torch.")})
        log.info("N=%d: %d appends in %.1f s", n_res, recorded[-1], time.perf_counter() - tic)
    return rows


def analytic_grid(settings: dict, dims: dict, dtype: torch.dtype) -> list[dict]:
    """Formula sizes over the grid; pair caches within the budget are allocated for real as a check."""
    cfg = settings["kv_cache"]
    rows = []
    for n_res, n_frames in itertools.product(sorted(cfg["n_res"]), sorted(cfg["n_frames"])):
        singles = kv_cache_nbytes(dims["n_blocks"], dims["n_heads"], dims["c_hidden"], n_res, n_frames, 1, dtype)
        pairs = pair_cache_nbytes(dims["n_blocks"], dims["c_z"], n_res, n_frames, 1, dtype)
        row = {"n_res": n_res, "n_frames": n_frames, "singles_bytes": singles, "pairs_bytes": pairs,
               "ratio": pairs / singles, "pairs_allocated_bytes": None, "pairs_rss_increase_bytes": None}
        if pairs <= cfg["pair_budget_bytes"]:
            real = allocate_pair_cache(dims, n_res, n_frames, dtype)
            row["pairs_allocated_bytes"], row["pairs_rss_increase_bytes"] = real["bytes"], real["rss_increase_bytes"]
        rows.append(row)
    return rows


def exponents(rows: list[dict], key: str) -> dict:
    """Log-log slopes of rows[key] in L (at each N) and in N (at each L), where >= 2 points exist."""
    out = {"in_L": {}, "in_N": {}}
    for axis, fixed, name in (("n_frames", "n_res", "in_L"), ("n_res", "n_frames", "in_N")):
        for value in sorted({r[fixed] for r in rows}):
            pts = [(r[axis], r[key]) for r in rows if r[fixed] == value and r.get(key)]
            if len({x for x, _ in pts}) >= 2:
                out[name][str(value)] = round(loglog_slope(*zip(*pts)), 4)
    return out


def plot(measured: list[dict], grid: list[dict], dims: dict, dtype_name: str, path: Path) -> None:
    """Bytes vs L, one colour per N: formula lines (solid singles, dashed pairs), measured markers on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    all_n = sorted({r["n_res"] for r in grid} | {r["n_res"] for r in measured})
    colours = dict(zip(all_n, plt.cm.tab10.colors))
    series = [(grid, "singles_bytes", "pairs_bytes", "pairs_allocated_bytes"),
              (measured, "singles_formula_bytes", "pairs_formula_bytes", "pairs_bytes")]
    for rows, singles_key, pairs_key, real_pairs_key in series:
        for n_res in sorted({r["n_res"] for r in rows}):
            pts = sorted((r for r in rows if r["n_res"] == n_res), key=lambda r: r["n_frames"])
            ls = [r["n_frames"] for r in pts]
            ax.plot(ls, [r[singles_key] for r in pts], "-", color=colours[n_res], label=f"N={n_res}")
            ax.plot(ls, [r[pairs_key] for r in pts], "--", color=colours[n_res])
            real = [(r["n_frames"], r[real_pairs_key]) for r in pts if r[real_pairs_key]]
            if real:
                ax.plot(*zip(*real), "s", mfc="none", color=colours[n_res])
            if rows is measured:
                ax.plot(ls, [r["singles_bytes"] for r in pts], "o", color=colours[n_res])
    ax.set(xscale="log", yscale="log", xlabel="frames in context L", ylabel="cache bytes (all blocks, B = 1)")
    ax.set_title(f"singles KV cache (solid) vs per-frame pair cache (dashed); {dims['n_blocks']} blocks, "
                 f"H x C = {dims['n_heads']} x {dims['c_hidden']}, c_z = {dims['c_z']}", fontsize=8)
    ax.text(0.01, 0.99, f"lines: formula (grid N: {dtype_name}; small N: dtype as measured)\n"
                        "o: real model cache (StarMD.append, fp32 CPU); squares: pair cache allocated for real",
            transform=ax.transAxes, va="top", fontsize=7)
    ax.legend(fontsize=7, loc="lower right", title="colour", title_fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args, settings, started = start_benchmark(make_parser(__doc__.split("\n")[0]), argv, SCHEMA)
    cfg = settings["kv_cache"]
    dtype = DTYPES[cfg["dtype"]]
    dims = model_dims(settings)
    measured = measure_singles(settings, dims, dtype)
    grid = analytic_grid(settings, dims, dtype)
    rollouts = [timed_rollout(model_kwargs=settings["demo_model"],
                                 feature_dims=settings["feature_dims"], n_res=cfg["rollout_n_res"], n_frames=l,
                                 steps=cfg["rollout_steps"], seed=settings["seed"], threads=settings["threads"])
                for l in sorted(cfg["rollout_n_frames"])]
    for r in rollouts:
        r.pop("frame_s")
    big = max(grid, key=lambda r: (r["n_res"], r["n_frames"]))
    per_block = dims["n_blocks"]
    headline = {"n_res": big["n_res"], "n_frames": big["n_frames"], "dtype": cfg["dtype"],
                "singles_bytes": big["singles_bytes"], "pairs_bytes": big["pairs_bytes"],
                "singles_bytes_per_block": big["singles_bytes"] // per_block,
                "pairs_bytes_per_block": big["pairs_bytes"] // per_block, "ratio": big["ratio"],
                "ratio_formula": f"N c_z / (2 H C) = {big['n_res']} x {dims['c_z']} / (2 x {dims['n_heads']} x "
                                 f"{dims['c_hidden']})", "paper": PAPER}
    records = ([{"n_residues": r["n_res"], "n_frames": r["n_frames"], "kind": "analytic",
                 "singles_bytes": r["singles_bytes"], "pairs_bytes": r["pairs_bytes"]} for r in grid]
               + [{"n_residues": r["n_res"], "n_frames": r["n_frames"], "kind": "measured",
                   "singles_bytes": r["singles_bytes"], "pairs_bytes": r["pairs_bytes"]} for r in measured])
    results = {
        "model_dims": dims,
        "measured": measured,
        "measured_equals_formula": all(r["singles_bytes"] == r["singles_formula_bytes"] and
                                       r["pairs_bytes"] == r["pairs_formula_bytes"] for r in measured),
        "grid": grid,
        "exponents": {"singles_measured": exponents(measured, "singles_bytes"),
                      "pairs_measured": exponents(measured, "pairs_bytes"),
                      "singles_analytic": exponents(grid, "singles_bytes"),
                      "pairs_analytic": exponents(grid, "pairs_bytes"),
                      "pairs_allocated": exponents(grid, "pairs_allocated_bytes")},
        "headline": headline,
        "rollout_peak_memory": rollouts,
        "rollout_peak_memory_model": "demo_model (random init), CPU fp32; increase of resident memory over the level before the rollout",
        "records": records,
    }
    write_result(args.out_json, benchmark="kv_cache", settings=settings, results=results, started=started)
    plot(measured, grid, dims, cfg["dtype"], args.out_png)
    log.info("N=%d L=%d: singles %.3g B, pairs %.3g B, ratio %.1f", big["n_res"], big["n_frames"],
             big["singles_bytes"], big["pairs_bytes"], big["ratio"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
