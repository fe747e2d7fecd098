"""The training loop: DDP, gradient accumulation, clipping, EMA, non-finite guard, validation, checkpoint/resume.

Run directory layout (`run_dir`):
  checkpoints/last.pt        latest state, rewritten every `checkpoint_every` steps, on SIGUSR1/SIGTERM and at the end
  checkpoints/metrics.jsonl  live metrics history (training state: truncated to last.pt's step on resume)
  checkpoints/final.pt       written once, when all steps are done (the Snakemake output)
  metrics.jsonl              copy of the history, written once at the end (the Snakemake output)
last.pt and the live history are not rule outputs on purpose: Snakemake deletes a job's outputs before rerunning it,
which would throw away the state a requeued job resumes from.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from starmd.errors import InputError
from starmd.io import atomic_path
from starmd.model import model_hparams
from starmd.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from starmd.training.config import RESUMABLE_KEYS, TrainingConfig
from starmd.training.dataset import FrameWindowDataset, StepBatchSampler, collate
from starmd.training.distributed import (DistEnv, all_reduce_mean, all_reduce_sum, any_rank, barrier,
                                         gather_objects)
from starmd.training.losses import compute_loss
from starmd.training.metrics import MetricsLog, format_line, memory_mb
from starmd.training.optim import build_ema, build_optimizer
from starmd.training.signals import PreemptionFlag, Preempted, ignore_in_worker

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """K optimizer steps in a row had a non-finite loss or gradient norm; last.pt is the last good state."""


class StaleRun(ValueError):
    """last.pt belongs to another experiment: its config or its input files differ from this run's."""


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move a batch; floating tensors take the model's dtype (float64 in the exactness tests)."""
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, non_blocking=True)
            for k, v in batch.items()}


