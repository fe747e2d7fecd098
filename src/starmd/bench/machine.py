"""What a benchmark number was measured on: CPU model, GPU (if any), library versions and thread counts.

Absolute times only mean something together with this; ratios measured in one run on one machine are the figures
we quote.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import re
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def describe_machine() -> dict:
    """JSON-ready description of this machine and the torch build the numbers come from."""
    cuda = torch.cuda.is_available()
    out = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import openmm

        out["openmm"] = openmm.__version__
    except ImportError:
        out["openmm"] = None
    return out


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the kernel (glibc malloc_trim), so the resident memory left
    over from an earlier measurement does not absorb the next one's allocations."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc is not None and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


def reset_peak_rss() -> bool:
    """Release freed memory, then reset the kernel's high-water mark of resident memory (Linux >= 4.0: write 5 to
    /proc/self/clear_refs), so VmHWM afterwards is the peak of what follows. False where the kernel refuses (some
    sandboxes): VmHWM is then the peak since the process started."""
    release_freed_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident memory of this process in bytes: current (VmRSS) or peak since start/last reset (VmHWM)."""
    match = re.search(rf"^{field}:\s*(\d+)\s*kB$", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_STATUS} has no {field} line; peak-memory benchmarks need Linux /proc")
    return int(match.group(1)) * 1024
