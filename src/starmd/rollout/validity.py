"""Per-frame CA validity recorded during rollout (Str2Str/ConfDiff definitions, DESIGN.md section 5).

Kept here only because `starmd.evaluation.metrics` does not provide it yet; the rollout stores it so long-horizon
stability can be plotted without re-reading trajectories.
"""

from __future__ import annotations

import torch

CA_CLASH_A = 3.0  # any non-adjacent CA pair closer than this is a clash
CA_BREAK_A = 4.2  # any adjacent CA pair farther than this is a chain break (max seen in MD: 4.19 A)


def ca_validity(ca: torch.Tensor) -> torch.Tensor:
    """[..., N, 3] CA positions (Angstrom) -> [...] bool: no clash (|i-j| > 1, d < 3.0 A) and no break (d > 4.2 A)."""
    n = ca.shape[-2]
    d = torch.cdist(ca, ca)  # [..., N, N]
    idx = torch.arange(n, device=ca.device)
    non_adjacent = (idx[:, None] - idx[None, :]).abs() > 1  # [N, N]
    clash = ((d < CA_CLASH_A) & non_adjacent).flatten(-2).any(-1)
    breaks = (ca[..., 1:, :] - ca[..., :-1, :]).norm(dim=-1) > CA_BREAK_A  # [..., N-1]
    return ~(clash | breaks.any(-1))
