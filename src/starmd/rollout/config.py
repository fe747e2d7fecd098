"""The `rollout` config section as a validated dataclass; keys match `schemas/rollout.schema.yaml` one to one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from starmd.config import dataclass_section, section_json


@dataclass(frozen=True)
class RolloutConfig:
    n_frames: int = 50  # F: frames generated after the start structure
    delta_t_ps: float = 100.0  # physical time per generated frame
    n_samples: int = 2  # independent trajectories, sampled as one batch
    steps: int = 200  # reverse-diffusion steps per frame (paper: 200)
    t_min: float = 0.01  # reverse diffusion runs from t = 1 to t_min
    time_grid: str = "linear"  # spacing of the steps' diffusion times: "linear" or "log" (geometric, dense near t_min)
    reverse: str = "euler"  # reverse step: "euler" (Euler-Maruyama on the score) or "ancestral" (q(x_s | x_t, x0))
    chain_transport: bool = False  # ancestral only: each residue's rotation turns with its local CA trace
    ca_restraint: float = 0.0  # > 0: translations moved to keep CA-CA bonds at the start's (std in units of 0.05 A)
    peptide_restraint: float = 0.0  # > 0: frames turned to close their peptide bonds (std in AlphaFold2 spreads)
    tau: float = 0.05  # contextual noise (diffusion time) added to each finished frame before it is cached; 0 = off
    context_window: int = 0  # K most recent frames held in the KV cache; 0 = all frames
    seed: int = 0
    use_ema: bool = True  # sample with the EMA weights (else the raw trained weights)
    bf16: bool = False  # bf16 autocast for the network (CUDA only; geometry stays fp32)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    progress_bar: bool = True
    allow_delta_t_extrapolation: bool = False  # the workflow refuses a delta_t_ps outside the trained range otherwise
    checkpoint_every: int = 10  # frames between saves of the partial outputs (resume state); SIGTERM saves at once
    compile: bool = False  # torch.compile the per-frame network call over a preallocated KV cache (CUDA graphs on GPU)

    # keys that may differ when a partial rollout is resumed (they change no frame)
    RESUMABLE = ("progress_bar", "checkpoint_every", "allow_delta_t_extrapolation")

    def __post_init__(self) -> None:
        for key in ("n_frames", "n_samples", "steps", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        if not self.delta_t_ps > 0:
            raise ValueError(f"rollout.delta_t_ps must be > 0 ps, got {self.delta_t_ps}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"rollout.t_min must be in (0, 1), got {self.t_min}")
        if self.time_grid not in ("linear", "log"):
            raise ValueError(f"rollout.time_grid must be 'linear' or 'log', got {self.time_grid!r}")
        if self.reverse not in ("euler", "ancestral"):
            raise ValueError(f"rollout.reverse must be 'euler' or 'ancestral', got {self.reverse!r}")
        if self.chain_transport and self.reverse != "ancestral":
            raise ValueError("rollout.chain_transport needs rollout.reverse: ancestral (it turns the ancestral draws)")
        for key in ("ca_restraint", "peptide_restraint"):
            if getattr(self, key) < 0:
                raise ValueError(f"rollout.{key} must be >= 0 (0 = off), got {getattr(self, key)}")
        if not 0 <= self.tau < 1:
            raise ValueError(f"rollout.tau must be in [0, 1), got {self.tau}")
        if self.context_window < 0:
            raise ValueError(f"rollout.context_window must be >= 0 (0 = all frames), got {self.context_window}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"rollout.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RolloutConfig":
        """Reject unknown keys and wrongly typed values by name (an int is accepted where a float is expected)."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        out = {}
        for key, value in dataclass_section(cls, d, "rollout").items():
            expected = type(defaults[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"rollout.{key} must be {expected.__name__}, got {value!r}")
            out[key] = value
        return cls(**out)

    @classmethod
    def from_json(cls, text: str) -> "RolloutConfig":
        return cls.from_dict(section_json(text, "rollout"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
