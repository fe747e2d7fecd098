"""The memory the SLURM profile asks for per rule (slurm/config.yaml: set-resources over default-resources), so the
estimate can warn before a job is submitted that will be killed for memory."""

from __future__ import annotations

from pathlib import Path

import yaml


def requested_mem_mb(profile: Path, rule: str) -> int | None:
    """mem_mb of `rule` (its set-resources entry, else default-resources); None when the profile sets none."""
    if not profile.is_file():
        raise FileNotFoundError(f"--slurm-profile {profile}: no such file")
    doc = yaml.safe_load(profile.read_text()) or {}
    for section in (doc.get("set-resources", {}).get(rule, {}), doc.get("default-resources", {})):
        if "mem_mb" in section:
            try:
                return int(section["mem_mb"])
            except (TypeError, ValueError):
                raise ValueError(f"{profile}: mem_mb of {rule!r} is {section['mem_mb']!r}, expected an integer "
                                 f"(MB)") from None
    return None
