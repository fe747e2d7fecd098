"""Make the PyPI `openfold==0.0.1` sdist build and run on today's stack, without editing installed files.

Why this exists: that sdist is a 2022 source snapshot. Its setup.py imports `scripts.utils.get_nvidia_cc`, which the
sdist does not ship (`scripts/install_openfold.sh` puts a one-line `scripts/utils.py` re-exporting
`get_nvidia_cc` below on the build's PYTHONPATH). Its fused in-place softmax extension `attn_core_inplace_cuda` does
not build with current torch/nvcc (C++14, sm_37) and without CUDA is a C++ stub that raises when called, so the
installer builds OpenFold without it. And `openfold.data.templates` reads `np.object` (removed in NumPy 1.24).

`import_openfold()` is the one place that imports OpenFold for starmd. It applies exactly two runtime fixes first:
- `np.object` is aliased to `object` (what it always was) if NumPy no longer has it;
- `TorchSoftmaxKernel` stands in for the extension: registered as the `attn_core_inplace_cuda` module when none is
  installed, and set as that module global in the two OpenFold modules that call it
  (`openfold.model.structure_module`, `openfold.utils.kernel.attention_core`), so a compiled copy from another
  install is never used either. It does the same in-place softmax (and its backward) with plain torch ops on any
  device: numerically `torch.softmax`; on GPU it costs one extra [*, H, N, N] buffer compared with the fused kernel.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

import numpy as np
import torch

KERNEL_MODULE = "attn_core_inplace_cuda"
# Modules that bind the compiled extension as a module global at import time (openfold 0.0.1).
KERNEL_USERS = ("openfold.model.structure_module", "openfold.utils.kernel.attention_core")


def get_nvidia_cc() -> tuple[None, str]:
    """Stand-in for OpenFold's `scripts.utils.get_nvidia_cc` (setup.py picks CUDA arch flags from it).

    We never compile the CUDA kernel (see module docstring), so no compute capability is reported; the second item
    is the error message the original returns in that case.
    """
    return None, "starmd builds openfold without its CUDA kernel (starmd.features.openfold_compat)"


class TorchSoftmaxKernel:
    """Drop-in for the `attn_core_inplace_cuda` extension: in-place softmax over the last dim, in plain torch."""

    @staticmethod
    def forward_(logits: torch.Tensor, rows: int, cols: int) -> None:
        """logits [*, cols] (rows = prod(*)) is overwritten with softmax(logits, -1)."""
        _check_rows_cols(logits, rows, cols)
        logits.copy_(torch.softmax(logits, dim=-1))

    @staticmethod
    def backward_(probs: torch.Tensor, grad_out: torch.Tensor, values: torch.Tensor,
                  rows: int, cols_output: int, cols_values: int) -> None:
        """probs [*, Q, K] (softmax output of o = probs @ values) is overwritten with dL/dlogits.

        grad_out [*, Q, C] = dL/do, values [*, K, C]; the softmax Jacobian gives P * (dP - sum(dP * P)).
        """
        _check_rows_cols(probs, rows, cols_output)
        if grad_out.shape[-1] != cols_values:
            raise ValueError(f"grad_out has {grad_out.shape[-1]} value channels, expected {cols_values}")
        d_probs = torch.matmul(grad_out, values.transpose(-1, -2))  # [*, Q, K]
        probs.copy_(probs * (d_probs - (d_probs * probs).sum(dim=-1, keepdim=True)))


def _check_rows_cols(t: torch.Tensor, rows: int, cols: int) -> None:
    if t.shape[-1] != cols or t.numel() != rows * cols:
        raise ValueError(f"kernel got a tensor of shape {tuple(t.shape)}, expected {rows} rows of {cols}")


def import_openfold() -> ModuleType:
    """Import `openfold` with the two fixes above applied; raise ImportError saying how to install it."""
    if "object" not in np.__dict__:
        np.object = object  # NumPy 1.24 removed the alias; openfold/data/templates.py still uses it.
    if KERNEL_MODULE not in sys.modules and importlib.util.find_spec(KERNEL_MODULE) is None:
        sys.modules[KERNEL_MODULE] = TorchSoftmaxKernel  # what `importlib.import_module(KERNEL_MODULE)` returns
    try:
        with warnings.catch_warnings():  # biopython 1.81 (pinned for it) announces the SCOPData deprecation
            warnings.filterwarnings("ignore", message="The 'Bio.Data.SCOPData' module will be deprecated")
            openfold = importlib.import_module("openfold")
            users = [importlib.import_module(name) for name in KERNEL_USERS]
            importlib.import_module("openfold.data.data_pipeline")  # imports Bio.Data.SCOPData
    except ImportError as err:
        raise ImportError(
            f"OpenFold is not importable ({err}). Install it with `bash scripts/install_openfold.sh` "
            "(clusters: envs/openfold.yaml with its post-deploy script); see docs/openfold.md."
        ) from err
    for module in users:
        setattr(module, KERNEL_MODULE, TorchSoftmaxKernel)
    return openfold
