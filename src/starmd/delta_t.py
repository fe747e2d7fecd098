"""Which Delta-t (physical time per frame) a configured run trains on, and whether its rollout step lies among them.

The model is told Delta-t as a continuous number, so a rollout between the smallest and largest trained Delta-t is
an interpolation; outside that range it is an extrapolation in time that nothing in training supervised. A workflow
whose rollout step is outside the range is stopped at start (rules/common.smk) unless
`rollout.allow_delta_t_extrapolation` says it is meant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starmd.data.demo import DemoConfig
from starmd.data.mdcath import FRAME_PS as MDCATH_FRAME_PS
from starmd.data.synthetic import SyntheticConfig

# ATLAS saves a frame every 10 ps (Vander Meersche et al. 2024; 10,000 frames per 100 ns replica).
ATLAS_FRAME_INTERVAL_PS = 10.0
# Relative slack when comparing Delta-t values, so 3 x 0.1 ps equals 0.3 ps.
_TOLERANCE = 1e-3


def trained_delta_t_range(strides: Sequence[int], dt_ps: float) -> tuple[float, float]:
    """(min, max) Delta-t in ps seen in training: the strides (in stored frames) times the stored frame spacing."""
    if not strides:
        raise ValueError("training.strides is empty; cannot tell which Delta-t the model is trained on")
    return min(strides) * dt_ps, max(strides) * dt_ps


def in_trained_range(delta_t_ps: float, lo: float, hi: float) -> bool:
    """Whether `delta_t_ps` lies in [lo, hi] up to a 0.1% float slack."""
    return lo * (1 - _TOLERANCE) <= delta_t_ps <= hi * (1 + _TOLERANCE)


def source_frame_interval(config: Mapping[str, Any]) -> tuple[float, str] | None:
    """(spacing in ps of the raw MD frames, where that number comes from) for the configured dataset; None for
    `local` MD whose spacing is not one number known before its files are read (the rollout then warns per
    checkpoint, from the spacing the frames file records)."""
    dataset = config["dataset"]
    if dataset == "atlas":
        return ATLAS_FRAME_INTERVAL_PS, "ATLAS saves every 10 ps"
    if dataset == "mdcath":
        return MDCATH_FRAME_PS, "mdCATH saves every 1 ns"
    if dataset == "local":
        entries = config.get("local", {}).get("proteins") or []
        spacings = {e.get("dt_ps") for e in entries}
        if len(spacings) != 1 or None in spacings or config.get("local", {}).get("manifest"):
            return None
        return float(spacings.pop()), "local.proteins[*].dt_ps"
    default = {"demo": DemoConfig, "synthetic": SyntheticConfig}[dataset].frame_interval_ps  # not filled by validate
    return float(config.get(dataset, {}).get("frame_interval_ps", default)), f"{dataset}.frame_interval_ps"


def check_rollout_delta_t(config: Mapping[str, Any]) -> None:
    """Raise a one-line ValueError naming the keys when `rollout.delta_t_ps` lies outside the Delta-t range
    `training.strides` x `frames.stride` x the dataset's frame spacing, unless `rollout.allow_delta_t_extrapolation`.

    `config` is a whole workflow config with the schema defaults filled in."""
    rollout = config["rollout"]
    if rollout.get("allow_delta_t_extrapolation", False):
        return
    spacing = source_frame_interval(config)
    if spacing is None:
        return
    source_ps, source = spacing
    stored_ps = config["frames"]["stride"] * source_ps
    strides = config["training"]["strides"]
    lo, hi = trained_delta_t_range(strides, stored_ps)
    if not in_trained_range(rollout["delta_t_ps"], lo, hi):
        raise ValueError(
            f"config rollout.delta_t_ps: {rollout['delta_t_ps']:g} ps lies outside the Delta-t the model trains on, "
            f"[{lo:g}, {hi:g}] ps = training.strides {list(strides)} x frames.stride {config['frames']['stride']} "
            f"x {source_ps:g} ps ({source}) (allowed: a delta_t_ps in that range, other strides, or "
            f"rollout.allow_delta_t_extrapolation: true)"
        )
