"""The training loop in one CPU process: CLI end to end, resume, gradient accumulation, the non-finite guard."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from starmd.diffusion import SE3Diffuser
from starmd.io import sha256sum
from starmd.training import cli, plot
from starmd.training.checkpoint import load_checkpoint
from starmd.training.config import TrainingConfig
from starmd.training.dataset import FrameWindowDataset
from starmd.training.distributed import DistEnv
from starmd.training.loop import NonFiniteLoss, Trainer
from training_data import TINY_MODEL, make_two_proteins

TRAINING = {"steps": 4, "batch_size": 2, "num_frames": 3, "strides": [1, 2], "crop_size": 12, "log_every": 1,
            "val_every": 2, "val_samples": 2, "checkpoint_every": 2, "warmup_steps": 1, "lr": 1e-3}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    return make_two_proteins(tmp_path_factory.mktemp("proteins"))


def _argv(files, run_dir: Path, training: dict, val: bool = True) -> list[str]:
    frames, features = files
    argv = ["--frames", *map(str, frames), "--features", *map(str, features), "--run-dir", str(run_dir),
            "--config-json", json.dumps({"training": training, "model": TINY_MODEL})]
    if val:
        argv += ["--val-frames", str(frames[0]), "--val-features", str(features[0])]
    return argv


def test_cli_trains_checkpoints_logs_and_resumes(files, tmp_path):
    run = tmp_path / "run"
    assert cli.main(_argv(files, run, TRAINING)) == 0
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert final["step"] == 4
    # every hyperparameter is stored, defaults included: the checkpoint rebuilds its network after a default changes
    stored = final["config"]["model"]
    assert {k: stored[k] for k in TINY_MODEL} == TINY_MODEL
    assert stored["c_relative_time"] == 0 and stored["target_anchor"] == "previous" and stored["rbf_max"] == 20.0
    assert final["config"]["training"]["tau_max"] == 0.1  # defaults filled in and stored for rollout
    assert final["config"]["features"] == {"c_s": 8, "c_z": 4}
    model = cli.build_model(final["config"], 8, 4)
    model.load_state_dict(final["model"])  # rollout can rebuild the network from the checkpoint alone
    ema = {k.removeprefix("module."): v for k, v in final["ema"].items() if k.startswith("module.")}
    assert ema.keys() == final["model"].keys()
    assert any(not torch.equal(ema[k], final["model"][k]) for k in ema)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and set(r["parts"]) == {"rot", "trans"} for r in records)
    assert all(r["loss"] == pytest.approx(r["parts"]["rot"] + r["parts"]["trans"]) for r in records)
    assert "val_loss" in records[1] and "val_loss" in records[3] and "val_loss" not in records[0]
    assert records[0]["frames_per_s"] > 0 and records[0]["tokens_per_s"] > records[0]["frames_per_s"]
    assert (run / "metrics.jsonl").read_text() == (run / "checkpoints" / "metrics.jsonl").read_text()

    # the figure of the loss curve
    assert plot.main(["--metrics", str(run / "metrics.jsonl"), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"

    # rerunning the same command continues from last.pt: extending `steps` trains only the new steps
    assert cli.main(_argv(files, run, {**TRAINING, "steps": 6})) == 0
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]

    # a changed science setting is refused instead of silently mixing two runs
    last = run / "checkpoints" / "last.pt"
    digest = sha256sum(last)
    with pytest.raises(ValueError, match=r"last\.pt: training config keys \['tau_max'\] differ from the run being "
                                         r"resumed"):
        cli.main(_argv(files, run, {**TRAINING, "tau_max": 0.0}))
    with pytest.raises(ValueError, match=r"^training: unknown key\(s\) \['bogus'\]"):
        cli.main(_argv(files, run, {**TRAINING, "bogus": 1}))
    assert sha256sum(last) == digest and not list(run.glob("checkpoints.superseded-*"))  # refused, untouched

    # --restart-if-changed (what the Snakemake rule passes: it reruns train exactly when params or inputs changed)
    # moves the other experiment's checkpoints aside, never deleting them, and trains from step 0
    assert cli.main([*_argv(files, run, {**TRAINING, "tau_max": 0.0}), "--restart-if-changed"]) == 0
    [superseded] = run.glob("checkpoints.superseded-*")
    assert load_checkpoint(superseded / "last.pt")["step"] == 6
    restarted = load_checkpoint(run / "checkpoints" / "final.pt")
    assert restarted["step"] == 4 and restarted["config"]["training"]["tau_max"] == 0.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # same config and same files: resume as before (a requeued job), nothing moved aside
    assert cli.main([*_argv(files, run, {**TRAINING, "tau_max": 0.0, "steps": 5}), "--restart-if-changed"]) == 0
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 5
    assert len(list(run.glob("checkpoints.superseded-*"))) == 1


def test_rewritten_input_file_is_another_experiment(files, tmp_path):
    """A regenerated frames file (new mtime) must not be resumed into: Snakemake reruns train for it."""
    run = tmp_path / "run"
    assert cli.main(_argv(files, run, TRAINING, val=False)) == 0
    frames = files[0][0]
    st = frames.stat()
    try:
        os.utime(frames, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(ValueError, match=r"was trained on different input files \(changed, added or removed: \["):
            cli.main(_argv(files, run, {**TRAINING, "steps": 5}, val=False))
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4  # refused, untouched
        assert cli.main([*_argv(files, run, {**TRAINING, "steps": 5}, val=False), "--restart-if-changed"]) == 0
    finally:
        os.utime(frames, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 5
    [superseded] = run.glob("checkpoints.superseded-*")
    assert load_checkpoint(superseded / "final.pt")["step"] == 4


def _trainer(files, run_dir: Path, **training) -> Trainer:
    cfg = TrainingConfig.from_dict({**TRAINING, "val_samples": 0, **training})
    ds = FrameWindowDataset(frames=files[0], features=files[1], num_frames=cfg.num_frames, strides=cfg.strides,
                            crop_size=cfg.crop_size, centre=cfg.centre, seed=cfg.seed)
    torch.manual_seed(0)
    config = {"training": cfg.to_dict(), "model": TINY_MODEL, "diffusion": {}}
    model = cli.build_model(config, 8, 4).double()
    return Trainer(model=model, diffuser=SE3Diffuser(), cfg=cfg, config=config, train_data=ds, val_data=None,
                   run_dir=run_dir, env=DistEnv(0, 0, 1, torch.device("cpu")))


def test_gradient_accumulation_equals_the_full_batch(files, tmp_path):
    full = _trainer(files, tmp_path / "full", batch_size=2, grad_accum=1, steps=2)
    accum = _trainer(files, tmp_path / "accum", batch_size=1, grad_accum=2, steps=2)
    full.fit()
    accum.fit()
    for (name, a), b in zip(full.model.state_dict().items(), accum.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def _poison(src: Path, dst: Path) -> Path:
    """A copy of a frames file whose every replica has coordinates of ~1e30 A: finite, so the file passes the input
    checks (a NaN would be refused before training starts), but every loss on it overflows."""
    dst.write_bytes(src.read_bytes())
    rng = np.random.default_rng(0)
    with h5py.File(dst, "r+") as f:
        for rep in f["replicas"].values():
            rep["translations"][...] = rng.normal(0, 1e30, rep["translations"].shape)
    return dst


def test_nonfinite_steps_are_skipped_counted_and_stop_after_k(files, tmp_path):
    bad = _poison(files[0][0], tmp_path / "pa_A.h5")
    mixed = ([bad, files[0][1]], files[1])
    trainer = _trainer(mixed, tmp_path / "mixed", steps=6, batch_size=1, max_nonfinite=6, checkpoint_every=100)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    # exactly the steps whose window came from the poisoned protein were skipped
    expected = sum(trainer.train_data.draw(step)["protein"] == 0 for step in range(6))
    assert 0 < expected < 6
    assert trainer.nonfinite_total == expected
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    # K in a row: the run stops with a clear error and last.pt keeps the last good state
    run = tmp_path / "stop"
    good = _trainer(files, run, steps=2)
    good.fit()
    last = run / "checkpoints" / "last.pt"
    digest = sha256sum(last)
    poisoned = _trainer(([bad, _poison(files[0][1], tmp_path / "pb_B.h5")], files[1]), run, steps=8,
                        max_nonfinite=3)
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row .*last\.pt holds the last good state"):
        poisoned.fit()
    assert sha256sum(last) == digest and load_checkpoint(last)["step"] == 2


def test_truncated_last_pt_is_moved_aside_and_training_resumes_from_the_newest_good_checkpoint(files, tmp_path,
                                                                                                caplog):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    assert cli.main(_argv(files, run, TRAINING, val=False)) == 0  # steps 1-4: last.pt and final.pt at step 4
    last = ckpts / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a copy cut short / a full disk

    with caplog.at_level(logging.WARNING, logger="starmd.training.loop"):
        assert cli.main(_argv(files, run, {**TRAINING, "steps": 6}, val=False)) == 0
    [corrupt] = ckpts.glob("last.pt.corrupt-*")
    assert corrupt.read_bytes() == data[: len(data) // 2]  # moved aside, never deleted
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert re.fullmatch(rf"{re.escape(str(last))}: not a loadable starmd checkpoint, truncated\? \(.+\); moved it to "
                        rf"last\.pt\.corrupt-\d{{8}}T\d{{6}}Z, resuming from final\.pt", warning), warning
    assert load_checkpoint(ckpts / "final.pt")["step"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # resumed at step 4, not restarted

    # nothing loadable at all: start over, saying so
    for name in ("last.pt", "final.pt"):
        (ckpts / name).write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="starmd.training.loop"):
        assert cli.main(_argv(files, run, TRAINING, val=False)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(w.endswith(", starting this run from step 0") for w in warnings), warnings
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
