"""The result file every benchmark writes: its numbers plus the machine, the exact command and the settings."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np

from starmd.bench.machine import describe_machine
from starmd.io import atomic_path, write_json

FORMAT_VERSION = 1


def command_line() -> str:
    """The command that is running, as a shell line one can paste to rerun it."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_result(path: str | Path, *, benchmark: str, settings: dict, results: dict, started: float) -> dict:
    """Write {benchmark, machine, command, settings, wall_s, results} atomically; returns the dict written."""
    doc = {"format_version": FORMAT_VERSION, "benchmark": benchmark, "machine": describe_machine(),
           "command": command_line(), "settings": settings, "wall_s": round(time.perf_counter() - started, 2),
           **results}
    write_json(path, doc)
    return doc


def save_figure(fig, path: str | Path) -> None:
    """Lay the figure out (tight_layout) and save it atomically (the format follows the suffix)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip("."))
    plt.close(fig)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x: the exponent p of y ~ x^p."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(np.unique(x)) < 2:
        raise ValueError(f"a log-log slope needs at least two distinct x values, got {x.tolist()}")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