def _check_resumable(ckpt_config: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """A run dir may only be resumed with the same science and the same input files; logging/step-count keys may
    change. Raises StaleRun naming what differs."""
    for section in ("model", "diffusion"):
        old, new = ckpt_config.get(section), config.get(section)
        if section == "model" and old is not None and new is not None:  # runs from before defaults were stored
            old, new = model_hparams(old), model_hparams(new)
        if old != new:
            raise StaleRun(f"{path}: was trained with a different {section!r} config; resume needs the same "
                           f"config (use a new run directory or delete {path.parent})")
    old, new = ckpt_config.get("training", {}), config.get("training", {})
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        raise StaleRun(f"{path}: training config keys {changed} differ from the run being resumed; only "
                       f"{sorted(RESUMABLE_KEYS)} may change (use a new run directory or delete {path.parent})")
    changed_files = _changed_files(ckpt_config.get("data") or {}, config.get("data") or {})
    if changed_files:
        raise StaleRun(f"{path}: was trained on different input files (changed, added or removed: {changed_files}); "
                       f"use a new run directory or delete {path.parent}")


def _changed_files(old: dict[str, list[dict]], new: dict[str, list[dict]]) -> list[str]:
    """Paths whose fingerprint (starmd.io.file_fingerprint) differs between two `data` sections, or is in one only."""
    a, b = ({f["path"]: f for files in d.values() for f in files} for d in (old, new))
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


class Trainer:
    """Owns the model, its DDP wrapper, EMA, optimizer and schedule for one run directory."""

    def __init__(self, *, model: torch.nn.Module, diffuser: Any, cfg: TrainingConfig, config: dict[str, Any],
                 train_data: FrameWindowDataset, val_data: FrameWindowDataset | None, run_dir: str | Path,
                 env: DistEnv, restart_if_changed: bool = False) -> None:
        self.cfg, self.config, self.env, self.diffuser = cfg, config, env, diffuser
        self.restart_if_changed = restart_if_changed
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_path, self.final_path = self.ckpt_dir / "last.pt", self.ckpt_dir / "final.pt"
        self.history = MetricsLog(self.ckpt_dir / "metrics.jsonl")
        self.model = model.to(env.device)
        self.dtype = next(self.model.parameters()).dtype
        self.ddp = (DistributedDataParallel(self.model, device_ids=[env.device] if env.device.type == "cuda" else None)
                    if env.world_size > 1 else self.model)
        self.ema = build_ema(self.model, cfg)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    # --- state -----------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Collective (gathers every rank's RNG state): call on all ranks."""
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "nonfinite": {"total": self.nonfinite_total, "in_a_row": self.nonfinite_in_a_row},
                "rng": gather_objects(rng_state()), "world_size": self.env.world_size, "config": self.config}

    def save(self, *paths: Path) -> None:
        state = self.state()
        if self.env.is_main:
            for path in paths:
                save_checkpoint(path, state)
        barrier()

    def resume_or_seed(self) -> None:
        """Continue from last.pt (or final.pt, see newest_good_checkpoint) if the run dir has one, else seed every RNG
        from (seed, rank)."""
        found = self.newest_good_checkpoint()
        if found is None:
            if self.env.is_main:  # rows of a run that left no loadable checkpoint (killed before the first, corrupt)
                self.history.truncate_after(0)
            torch.manual_seed(self.cfg.seed * 1000 + self.env.rank)
            return
        path, ckpt = found
        try:
            _check_resumable(ckpt["config"], self.config, path)
        except StaleRun as exc:
            if not self.restart_if_changed:
                raise
            self.supersede(exc)
            torch.manual_seed(self.cfg.seed * 1000 + self.env.rank)
            return
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scheduler.lr_lambdas[0].steps = self.cfg.steps  # `steps` may be extended on resume
        self.step = int(ckpt["step"])
        self.nonfinite_total = int(ckpt["nonfinite"]["total"])
        self.nonfinite_in_a_row = int(ckpt["nonfinite"]["in_a_row"])
        if ckpt["world_size"] == self.env.world_size:
            set_rng_state(ckpt["rng"][self.env.rank])
        else:
            log.warning("%s was written by %d ranks, now %d: RNG states reseeded (data order is unaffected)",
                        path, ckpt["world_size"], self.env.world_size)
            torch.manual_seed(self.cfg.seed * 1000 + self.env.rank + self.step)
        if self.env.is_main:
            self.history.truncate_after(self.step)
            log.info("resumed %s at step %d", path, self.step)

    def newest_good_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """(path, contents) of last.pt, or of final.pt when last.pt cannot be loaded (truncated by a full disk, a
        copy cut short); None when neither exists. An unloadable file is moved aside (`{name}.corrupt-<UTC time>`,
        never deleted) with a warning, so training resumes from the newest good state or starts over, saying so."""
        found, corrupt = None, []
        for path in (self.last_path, self.final_path):
            if path.exists():
                try:
                    found = path, load_checkpoint(path)  # CPU: RNG states stay CPU tensors; weights move on load
                    break
                except InputError as exc:
                    corrupt.append(exc)
        barrier()  # every rank has looked before rank 0 moves anything
        if self.env.is_main:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            then = f"resuming from {found[0].name}" if found else "starting this run from step 0"
            for exc in corrupt:
                dest = Path(f"{exc.path}.corrupt-{stamp}")
                Path(exc.path).rename(dest)
                log.warning("%s: %s; moved it to %s, %s", exc.path, exc.problem, dest.name, then)
        barrier()
        return found

    def supersede(self, reason: StaleRun) -> None:
        """Move checkpoints/ of another experiment aside (never delete: it may be days of GPU time) and start afresh."""
        barrier()  # every rank has read last.pt before rank 0 moves it
        if self.env.is_main:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = self.run_dir / f"checkpoints.superseded-{stamp}"
            n = 1
            while dest.exists():
                n += 1
                dest = self.run_dir / f"checkpoints.superseded-{stamp}-{n}"
            self.ckpt_dir.rename(dest)
            log.warning("%s; moved %s to %s and starting this run from step 0", reason, self.ckpt_dir, dest)
        barrier()

    # --- one optimizer step --------------------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Forward/backward every micro-batch, then clip, step (or skip if non-finite), update EMA and the schedule."""
        self.ddp.train()
        parts_sum: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            batch = _to_device(batch, self.env.device, self.dtype)
            sync = contextlib.nullcontext() if (i == len(micro_batches) - 1 or self.ddp is self.model) \
                else self.ddp.no_sync()
            with sync:
                out = compute_loss(self.ddp, self.diffuser, batch, self.cfg)
                (out["loss"] / len(micro_batches)).backward()
            for k, v in out.items():
                parts_sum[k] = parts_sum.get(k, 0) + v.detach().float() / len(micro_batches)
        keys = sorted(parts_sum)
        reduced = all_reduce_mean(torch.stack([parts_sum[k] for k in keys]))
        parts = dict(zip(keys, reduced.tolist()))
        # Gradients are identical on every rank after DDP's all-reduce, so the norm (and the skip decision) is too.
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        finite = math.isfinite(grad_norm) and math.isfinite(parts["loss"])
        if finite:
            self.optimizer.step()
            self.ema.update_parameters(self.model)
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            raise NonFiniteLoss(f"{self.nonfinite_in_a_row} steps in a row (up to step {self.step}) had a non-finite "
                                f"loss or gradient norm; stopping. {self.last_path} holds the last good state "
                                f"(check the data, lower training.lr or raise training.grad_clip)")
        return {"parts": parts, "grad_norm": grad_norm, "lr": lr, "finite": finite}

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss of the EMA weights over the fixed validation windows (shared out across ranks)."""
        if self.val_data is None or self.cfg.val_samples == 0:
            return None
        model = self.ema.module
        model.eval()
        ids = list(range(self.env.rank, self.cfg.val_samples, self.env.world_size))
        total = torch.zeros(2, dtype=torch.float64, device=self.env.device)
        for start in range(0, len(ids), self.cfg.batch_size):
            chunk = ids[start:start + self.cfg.batch_size]
            batch = _to_device(collate([self.val_data[i] for i in chunk]), self.env.device, self.dtype)
            loss = compute_loss(model, self.diffuser, batch, self.cfg)["loss"]
            total += torch.stack([loss.double() * len(chunk), torch.tensor(len(chunk), device=self.env.device)])
        total = all_reduce_sum(total)
        return float(total[0] / total[1])

    # --- the run -------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to cfg.steps (resuming from last.pt), checkpointing; returns the last metrics record."""
        cfg, env = self.cfg, self.env
        self.resume_or_seed()
        sampler = StepBatchSampler(start_step=self.step, steps=cfg.steps, batch_size=cfg.batch_size,
                                   grad_accum=cfg.grad_accum, rank=env.rank, world_size=env.world_size)
        # Own generator: creating the loader iterator must not consume the global RNG (resume would drift).
        loader = DataLoader(self.train_data, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                            worker_init_fn=ignore_in_worker, generator=torch.Generator().manual_seed(cfg.seed),
                            pin_memory=env.device.type == "cuda")
        batches = iter(loader)
        bar = None
        if cfg.progress_bar and env.is_main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        record: dict[str, Any] = {"step": self.step}
        frames = tokens = 0
        busy = 0.0  # seconds spent loading and training since the last log line (validation and saving excluded)
        with PreemptionFlag() as preempt:
            while self.step < cfg.steps:
                tic = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.grad_accum)]
                frames_local = sum(b["rots"].shape[0] * b["rots"].shape[1] for b in micro)
                tokens_local = sum(int(b["res_mask"].sum()) * b["rots"].shape[1] for b in micro)
                frames += frames_local * env.world_size
                tokens += tokens_local * env.world_size
                out = self.train_step(micro)
                busy += time.perf_counter() - tic
                if bar is not None:
                    bar.update(1)
                record = {"step": self.step}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record.update(loss=out["parts"].pop("loss"), parts=out["parts"], lr=out["lr"],
                                  grad_norm=out["grad_norm"], frames_per_s=frames / busy,
                                  tokens_per_s=tokens / busy, memory_mb=memory_mb(env.device),
                                  nonfinite_total=self.nonfinite_total)
                    frames = tokens = 0
                    busy = 0.0
                    if env.is_main:
                        log.info(format_line(record))
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    val = self.validation_loss()
                    if val is not None:
                        record["val_loss"] = val
                        if env.is_main:
                            log.info("step %7d | val_loss (EMA) %.4f", self.step, val)
                if len(record) > 1 and env.is_main:
                    self.history.append(record)
                # no periodic checkpoint inside a non-finite streak: last.pt stays the state after a good step
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps and self.nonfinite_in_a_row == 0:
                    self.save(self.last_path)
                if any_rank(preempt.requested is not None, env.device):
                    self.save(self.last_path)
                    raise Preempted(preempt.requested or signal.SIGTERM, self.step)
        if bar is not None:
            bar.close()
        self.save(self.last_path, self.final_path)
        if env.is_main:
            with atomic_path(self.run_dir / "metrics.jsonl") as tmp:
                shutil.copyfile(self.history.path, tmp)
        return record
