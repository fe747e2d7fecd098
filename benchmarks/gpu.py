"""GPU figures (run where CUDA is present; not part of `snakemake bench`): the paper-scale singles KV cache at N=500,
L=400 filled for real by StarMD.append under bf16 autocast and checked against the formula, a real per-frame pair
cache on the GPU up to a memory budget, rollout speed (200 and 20 reverse steps, eager and rollout.compile) and
per-frame time vs L, and bf16 training-step throughput and peak memory vs L. Random-init models (speed and memory
do not depend on the weights).

The JSON is rewritten after every section, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from starmd.bench.results import loglog_slope, save_figure, write_result
from starmd.bench.synthetic import build_model, helix_frames, synthetic_features
from starmd.bench.workloads import timed_rollout, timed_training
from starmd.model import kv_cache_nbytes, pair_cache_nbytes

PAPER_MODEL = {"c_s": 256, "c_z": 128, "n_blocks": 8, "n_heads": 8, "c_hidden": 32, "no_heads_ipa": 8,
               "c_hidden_ipa": 16, "no_qk_points": 4, "no_v_points": 8, "c_time": 128, "c_phys_time": 64, "n_rbf": 32}
SCALES = {"demo_model": {}, "paper_model": PAPER_MODEL}
FEATURES = {"c_s": 384, "c_z": 128}
_S_PER_DAY = 86400.0


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _allocated(dev: torch.device) -> int | None:
    return torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None


def kv_section(dev: torch.device, n_res: int, n_frames: int, record_at: list[int], pair_budget_bytes: float,
               seed: int) -> dict:
    """Append n_frames frames of a paper-scale model (bf16 autocast) and record the cache; then grow a real bf16
    pair cache [N, N, c_z] per frame and block until the next frame would exceed the budget."""
    model = build_model(PAPER_MODEL, FEATURES, seed, dev)
    single, pair = synthetic_features(n_res, FEATURES, torch.Generator().manual_seed(seed), dev)
    frame = helix_frames(n_res).to(device=dev).unsqueeze(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = _allocated(dev)
    rows, append_s = [], []
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        cache = model.init_cache(single[None], pair[None], torch.ones(1, n_res, device=dev),
                                 torch.tensor([100.0], device=dev))
        for l in range(1, n_frames + 1):
            _sync(dev)
            tic = time.perf_counter()
            model.append(cache, frame, torch.tensor([0.05], device=dev), torch.tensor([100.0 * l], device=dev))
            _sync(dev)
            append_s.append(time.perf_counter() - tic)
            if l in record_at:
                dtype = cache.keys[0].dtype
                rows.append({"n_frames": l, "singles_bytes": cache.nbytes(), "dtype": str(dtype),
                             "singles_formula_bytes": kv_cache_nbytes(8, 8, 32, n_res, l, 1, dtype),
                             "cuda_allocated_over_start_bytes": None if base is None else _allocated(dev) - base,
                             "pairs_formula_bytes": pair_cache_nbytes(8, 128, n_res, l, 1, torch.bfloat16)})
    out = {"n_res": n_res, "rows": rows, "append_s": append_s, "cuda_peak_during_appends_bytes":
           None if base is None else torch.cuda.max_memory_allocated(dev) - base}
    del cache
    _empty_cache(dev)
    per_frame = 8 * n_res * n_res * 128 * 2
    held: list[torch.Tensor] = []
    while (len(held) // 8 + 1) * per_frame <= pair_budget_bytes:
        held.extend(torch.zeros(n_res, n_res, 128, dtype=torch.bfloat16, device=dev) for _ in range(8))
    out["pairs_allocated"] = {"n_frames": len(held) // 8, "bytes": sum(t.untyped_storage().nbytes() for t in held),
                              "budget_bytes": pair_budget_bytes,
                              "n_frames_needed": n_frames,
                              "bytes_needed": pair_cache_nbytes(8, 128, n_res, n_frames, 1, torch.bfloat16),
                              "gpu_memory_bytes": torch.cuda.get_device_properties(dev).total_memory
                              if dev.type == "cuda" else None}
    del held
    _empty_cache(dev)
    return out


def _empty_cache(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def speed_section(dev: torch.device, n_res_list: list[int], steps_list: list[int], n_frames: int, seed: int
                  ) -> list[dict]:
    rows = []
    for scale, kwargs in SCALES.items():
        for n_res in n_res_list:
            common = dict(model_kwargs=kwargs, feature_dims=FEATURES, n_res=n_res, seed=seed,
                          threads=torch.get_num_threads(), device=dev.type, bf16=True)
            timed_rollout(n_frames=1, steps=1, **common)  # warm-up (kernels, allocator)
            for compiled in (False, True):  # eager vs rollout.compile (CUDA graphs), side by side
                for steps in steps_list:
                    run = timed_rollout(n_frames=n_frames, steps=steps, compiled=compiled, **common)
                    # a compiled run's first frames include its compilations: time the frames after them
                    frames = run["frame_s"][2:] if compiled else run["frame_s"]
                    per_frame = sum(frames) / len(frames)
                    rows.append({"scale": scale, "n_res": n_res, "steps": steps, "compiled": compiled,
                                 "s_per_frame": per_frame, "ns_per_day_at_100ps": 0.1 / per_frame * _S_PER_DAY})
    return rows


def context_section(dev: torch.device, n_res: int, n_frames: int, steps: int, seed: int) -> dict:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    run = timed_rollout(PAPER_MODEL, FEATURES, n_res, n_frames, steps, seed, torch.get_num_threads(),
                        device=dev.type, bf16=True)
    frame_s = run["frame_s"]
    half = len(frame_s) // 2
    return {"n_res": n_res, "steps": steps, "frame_s": frame_s,
            "exponent_in_L_second_half": loglog_slope(range(half + 1, len(frame_s) + 1), frame_s[half:]),
            "peak_cache_bytes": run["peak_cache_bytes"], "cuda_max_allocated_bytes": run.get("cuda_max_allocated_bytes")}


def training_section(dev: torch.device, n_res: int, frames_list: list[int], seed: int) -> list[dict]:
    rows = []
    for scale, kwargs in SCALES.items():
        for n_frames in frames_list:
            _empty_cache(dev)
            try:
                run = timed_training(kwargs, FEATURES, n_res, n_frames, 1, 3, seed, torch.get_num_threads(),
                                     device=dev.type, bf16=True)
                rows.append({"scale": scale, **run})
            except torch.cuda.OutOfMemoryError as exc:  # a measured outcome at this size, not a failure
                rows.append({"scale": scale, "n_res": n_res, "n_frames": n_frames, "oom": str(exc)[:200]})
                _empty_cache(dev)
    return rows


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    kv = doc.get("kv")
    if kv:
        ls = [r["n_frames"] for r in kv["rows"]]
        axes[0].plot(ls, [r["singles_bytes"] for r in kv["rows"]], "o-", label="singles cache (measured, bf16)")
        axes[0].plot(ls, [r["pairs_formula_bytes"] for r in kv["rows"]], "--", label="pair cache (formula, bf16)")
        pa = kv["pairs_allocated"]
        axes[0].plot([pa["n_frames"]], [pa["bytes"]], "s", label="pair cache allocated (budget)")
        axes[0].set(xscale="log", yscale="log", xlabel="L", ylabel="bytes", title=f"KV cache, N={kv['n_res']}")
        axes[0].legend(fontsize=7)
    ctx = doc.get("context")
    if ctx:
        axes[1].plot(range(1, len(ctx["frame_s"]) + 1), ctx["frame_s"], ".", ms=2)
        axes[1].set(xlabel="frame index l (context length)", ylabel="s per frame",
                    title=f"paper model, N={ctx['n_res']}, {ctx['steps']} steps/frame")
    speed = doc.get("speed")
    if speed:
        labels = [f"{r['scale'].removesuffix('_model')} N={r['n_res']} {r['steps']}st"
                  + (" compiled" if r.get("compiled") else "") for r in speed]
        axes[2].bar(range(len(speed)), [r["ns_per_day_at_100ps"] for r in speed])
        axes[2].set_xticks(range(len(speed)), labels, rotation=90, fontsize=6)
        axes[2].set(yscale="log", ylabel="ns/day (100 ps frames)", title="rollout speed")
    for ax in axes:
        ax.title.set_fontsize(9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-json", required=True, type=Path)
    parser.add_argument("--out-png", required=True, type=Path)
    parser.add_argument("--n-res", type=int, default=500)
    parser.add_argument("--n-frames", type=int, default=400)
    parser.add_argument("--pair-budget-gb", type=float, default=80.0)
    parser.add_argument("--speed-n-res", type=int, nargs="+", default=[13, 100, 500])
    parser.add_argument("--speed-steps", type=int, nargs="+", default=[200, 20])
    parser.add_argument("--train-n-res", type=int, default=256)
    parser.add_argument("--train-n-frames", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cuda (the point); cpu only to smoke-test the script")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    dev = torch.device(args.device)
    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k not in ("out_json", "out_png")}
    doc: dict = {}
    sections = [
        ("kv", lambda: kv_section(dev, args.n_res, args.n_frames, sorted({10, 50, 200, args.n_frames}),
                                  args.pair_budget_gb * 1e9, args.seed)),
        ("speed", lambda: speed_section(dev, args.speed_n_res, args.speed_steps, 4, args.seed)),
        ("context", lambda: context_section(dev, args.n_res, args.n_frames, 2, args.seed)),
        ("training", lambda: training_section(dev, args.train_n_res, args.train_n_frames, args.seed)),
    ]
    for name, fn in sections:
        tic = time.perf_counter()
        doc[name] = fn()
        doc.setdefault("section_s", {})[name] = time.perf_counter() - tic
        write_result(args.out_json, benchmark="gpu", settings=settings, results=doc, started=started)
        print(f"{name}: {time.perf_counter() - tic:.1f} s", json.dumps(doc[name], default=str)[:600], flush=True)
    plot(doc, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
