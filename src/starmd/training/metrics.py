"""metrics.jsonl (one JSON object per logged step, appended) and the concise console log line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from starmd.io import atomic_path


class MetricsLog:
    """Append-only JSONL owned by rank 0.

    On resume the entries after the checkpoint's step are dropped (they were logged by the killed run after its last
    checkpoint and will be logged again), so a resumed run's history has each step once.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not a JSON object with `step` is an error naming it."""
    path = Path(path)
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not a JSON object ({exc})") from exc
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}:{i}: expected a JSON object with key 'step'")
            records.append(record)
    return records


def memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def format_line(record: dict[str, Any]) -> str:
    parts = " ".join(f"{k}={v:.4f}" for k, v in sorted(record["parts"].items()))
    return (f"step {record['step']:>7d} | loss {record['loss']:.4f} ({parts}) | lr {record['lr']:.2e} | "
            f"{record['frames_per_s']:.1f} frames/s {record['tokens_per_s']:.0f} tok/s | "
            f"mem {record['memory_mb']:.0f} MB | skipped {record['nonfinite_total']}")
