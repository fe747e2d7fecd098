"""SO(3) maps on rotation matrices: exp/log (rotation vectors), quaternions, hat/vee, uniform sampling.

Rotation matrices `[..., 3, 3]` are the canonical representation everywhere in starmd; quaternions (w, x, y, z)
with w >= 0 are only a storage/interchange format. Everything works in any float dtype (float64 for the exactness
tests) and is differentiable where the map is smooth.
"""

from __future__ import annotations

import torch

_SMALL = 1e-6


def hat(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> [..., 3, 3] skew-symmetric matrix with hat(v) @ w == cross(v, w)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def vee(m: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] skew-symmetric -> [..., 3] (inverse of `hat`; antisymmetrises first)."""
    return 0.5 * torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], dim=-1
    )


def rotvec_to_rotmat(v: torch.Tensor) -> torch.Tensor:
    """Exponential map: rotation vector (axis * angle, [..., 3]) -> rotation matrix [..., 3, 3] (Rodrigues).

    Uses Taylor expansions of sin(a)/a and (1-cos a)/a^2 near zero so gradients stay finite at the identity.
    """
    angle2 = (v * v).sum(-1, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
    small = angle2 < 1e-8
    # sqrt of a masked value: sqrt's backward at 0 is inf, and inf * 0 would poison the gradient with NaN.
    safe = torch.where(small, torch.ones_like(angle2), angle2).sqrt()
    a = torch.where(small, 1 - angle2 / 6 + angle2**2 / 120, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - angle2 / 24 + angle2**2 / 720, (1 - torch.cos(safe)) / safe**2)
    k = hat(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def rotmat_to_rotvec(r: torch.Tensor) -> torch.Tensor:
    """Logarithm map: rotation matrix [..., 3, 3] -> rotation vector [..., 3] with angle in [0, pi].

    Goes through the quaternion, which is numerically stable at every angle including pi (where the matrix
    antisymmetric part vanishes).
    """
    q = rotmat_to_quat(r)  # w >= 0 so the angle 2*atan2(|xyz|, w) is in [0, pi]
    w, xyz = q[..., :1], q[..., 1:]
    n = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, w)
    small = n < _SMALL
    # angle / sin(angle/2) -> 2 as angle -> 0 (and |xyz| = sin(angle/2))
    scale = torch.where(small, 2.0 / w.clamp_min(_SMALL) * (1 + n**2 / (6 * w.clamp_min(_SMALL) ** 2)),
                        angle / torch.where(small, torch.ones_like(n), n))
    return xyz * scale


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (w, x, y, z) [..., 4] -> rotation matrix [..., 3, 3]; the quaternion is normalised first."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix [..., 3, 3] -> unit quaternion (w, x, y, z) [..., 4] with w >= 0.

    Shepperd's method: pick the largest of the four candidate denominators per element, so no branch divides by
    a small number.
    """
    m = r
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - t, m[..., 0, 1] + m[..., 1, 0],
                         m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - t,
                         m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                         1 + 2 * m[..., 2, 2] - t], -1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    diag = torch.stack([1 + t, 1 + 2 * m[..., 0, 0] - t, 1 + 2 * m[..., 1, 1] - t, 1 + 2 * m[..., 2, 2] - t], -1)
    best = diag.argmax(-1, keepdim=True)  # [..., 1]
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotation(shape: tuple[int, ...], generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Haar-uniform rotations [*shape, 3, 3] (normalised Gaussian quaternions)."""
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
    return quat_to_rotmat(q)
