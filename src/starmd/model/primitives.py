"""Layers shared by the STAR-MD network: OpenFold-style `Linear` with named inits, and the fp32 geometry guard.

The named inits follow AlphaFold2's supplement (1.11.4): residual branches end in a "final" (zero) layer, so every
block starts as the identity, and gates start open ("gating": W = 0, b = 1).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from starmd.geometry import Rigid

# Std of a unit normal truncated at +-2, used to undo the shrinkage of truncation (LeCun/He "fan-in" inits).
_TRUNC_STD = 0.87962566103423978
INITS = ("default", "relu", "glorot", "gating", "final")


def _fan_in_trunc_normal_(weight: torch.Tensor, scale: float) -> None:
    std = math.sqrt(scale / weight.shape[1]) / _TRUNC_STD
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Linear(nn.Linear):
    """nn.Linear whose init is named where the layer is built (OpenFold convention).

    default: LeCun (truncated normal, fan-in); relu: He; glorot: Xavier uniform; gating: W = 0, b = 1;
    final: W = 0, b = 0. Biases start at zero except for "gating".
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, init: str = "default") -> None:
        if init not in INITS:
            raise ValueError(f"Linear init must be one of {INITS}, got {init!r}")
        super().__init__(in_dim, out_dim, bias=bias)
        with torch.no_grad():
            if init == "default":
                _fan_in_trunc_normal_(self.weight, 1.0)
            elif init == "relu":
                _fan_in_trunc_normal_(self.weight, 2.0)
            elif init == "glorot":
                nn.init.xavier_uniform_(self.weight)
            else:  # gating, final
                self.weight.zero_()
            if bias:
                self.bias.fill_(1.0 if init == "gating" else 0.0)


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotation arithmetic runs in at least fp32 (float64 stays float64 for the exactness tests)."""
    return torch.promote_types(dtype, torch.float32)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast so rotation matmuls are not downcast to bf16/fp16 (cf. OpenFold's hand-written matmuls)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def rigid_full_precision(rigid: Rigid) -> Rigid:
    return rigid.to(geometry_dtype(rigid.dtype))
