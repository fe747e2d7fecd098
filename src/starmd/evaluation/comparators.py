"""Trivial baselines scored by the same code as the model, so a metric that cannot rank MD above them is visible.

Baseline A ("noise"): the start structure plus isotropic Gaussian noise whose per-residue size matches the reference
RMSF. Baseline B ("replica"): frames drawn at random, in random order, from the non-reference MD replicas. Both keep
no time order, so only the dynamics metrics can tell them from MD when they match its distribution.
"""

from __future__ import annotations

import numpy as np


def thermal_noise_frames(start_backbone: np.ndarray, rmsf_A: np.ndarray, n_frames: int,
                         rng: np.random.Generator) -> np.ndarray:
    """[n_frames, N, 4, 3]: start backbone [N, 4, 3] + N(0, sigma_i^2) per coordinate, sigma_i = RMSF_i / sqrt(3).

    RMSF is the root mean square of a 3-D displacement, so a per-axis standard deviation RMSF/sqrt(3) gives each
    residue exactly the reference RMSF in expectation; every atom of residue i moves independently with sigma_i.
    """
    sigma = np.asarray(rmsf_A, dtype=np.float64) / np.sqrt(3.0)  # [N]
    noise = rng.normal(size=(n_frames,) + start_backbone.shape) * sigma[None, :, None, None]
    return start_backbone[None] + noise


def replica_frames(ca_pool: list[np.ndarray], backbone_pool: list[np.ndarray], n_frames: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw n_frames (CA [n, N, 3], backbone [n, N, 4, 3]) uniformly from the pooled replica frames, in random order.

    Without replacement when the pool is large enough, with replacement otherwise.
    """
    if not ca_pool:
        raise ValueError("replica baseline needs at least one non-reference replica")
    ca = np.concatenate(ca_pool)
    backbone = np.concatenate(backbone_pool)
    pick = rng.choice(len(ca), n_frames, replace=n_frames > len(ca))
    return ca[pick], backbone[pick]
