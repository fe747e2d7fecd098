"""Training activation memory vs N, L and batch, with and without activation checkpointing, and its extrapolation to
the paper setup: exact bytes of the tensors autograd keeps for backward in one block-causal loss pass of the
paper-scale model (CPU, fp32), a fitted model bytes = B 2L (a N^2 + b N) + c, checked against every measurement.

Counted: every distinct storage packed by autograd (torch.autograd.graph.saved_tensors_hooks), parameters excluded;
with checkpointing also the inputs each checkpointed block keeps (they are not packed through the hooks). The peak
during backward with checkpointing adds one block's activations (its recompute): per-block bytes are measured by
attributing each saved tensor to the block running when it was saved.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from starmd.bench.cli import make_parser, start_benchmark
from starmd.bench.results import save_figure, write_result
from starmd.bench.synthetic import build_model
from starmd.bench.workloads import synthetic_batch
from starmd.diffusion import SE3Diffuser
from starmd.training.config import TrainingConfig
from starmd.training.losses import compute_loss

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "benchmarks.schema.yaml"
log = logging.getLogger("bench.memory")
GIB = 2**30


def _nbytes(x: object) -> list[tuple[int, int]]:
    """(storage pointer, storage bytes) of every tensor in a (nested) block argument."""
    if isinstance(x, torch.Tensor):
        return [(x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())]
    if isinstance(x, (tuple, list)):
        return [p for y in x for p in _nbytes(y)]
    return [p for y in vars(x).values() for p in _nbytes(y)] if hasattr(x, "__dict__") else []


def saved_bytes(model: torch.nn.Module, batch: dict, cfg: TrainingConfig) -> dict:
    """Bytes autograd keeps after one loss forward: total, per block, outside the blocks (distinct storages)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    owner: dict[int, tuple[int, str]] = {}  # storage -> (bytes, where)
    where = ["outside"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in owner:
            owner[ptr] = (t.untyped_storage().nbytes(), where[0])
        return t

    def enter(i: int):
        def hook(_module, args):
            where[0] = f"block{i}"
            if model.activation_checkpointing:  # checkpoint keeps its inputs for the recompute
                for ptr, n in _nbytes(args):
                    if ptr not in params:
                        owner.setdefault(ptr, (n, "checkpoint_inputs"))
        return hook

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(model.blocks)]
    handles += [b.register_forward_hook(lambda *_: where.__setitem__(0, "outside")) for b in model.blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = compute_loss(model, SE3Diffuser(), batch, cfg)["loss"]
    finally:
        for h in handles:
            h.remove()
    del loss
    per_block = {}
    for n, w in owner.values():
        per_block[w] = per_block.get(w, 0) + n
    blocks = [v for k, v in per_block.items() if k.startswith("block")]
    return {"total_bytes": sum(per_block.values()), "outside_bytes": per_block.get("outside", 0),
            "checkpoint_input_bytes": per_block.get("checkpoint_inputs", 0),
            "max_block_bytes": max(blocks) if blocks else 0}


def fit(rows: list[dict], key: str) -> tuple[list[float], float]:
    """Least squares bytes = a B 2L N^2 + b B 2L N + c; returns ([a, b, c], max relative error over the rows)."""
    x = np.array([[r["batch_size"] * 2 * r["n_frames"] * r["n_res"] ** 2, r["batch_size"] * 2 * r["n_frames"] *
                   r["n_res"], 1.0] for r in rows])
    y = np.array([r[key] for r in rows], dtype=float)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return coef.tolist(), float(np.max(np.abs(x @ coef - y) / y))


def predict(coef: list[float], b: int, n_frames: int, n_res: int) -> float:
    return coef[0] * b * 2 * n_frames * n_res**2 + coef[1] * b * 2 * n_frames * n_res + coef[2]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    tokens_pairs = [r["batch_size"] * 2 * r["n_frames"] * r["n_res"] ** 2 for r in rows]
    ax.loglog(tokens_pairs, [r["no_checkpointing"]["total_bytes"] / 2**20 for r in rows], "o", label="no checkpointing")
    ax.loglog(tokens_pairs, [r["checkpointing_peak_bytes"] / 2**20 for r in rows], "s",
              label="checkpointing (+ one block recompute)")
    ax.set(xlabel="B 2L N^2", ylabel="saved activations (MiB, fp32)", title="training activation memory (CPU)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args, settings, started = start_benchmark(make_parser(__doc__.split("\n")[0]), argv, SCHEMA)
    cfg_m = settings["memory"]
    gen = torch.Generator().manual_seed(settings["seed"])
    model = build_model(settings["paper_model"], settings["feature_dims"], settings["seed"]).train()
    rows = []
    for b in cfg_m["batch_size"]:
        for n_frames in cfg_m["n_frames"]:
            for n_res in cfg_m["n_res"]:
                batch = synthetic_batch(n_res, n_frames, b, settings["feature_dims"], gen)
                cfg = TrainingConfig(num_frames=n_frames, batch_size=b)
                row = {"batch_size": b, "n_frames": n_frames, "n_res": n_res}
                for flag, name in ((False, "no_checkpointing"), (True, "checkpointing")):
                    model.activation_checkpointing = flag
                    row[name] = saved_bytes(model, batch, cfg)
                row["checkpointing_peak_bytes"] = (row["checkpointing"]["total_bytes"]
                                                   + row["no_checkpointing"]["max_block_bytes"])
                log.info("B=%d L=%d N=%d: %.1f MiB without, %.1f MiB peak with checkpointing", b, n_frames, n_res,
                         row["no_checkpointing"]["total_bytes"] / 2**20, row["checkpointing_peak_bytes"] / 2**20)
                rows.append(row)
    flat = [{**r, "without": r["no_checkpointing"]["total_bytes"], "with": r["checkpointing_peak_bytes"]}
            for r in rows]
    paper = cfg_m["paper"]
    models = {}
    for key in ("without", "with"):
        coef, err = fit(flat, key)
        fp32 = predict(coef, paper["batch_size"], paper["n_frames"], paper["n_res"])
        models[key] = {"coef_a_b_c": coef, "max_relative_error": err, "paper_fp32_gib": fp32 / GIB,
                       "paper_bf16_gib": fp32 / 2 / GIB,
                       "fits_80gb_bf16": fp32 / 2 < 80e9}
        log.info("%s checkpointing: fit max rel. error %.3f; paper setup %.1f GiB fp32, %.1f GiB bf16", key, err,
                 fp32 / GIB, fp32 / 2 / GIB)
    write_result(args.out_json, benchmark="training_memory", settings=settings,
                 results={"rows": rows, "fit": models, "paper": paper}, started=started)
    plot(rows, args.out_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
