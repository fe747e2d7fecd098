"""Shared geometry: SO(3) maps (exp/log, quaternions, hat/vee, uniform sampling) and the Rigid group operations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from starmd.geometry import (
    Rigid,
    hat,
    quat_to_rotmat,
    random_rotation,
    rotmat_to_quat,
    rotmat_to_rotvec,
    rotvec_to_rotmat,
    vee,
)

F64 = torch.float64
# Backbone N, CA, C in the residue frame (AF2 / OpenFold rigid_group_atom_positions, alanine), Angstrom
LOCAL_N_CA_C = torch.tensor([[-0.525, 1.363, 0.0], [0.0, 0.0, 0.0], [1.526, 0.0, 0.0]], dtype=F64)


def _rotvecs(n: int, seed: int) -> torch.Tensor:
    """Random axes with angles spread over [0, pi), plus the hard ends: ~0 and ~pi."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=F64), dim=-1)
    angle = torch.rand(n, generator=gen, dtype=F64) * math.pi
    angle[:4] = torch.tensor([0.0, 1e-9, 1e-5, 1e-3], dtype=F64)
    angle[4:8] = math.pi - torch.tensor([1e-3, 1e-5, 1e-7, 0.0], dtype=F64)
    return axis * angle[:, None]


def _random_rigid(shape: tuple[int, ...], seed: int) -> Rigid:
    gen = torch.Generator().manual_seed(seed)
    return Rigid(random_rotation(shape, gen, dtype=F64), 5 * torch.randn(*shape, 3, generator=gen, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotations_are_orthonormal_with_det_one(dtype):
    mats = [random_rotation((500,), torch.Generator().manual_seed(0), dtype=dtype),
            rotvec_to_rotmat(_rotvecs(500, 1).to(dtype)),
            quat_to_rotmat(torch.randn(500, 4, generator=torch.Generator().manual_seed(2), dtype=dtype))]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    eye = torch.eye(3, dtype=dtype)
    for r in mats:
        torch.testing.assert_close(r @ r.transpose(-1, -2), eye.expand_as(r), atol=tol, rtol=0)
        torch.testing.assert_close(torch.linalg.det(r), torch.ones(500, dtype=dtype), atol=tol, rtol=0)


def test_exp_matches_scipy_and_log_inverts_exp_including_near_zero_and_pi():
    v = _rotvecs(200, 3)
    r = rotvec_to_rotmat(v)
    np.testing.assert_allclose(r.numpy(), Rotation.from_rotvec(v.numpy()).as_matrix(), atol=1e-12)
    back = rotmat_to_rotvec(r)
    # log is unique below pi; at pi exactly the axis sign is ambiguous, so compare the rotations there
    below = v.norm(dim=-1) < math.pi - 1e-6
    torch.testing.assert_close(back[below], v[below], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(rotvec_to_rotmat(back), r, atol=1e-9, rtol=0)
    assert (back.norm(dim=-1) <= math.pi + 1e-12).all()


def test_exp_gradient_is_finite_at_identity():
    v = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    rotvec_to_rotmat(v).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_log_gradient_is_finite_at_identity():
    r = torch.eye(3, dtype=F64).repeat(2, 1, 1).requires_grad_(True)
    rotmat_to_rotvec(r).sum().backward()
    assert torch.isfinite(r.grad).all()


def test_quaternion_round_trip_with_nonnegative_w():
    r = rotvec_to_rotmat(_rotvecs(300, 4))
    q = rotmat_to_quat(r)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(300, dtype=F64))
    torch.testing.assert_close(quat_to_rotmat(q), r, atol=1e-12, rtol=0)
    scipy_q = Rotation.from_matrix(r.numpy()).as_quat()  # (x, y, z, w)
    scipy_q = scipy_q[:, [3, 0, 1, 2]] * np.sign(scipy_q[:, 3:] + 1e-300)
    np.testing.assert_allclose(np.abs(q.numpy()), np.abs(scipy_q), atol=1e-9)  # equal up to the +-q at w = 0


def test_hat_vee():
    gen = torch.Generator().manual_seed(5)
    v, w = torch.randn(2, 10, 3, generator=gen, dtype=F64)
    torch.testing.assert_close((hat(v) @ w.unsqueeze(-1)).squeeze(-1), torch.cross(v, w, dim=-1))
    torch.testing.assert_close(vee(hat(v)), v)


def test_from_3_points_recovers_frame_and_local_backbone():
    frames = _random_rigid((4, 7), 6)
    n, ca, c = (frames.apply(x) for x in LOCAL_N_CA_C)
    rebuilt = Rigid.from_3_points(n, ca, c)
    # from_3_points adds eps = 1e-8 to each norm, so its axes are short by ~1e-8
    torch.testing.assert_close(rebuilt.rots, frames.rots, atol=5e-8, rtol=0)
    torch.testing.assert_close(rebuilt.trans, frames.trans)
    local = torch.stack([rebuilt.invert_apply(x) for x in (n, ca, c)], -2)  # [4, 7, 3, 3]
    torch.testing.assert_close(local, LOCAL_N_CA_C.expand_as(local), atol=1e-7, rtol=0)


def test_compose_invert_apply_identities():
    a, b = _random_rigid((5,), 7), _random_rigid((5,), 8)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    torch.testing.assert_close(a.compose(b).apply(x), a.apply(b.apply(x)))
    ident = a.compose(a.invert())
    torch.testing.assert_close(ident.rots, torch.eye(3, dtype=F64).expand(5, 3, 3))
    torch.testing.assert_close(ident.trans, torch.zeros(5, 3, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(a.invert_apply(a.apply(x)), x)
    torch.testing.assert_close(a.invert().apply(x), a.invert_apply(x))
    c = _random_rigid((5,), 10)
    left, right = a.compose(b).compose(c), a.compose(b.compose(c))  # associativity
    torch.testing.assert_close(left.rots, right.rots)
    torch.testing.assert_close(left.trans, right.trans)


def test_tensor_7_and_4x4_round_trips_and_batch_ops():
    a = _random_rigid((3, 4), 11)
    for back in (Rigid.from_tensor_7(a.to_tensor_7()), Rigid.from_tensor_4x4(a.to_tensor_4x4())):
        torch.testing.assert_close(back.rots, a.rots)
        torch.testing.assert_close(back.trans, a.trans)
    m = a.to_tensor_4x4()
    x = torch.randn(3, 4, 3, dtype=F64)
    torch.testing.assert_close((m @ torch.cat([x, torch.ones(3, 4, 1, dtype=F64)], -1).unsqueeze(-1))[..., :3, 0],
                               a.apply(x))
    assert a[0].shape == (4,) and a[:, 1:3].shape == (3, 2) and a.unsqueeze(-1).shape == (3, 4, 1)
    assert Rigid.cat([a, a], dim=-1).shape == (3, 8) and Rigid.stack([a, a], dim=0).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="batch shapes differ"):
        Rigid(a.rots, a.trans[:, :2])
