"""AdamW, the warmup + cosine/constant learning-rate schedule, and the EMA of the weights."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from starmd.training.config import TrainingConfig


class WarmupSchedule:
    """lr multiplier: linear warmup over `warmup_steps`, then constant or cosine decay to `min_lr_ratio` at `steps`.

    A class rather than a lambda so LambdaLR can checkpoint it.
    """

    def __init__(self, cfg: TrainingConfig) -> None:
        self.warmup, self.steps, self.kind, self.floor = cfg.warmup_steps, cfg.steps, cfg.schedule, cfg.min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min((step - self.warmup) / max(self.steps - self.warmup, 1), 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> tuple[torch.optim.Optimizer,
                                                                             torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, WarmupSchedule(cfg))


def build_ema(model: torch.nn.Module, cfg: TrainingConfig) -> AveragedModel:
    """EMA copy of the (unwrapped) model; its weights are the ones rollout uses. Buffers are averaged too."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
