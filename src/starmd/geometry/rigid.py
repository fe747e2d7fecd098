"""`Rigid`: a batch of SE(3) transforms x -> R x + t, the residue frames of the paper.

One type used by data extraction, the model, diffusion, rollout and evaluation. Like OpenFold's Rigid, every
operation returns a new object and the class behaves like a tensor for shape, indexing and device moves; unlike it,
there is a single representation (rotation matrices) and no mode flags.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from starmd.geometry.so3 import quat_to_rotmat, rotmat_to_quat

_EPS = 1e-8


@dataclass(frozen=True)
class Rigid:
    """rots [..., 3, 3] and trans [..., 3] (Angstrom unless a caller says otherwise)."""

    rots: torch.Tensor
    trans: torch.Tensor

    def __post_init__(self) -> None:
        if self.rots.shape[-2:] != (3, 3) or self.trans.shape[-1] != 3:
            raise ValueError(f"Rigid expects rots [...,3,3] and trans [...,3], got {tuple(self.rots.shape)} and "
                             f"{tuple(self.trans.shape)}")
        if self.rots.shape[:-2] != self.trans.shape[:-1]:
            raise ValueError(f"Rigid batch shapes differ: rots {tuple(self.rots.shape[:-2])} vs trans "
                             f"{tuple(self.trans.shape[:-1])}")

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def identity(cls, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> "Rigid":
        rots = torch.eye(3, dtype=dtype, device=device).expand(*shape, 3, 3).clone()
        return cls(rots, torch.zeros(*shape, 3, dtype=dtype, device=device))

    @classmethod
    def from_3_points(cls, n: torch.Tensor, ca: torch.Tensor, c: torch.Tensor) -> "Rigid":
        """Backbone frame from N, CA, C positions [..., 3] (Gram-Schmidt, OpenFold `from_3_points` convention).

        x axis along C - CA, y axis in the N-CA-C plane (towards N), z = x cross y; origin at CA (AlphaFold2 Alg. 21).
        """
        e0 = c - ca
        e1 = n - ca
        e0 = e0 / (e0.norm(dim=-1, keepdim=True) + _EPS)
        e1 = e1 - e0 * (e0 * e1).sum(-1, keepdim=True)
        e1 = e1 / (e1.norm(dim=-1, keepdim=True) + _EPS)
        e2 = torch.cross(e0, e1, dim=-1)
        return cls(torch.stack([e0, e1, e2], dim=-1), ca)

    @classmethod
    def from_tensor_7(cls, t: torch.Tensor) -> "Rigid":
        """[..., 7] = quaternion (w, x, y, z) + translation -> Rigid."""
        return cls(quat_to_rotmat(t[..., :4]), t[..., 4:])

    def to_tensor_7(self) -> torch.Tensor:
        return torch.cat([rotmat_to_quat(self.rots), self.trans], dim=-1)

    @classmethod
    def from_tensor_4x4(cls, m: torch.Tensor) -> "Rigid":
        return cls(m[..., :3, :3], m[..., :3, 3])

    def to_tensor_4x4(self) -> torch.Tensor:
        out = torch.zeros(*self.shape, 4, 4, dtype=self.dtype, device=self.device)
        out[..., :3, :3] = self.rots
        out[..., :3, 3] = self.trans
        out[..., 3, 3] = 1
        return out

    # --- group operations ---------------------------------------------------------------------------------------
    def compose(self, other: "Rigid") -> "Rigid":
        """self o other: first apply `other`, then `self`."""
        return Rigid(self.rots @ other.rots, (self.rots @ other.trans.unsqueeze(-1)).squeeze(-1) + self.trans)

    def invert(self) -> "Rigid":
        rt = self.rots.transpose(-1, -2)
        return Rigid(rt, -(rt @ self.trans.unsqueeze(-1)).squeeze(-1))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Local -> global for points [..., 3] broadcast against the batch shape."""
        return (self.rots @ x.unsqueeze(-1)).squeeze(-1) + self.trans

    def invert_apply(self, x: torch.Tensor) -> torch.Tensor:
        """Global -> local for points [..., 3]."""
        return (self.rots.transpose(-1, -2) @ (x - self.trans).unsqueeze(-1)).squeeze(-1)

    def scale_translation(self, factor: float) -> "Rigid":
        return Rigid(self.rots, self.trans * factor)

    # --- tensor-like behaviour ----------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.trans.shape[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.trans.dtype

    @property
    def device(self) -> torch.device:
        return self.trans.device

    def __getitem__(self, idx) -> "Rigid":
        if not isinstance(idx, tuple):
            idx = (idx,)
        return Rigid(self.rots[idx + (slice(None), slice(None))], self.trans[idx + (slice(None),)])

    def unsqueeze(self, dim: int) -> "Rigid":
        """Insert a batch dimension (negative `dim` counts from the last batch dimension)."""
        return Rigid(self.rots.unsqueeze(dim if dim >= 0 else dim - 2), self.trans.unsqueeze(dim if dim >= 0 else dim - 1))

    def expand(self, *shape: int) -> "Rigid":
        return Rigid(self.rots.expand(*shape, 3, 3), self.trans.expand(*shape, 3))

    @staticmethod
    def cat(rigids: list["Rigid"], dim: int) -> "Rigid":
        d_r = dim if dim >= 0 else dim - 2
        d_t = dim if dim >= 0 else dim - 1
        return Rigid(torch.cat([r.rots for r in rigids], d_r), torch.cat([r.trans for r in rigids], d_t))

    @staticmethod
    def stack(rigids: list["Rigid"], dim: int) -> "Rigid":
        d_r = dim if dim >= 0 else dim - 2
        d_t = dim if dim >= 0 else dim - 1
        return Rigid(torch.stack([r.rots for r in rigids], d_r), torch.stack([r.trans for r in rigids], d_t))

    def to(self, *args, **kwargs) -> "Rigid":
        return Rigid(self.rots.to(*args, **kwargs), self.trans.to(*args, **kwargs))

    def detach(self) -> "Rigid":
        return Rigid(self.rots.detach(), self.trans.detach())

    def stop_rot_gradient(self) -> "Rigid":
        """Detach only the rotations (FrameDiff/AF2 trick for stable structure-module updates)."""
        return Rigid(self.rots.detach(), self.trans)
