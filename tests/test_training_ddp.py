"""A real 2-process gloo DDP run equals one process over the same global batch (float64, CPU).

The raw averaged gradients of one step (float64, torch.multiprocessing workers), and the parameters after two full
steps of the real CLI launched by `torchrun --nproc-per-node 2` (AdamW, clipping, EMA, checkpoint with gathered RNG
states) against `python -m starmd train` with the doubled per-process batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from starmd.diffusion import SE3Diffuser
from starmd.training import cli
from starmd.training.checkpoint import load_checkpoint
from starmd.training.config import TrainingConfig
from starmd.training.dataset import FrameWindowDataset, StepBatchSampler, collate
from starmd.training.loop import _to_device
from starmd.training.losses import compute_loss
from training_data import TINY_MODEL, make_two_proteins

GLOBAL_BATCH = 4
TRAINING = {"steps": 2, "num_frames": 3, "strides": [1, 2], "crop_size": 12, "log_every": 1, "val_every": 2,
            "val_samples": 3, "checkpoint_every": 100, "warmup_steps": 1, "lr": 1e-3, "grad_clip": 0.5}


def _setup(files, batch_size: int) -> tuple[TrainingConfig, dict, FrameWindowDataset, torch.nn.Module]:
    cfg = TrainingConfig.from_dict({**TRAINING, "batch_size": batch_size})
    data = FrameWindowDataset(frames=files[0], features=files[1], num_frames=cfg.num_frames, strides=cfg.strides,
                              crop_size=cfg.crop_size, centre=cfg.centre, seed=cfg.seed)
    config = {"training": cfg.to_dict(), "model": TINY_MODEL, "diffusion": {}}
    torch.manual_seed(0)
    return cfg, config, data, cli.build_model(config, 8, 4).double()


def _step0_grads(model: torch.nn.Module, wrapped: torch.nn.Module, cfg, data, rank: int, world: int) -> dict:
    ids = next(iter(StepBatchSampler(start_step=0, steps=1, batch_size=cfg.batch_size, grad_accum=1, rank=rank,
                                     world_size=world)))
    batch = _to_device(collate([data[i] for i in ids]), torch.device("cpu"), torch.float64)
    compute_loss(wrapped, SE3Diffuser(), batch, cfg)["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _worker(rank: int, world: int, port: int, files, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg, config, data, model = _setup(files, GLOBAL_BATCH // world)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        grads = _step0_grads(model, ddp, cfg, data, rank, world)
        if rank == 0:
            torch.save(grads, out / "ddp_grads.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_gloo_gradients_equal_single_process(tmp_path):
    files = make_two_proteins(tmp_path / "proteins")
    mp.spawn(_worker, args=(2, _free_port(), files, tmp_path), nprocs=2, join=True)

    cfg, config, data, model = _setup(files, GLOBAL_BATCH)
    single = _step0_grads(model, model, cfg, data, 0, 1)
    ddp = torch.load(tmp_path / "ddp_grads.pt")
    assert single.keys() == ddp.keys() and len(single) > 10
    assert max(g.abs().max() for g in single.values()) > 1e-3  # a real signal, not all zeros
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-6, atol=1e-9, msg=name)


def _train_cli(files, run_dir: Path, nproc: int) -> subprocess.CompletedProcess:
    frames, features = files
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    config = {"training": {**TRAINING, "batch_size": GLOBAL_BATCH // nproc}, "model": TINY_MODEL}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "starmd", "train", "--frames", *map(str, frames), "--features",
                           *map(str, features), "--val-frames", str(frames[0]), "--val-features", str(features[0]),
                           "--run-dir", str(run_dir), "--config-json", json.dumps(config)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_cli_equals_single_process(tmp_path):
    files = make_two_proteins(tmp_path / "proteins")
    for nproc in (2, 1):
        done = _train_cli(files, tmp_path / f"run{nproc}", nproc)
        assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(tmp_path / "run1" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "run2" / "checkpoints" / "final.pt")
    assert a["world_size"] == 1 and b["world_size"] == 2 and len(b["rng"]) == 2
    for key in ("model", "ema"):
        for name, value in a[key].items():  # float32, summed in a different order: agree to rounding
            torch.testing.assert_close(b[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    val_a, val_b = (json.loads(p.read_text().splitlines()[-1])["val_loss"]
                    for p in (tmp_path / "run1" / "metrics.jsonl", tmp_path / "run2" / "metrics.jsonl"))
    assert val_a == pytest.approx(val_b, rel=1e-5)  # the validation windows are shared out and summed over ranks
    torch.manual_seed(0)  # the CLI seeds the initial weights with training.seed (0)
    init = cli.build_model({"model": TINY_MODEL}, 8, 4).state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in a["model"].items())  # training moved the weights
