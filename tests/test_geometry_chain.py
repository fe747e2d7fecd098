"""`local_trace_rotation`: how each residue's frame turns with the CA trace around it (`rollout.chain_transport`)."""

from __future__ import annotations

import torch

from starmd.geometry import random_rotation, rotvec_to_rotmat
from starmd.geometry.chain import local_trace_rotation

F64 = torch.float64


def _chain(n: int, g: torch.Generator) -> torch.Tensor:
    """n CA positions 3.8 A apart, bent at random (never straight: every triplet defines a rotation)."""
    steps = torch.nn.functional.normalize(torch.randn(n - 1, 3, generator=g, dtype=F64)
                                          + torch.tensor([1.5, 0, 0], dtype=F64), dim=-1)
    return torch.cat([torch.zeros(1, 3, dtype=F64), 3.8 * steps.cumsum(0)])


def test_a_rigid_motion_turns_every_residue_by_its_rotation():
    g = torch.Generator().manual_seed(0)
    ca = _chain(9, g)
    rot = random_rotation((2,), g, dtype=F64)  # a batch of two motions
    moved = ca @ rot.transpose(-1, -2) + torch.tensor([[5.0, -2.0, 1.0]], dtype=F64)[:, None]
    turn = local_trace_rotation(ca.expand(2, 9, 3), moved)  # [2, 9, 3, 3]
    torch.testing.assert_close(turn, rot[:, None].expand(2, 9, 3, 3))
    torch.testing.assert_close(local_trace_rotation(ca, ca + 3.0), torch.eye(3, dtype=F64).expand(9, 3, 3))
    assert torch.allclose(torch.det(turn), torch.ones(2, 9, dtype=F64))


def test_a_hinge_turns_the_residues_it_moves_and_not_the_others():
    """The chain's tail turned by ~0.3 rad about an axis through CA 5: residues 0-4 (whose triplets do not reach past
    the hinge) keep their rotation, residues 6-9 get the hinge rotation, residue 5 (CA 4, 5, 6, bent) neither."""
    g = torch.Generator().manual_seed(1)
    ca = _chain(10, g)
    hinge = rotvec_to_rotmat(torch.tensor([0.0, 0.3, 0.1], dtype=F64))
    bent = ca.clone()
    bent[5:] = (ca[5:] - ca[5]) @ hinge.T + ca[5]
    turn = local_trace_rotation(ca, bent)
    torch.testing.assert_close(turn[:5], torch.eye(3, dtype=F64).expand(5, 3, 3))
    torch.testing.assert_close(turn[6:], hinge.expand(4, 3, 3))
    for other in (torch.eye(3, dtype=F64), hinge):
        assert (turn[5] - other).abs().max() > 0.05


def test_chains_too_short_for_a_trace_keep_their_rotation():
    g = torch.Generator().manual_seed(2)
    for n in (1, 2):
        ca = torch.randn(n, 3, generator=g, dtype=F64)
        torch.testing.assert_close(local_trace_rotation(ca, ca + torch.randn(n, 3, generator=g, dtype=F64)),
                                   torch.eye(3, dtype=F64).expand(n, 3, 3))


def test_padding_gets_the_identity_and_leaves_the_real_residues_as_without_it():
    """A batch pads shorter chains at the end (training crops): each chain's rotations are those it has alone, the
    last real residue's triplet never reaches into the padding, padded residues get the identity."""
    g = torch.Generator().manual_seed(3)
    lengths, n = (9, 5, 2), 9
    before = torch.zeros(len(lengths), n, 3, dtype=F64)
    after = torch.zeros_like(before)
    mask = torch.zeros(len(lengths), n, dtype=F64)
    for k, length in enumerate(lengths):
        ca = _chain(length, g) if length > 2 else torch.randn(length, 3, generator=g, dtype=F64)
        before[k, :length] = ca
        after[k, :length] = ca + 0.5 * torch.randn(length, 3, generator=g, dtype=F64)
        before[k, length:] = 100.0 * torch.randn(n - length, 3, generator=g, dtype=F64)  # garbage in the padding
        mask[k, :length] = 1.0
    turn = local_trace_rotation(before, after, mask)
    eye = torch.eye(3, dtype=F64)
    for k, length in enumerate(lengths):
        alone = local_trace_rotation(before[k, :length], after[k, :length])
        torch.testing.assert_close(turn[k, :length], alone)
        torch.testing.assert_close(turn[k, length:], eye.expand(n - length, 3, 3))
    assert (turn[0] - eye).abs().amax() > 0.05  # the real residues did turn
