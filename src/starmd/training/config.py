"""The `training` config section as a typed, validated dataclass.

Keys match `schemas/training.schema.yaml` one to one; an unknown key or a wrong type is an error naming the key, so a
typo in config.yaml cannot silently train with a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from starmd.config import dataclass_section

# Keys that may change between a run and its resume without changing what is learned (logging cadence, I/O).
RESUMABLE_KEYS = frozenset({"steps", "log_every", "val_every", "checkpoint_every", "num_workers", "progress_bar",
                            "max_nonfinite", "activation_checkpointing"})


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    steps: int = 1000  # optimizer steps
    batch_size: int = 2  # windows per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    num_frames: int = 8  # L: frames per window (L context + L noisy targets in one block-causal pass)
    strides: list[int] = field(default_factory=lambda: [1, 2, 4])  # in stored frames; Delta-t = stride * dt_ps
    crop_size: int = 256  # residues; longer proteins get a random contiguous crop
    centre: str = "per_frame"  # "per_frame" or "first_frame": which CA centroid is subtracted
    t_min: float = 0.01  # target diffusion times lie in [t_min, 1]
    t_sampling: str = "uniform"  # "uniform" on [t_min, 1] or "log_uniform" (t = t_min^(1 - u)): more small-t targets
    tau_max: float = 0.1  # contextual noise tau ~ U[0, tau_max] on context frames; 0 switches it off
    context_window: int = 0  # each frame sees only the K most recent context frames (0 = all; 1 = Markovian)
    train_first_target: bool = True  # target 0 of a window has no context (never so at inference); False = no loss
    rot_loss_weight: float = 1.0
    rot_loss_t_min: float = 0.0  # rotation loss only for targets with t above this (FrameDiff: 0.2); 0 = all
    trans_loss_weight: float = 1.0
    dist_loss_weight: float = 0.0  # auxiliary pair-distance loss over dist_loss_atoms (FrameDiff-style); 0 = off
    dist_loss_atoms: str = "backbone"  # "backbone" (N, CA, C; FrameDiff) or "ca"
    dist_loss_cutoff: float = 6.0  # Angstrom: only pairs closer than this in the clean frame
    dist_loss_t_max: float = 0.25  # only target frames with t below this (near-clean predictions)
    dist_loss_on: str = "estimate"  # "estimate" (the denoiser's x0) or "mean" (the network's m; differs with a step law)
    collective_loss_weight: float = 0.0  # x0 translation error projected on the window's softest ANM modes; 0 = off
    collective_modes: int = 8  # how many (starmd.geometry.elastic.anm_modes of the window's first clean frame)
    chain_transport: bool = False  # step law only: the x0 estimate's rotations turn with the local CA trace, as in
    # rollout.chain_transport, so the learned rotation width is what the chain's bending does not explain
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr) or "constant", both after linear warmup
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999
    bf16: bool = True  # bf16 autocast; only ever applied on CUDA
    activation_checkpointing: bool = False  # recompute each diffusion block in backward (memory for ~1/3 more time)
    log_every: int = 10
    val_every: int = 100
    val_samples: int = 16  # fixed validation windows (same for every evaluation)
    checkpoint_every: int = 100
    max_nonfinite: int = 5  # K non-finite steps in a row stop the run
    num_workers: int = 0  # DataLoader worker processes per rank
    progress_bar: bool = False  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "num_frames", "crop_size", "log_every", "val_every",
                    "checkpoint_every", "max_nonfinite", "collective_modes")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"training.{key} must be >= 1, got {getattr(self, key)}")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ValueError(f"training.strides must be a non-empty list of ints >= 1, got {self.strides}")
        if self.centre not in ("per_frame", "first_frame"):
            raise ValueError(f"training.centre must be 'per_frame' or 'first_frame', got {self.centre!r}")
        if self.dist_loss_atoms not in ("backbone", "ca"):
            raise ValueError(f"training.dist_loss_atoms must be 'backbone' or 'ca', got {self.dist_loss_atoms!r}")
        if self.dist_loss_on not in ("estimate", "mean"):
            raise ValueError(f"training.dist_loss_on must be 'estimate' or 'mean', got {self.dist_loss_on!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"training.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"training.t_min must be in (0, 1), got {self.t_min}")
        if self.t_sampling not in ("uniform", "log_uniform"):
            raise ValueError(f"training.t_sampling must be 'uniform' or 'log_uniform', got {self.t_sampling!r}")
        if not 0 <= self.tau_max < 1:
            raise ValueError(f"training.tau_max must be in [0, 1), got {self.tau_max}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"training.ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.betas) != 2:
            raise ValueError(f"training.betas must have 2 entries, got {self.betas}")
        for key in ("val_samples", "num_workers", "warmup_steps", "context_window", "collective_loss_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"training.{key} must be >= 0, got {getattr(self, key)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingConfig":
        """Build from a config section, rejecting unknown keys and values of the wrong type by name."""
        d = dataclass_section(cls, d, "training")
        defaults = cls()
        for key, value in d.items():
            expected = type(getattr(defaults, key))
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValueError(f"training.{key} must be {expected.__name__}, got {value!r}")
        d = {k: (float(v) if type(getattr(defaults, k)) is float else v) for k, v in d.items()}
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
