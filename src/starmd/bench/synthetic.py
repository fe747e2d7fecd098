"""Random-init models on synthetic proteins: what the memory and speed benchmarks run when no trained checkpoint is
given. Cache sizes and step times depend on the shapes (N, L, model dims), not on the weights or the geometry."""

from __future__ import annotations

import math

import torch

from starmd.geometry import Rigid
from starmd.model import StarMD

# Ideal alpha helix (Pauling): 3.6 residues per turn, 1.5 A rise, CA radius 2.3 A.
_HELIX_TURN_RAD, _HELIX_RISE_A, _HELIX_RADIUS_A = 100.0 * math.pi / 180.0, 1.5, 2.3


def build_model(model_kwargs: dict, feature_dims: dict, seed: int, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> StarMD:
    """StarMD(c_s_in, c_z_in, **model_kwargs) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    model = StarMD(c_s_in=feature_dims["c_s"], c_z_in=feature_dims["c_z"], **model_kwargs)
    return model.to(device=device, dtype=dtype).eval()


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def synthetic_features(n_res: int, feature_dims: dict, generator: torch.Generator,
                       device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal frozen features: single [N, c_s], pair [N, N, c_z]."""
    single = torch.randn(n_res, feature_dims["c_s"], generator=generator).to(device)
    pair = torch.randn(n_res, n_res, feature_dims["c_z"], generator=generator).to(device)
    return single, pair


def helix_frames(n_res: int, dtype: torch.dtype = torch.float32) -> Rigid:
    """Residue frames Rigid [N] of an ideal alpha-helix CA trace (Angstrom); N and C are put on the CA(i-1) and
    CA(i+1) directions (the frame convention needs only the N-CA-C plane)."""
    k = torch.arange(-1, n_res + 1, dtype=torch.float64)
    ca = torch.stack([_HELIX_RADIUS_A * torch.cos(k * _HELIX_TURN_RAD), _HELIX_RADIUS_A * torch.sin(k * _HELIX_TURN_RAD),
                      _HELIX_RISE_A * k], dim=-1)  # [N + 2, 3], with a virtual residue at each end
    frames = Rigid.from_3_points(ca[:-2], ca[1:-1], ca[2:])
    return frames.to(dtype=dtype)
