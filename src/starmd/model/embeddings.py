"""Scalar embeddings: diffusion time, physical time (log-time Fourier features) and distance RBFs.

Physical time spans four decades (10 ps strides to 100 ns rollouts), so it is embedded through log(1 + time / unit)
with continuous Fourier features: any stride, including ones never seen in training, gets a well-defined embedding
(no lookup table).
"""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer/DDPM sinusoids of a scalar: [...] -> [..., dim] (frequencies 1 ... 1/max_period)."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=x.dtype, device=x.device) / half)
    args = x.unsqueeze(-1) * freqs  # [..., half]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def diffusion_time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Continuous diffusion time t in [0, 1] -> [..., dim]; t is scaled by 1000 as in DDPM/FrameDiff."""
    return sinusoidal_embedding(t * 1000.0, dim)


def log_time_embedding(time_ps: torch.Tensor, dim: int, unit_ps: float = 10.0) -> torch.Tensor:
    """Physical time (ps, >= 0) -> [..., dim] Fourier features of u = log(1 + time / unit).

    unit_ps = 10 ps is ATLAS' frame spacing (ConfRover counts time in 10 ps units). Frequencies are geometric in
    [1/8, 8] rad per unit of u, which resolves both a factor 1.1 in stride (u differs by ~0.05 at 10 ns) and the
    whole 100 ns range (u <= 9.2) without wrapping.
    """
    if dim % 2:
        raise ValueError(f"log-time embedding dim must be even, got {dim}")
    u = torch.log1p(time_ps / unit_ps)
    freqs = torch.exp(torch.linspace(math.log(1 / 8), math.log(8), dim // 2, dtype=u.dtype, device=u.device))
    args = u.unsqueeze(-1) * freqs  # [..., dim / 2]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def rbf(d: torch.Tensor, n: int, d_max: float) -> torch.Tensor:
    """Gaussian radial basis of distances [...] -> [..., n]; centres evenly spaced on [0, d_max]."""
    centres = torch.linspace(0.0, d_max, n, dtype=d.dtype, device=d.device)
    width = d_max / n
    return torch.exp(-(((d.unsqueeze(-1) - centres) / width) ** 2))
