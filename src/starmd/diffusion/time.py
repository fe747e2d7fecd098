"""Checks shared by the diffusers: diffusion time t in [0, 1] per structure, and a positive reverse step dt."""

from __future__ import annotations

import torch


def as_time(t: torch.Tensor | float, like: torch.Tensor, batch_shape: torch.Size | None = None) -> torch.Tensor:
    """t (float, or tensor broadcastable to batch_shape, e.g. [B, L] for frames [B, L, N]) -> tensor [*batch_shape]
    (t's own shape when batch_shape is None), in like's dtype and device.

    Raises ValueError for t outside [0, 1], non-finite t or a shape that does not broadcast, before any noise is
    drawn.
    """
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if not bool((torch.isfinite(t) & (t >= 0) & (t <= 1)).all()):
        raise ValueError(f"diffusion time t must lie in [0, 1], got range [{t.min().item()}, {t.max().item()}]")
    if batch_shape is None:
        return t
    try:
        return t.expand(batch_shape)
    except RuntimeError as err:
        raise ValueError(f"diffusion time t of shape {tuple(t.shape)} does not broadcast to the batch shape "
                         f"{tuple(batch_shape)}") from err


def check_step(t: torch.Tensor, dt: float) -> None:
    """A reverse step goes from t to t - dt >= 0 (small slack for float round-off in a time grid)."""
    if not dt > 0:
        raise ValueError(f"reverse step dt must be > 0, got {dt}")
    if bool((t - dt < -1e-6).any()):
        raise ValueError(f"reverse step dt={dt} goes below t = 0 (min t {t.min().item()})")


def check_target(t: torch.Tensor, s: float) -> None:
    """An ancestral step goes from every t down to the same earlier time 0 <= s < t."""
    if not (s >= 0 and bool((t > s).all())):
        raise ValueError(f"ancestral step must go to an earlier time 0 <= s < t, got s={s} for t in "
                         f"[{t.min().item()}, {t.max().item()}]")
