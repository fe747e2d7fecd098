"""The elastic-network Hessian shared by the known-answer system and the model's elastic step law."""

from __future__ import annotations

import torch

from starmd.geometry.elastic import anm_hessian

F64 = torch.float64


def test_anm_hessian_is_the_second_derivative_of_the_spring_energy():
    """At rest (springs at their current length) the Hessian of E = 1/2 sum k_ij (|x_i - x_j| - d_ij)^2 over i < j,
    computed by autograd, equals anm_hessian; batched inputs give each structure's own Hessian."""
    g = torch.Generator().manual_seed(0)
    xyz = 4.0 * torch.randn(2, 6, 3, generator=g, dtype=F64)
    k = torch.rand(2, 6, 6, generator=g, dtype=F64)
    k = (k + k.transpose(-1, -2)) * (torch.rand(2, 6, 6, generator=g, dtype=F64) < 0.7)
    k = 0.5 * (k + k.transpose(-1, -2))
    for b in range(2):
        rest = torch.cdist(xyz[b], xyz[b])
        iu = torch.triu_indices(6, 6, 1)

        def energy(flat: torch.Tensor) -> torch.Tensor:
            x = flat.view(6, 3)
            d = (x[iu[0]] - x[iu[1]]).norm(dim=-1)
            return 0.5 * (k[b][iu[0], iu[1]] * (d - rest[iu[0], iu[1]]) ** 2).sum()

        expected = torch.autograd.functional.hessian(energy, xyz[b].flatten())
        torch.testing.assert_close(anm_hessian(xyz, k)[b], expected, rtol=1e-10, atol=1e-10)


def test_anm_hessian_leaves_rigid_motions_free_and_stiffens_bonds():
    """Six zero modes (translations, rotations) for a connected network; a displacement along a spring costs k, one
    across it nothing (to first order)."""
    xyz = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [5.0, 3.6, 0], [2.0, 5.0, 2.0]], dtype=F64)
    hess = anm_hessian(xyz, torch.full((4, 4), 2.0, dtype=F64))
    eig = torch.linalg.eigvalsh(hess)
    assert eig[:6].abs().max() < 1e-10 and eig[6] > 0.1
    along, across = torch.zeros(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64)
    along[1, 0] = 1.0  # stretch the 0-1 bond
    across[1, 2] = 1.0  # move residue 1 out of plane: perpendicular to 0-1 and 1-2, not to 1-3
    assert along.flatten() @ hess @ along.flatten() > across.flatten() @ hess @ across.flatten()


def test_anm_modes_are_orthonormal_non_rigid_and_leave_padding_still():
    from starmd.geometry.elastic import anm_modes

    g = torch.Generator().manual_seed(0)
    ca = torch.cumsum(3.8 * torch.nn.functional.normalize(torch.randn(2, 12, 3, generator=g, dtype=torch.float64),
                                                           dim=-1), dim=1)
    mask = torch.ones(2, 12, dtype=torch.float64)
    mask[1, -3:] = 0
    modes = anm_modes(ca, mask, 5)
    assert modes.shape == (2, 5, 12, 3)
    flat = modes.flatten(-2)
    assert torch.allclose(flat @ flat.transpose(-1, -2), torch.eye(5, dtype=torch.float64).expand(2, 5, 5), atol=1e-9)
    assert modes[1, :, -3:].abs().max() < 1e-9  # padding does not move
    # no rigid translation in them: every mode's mean displacement over real residues is zero
    real = mask[:, None, :, None]
    assert ((modes * real).sum(-2) / real.sum(-2)).abs().max() < 1e-9
    # the softest mode is softer than the fifth: the Rayleigh quotients increase
    from starmd.geometry.elastic import anm_hessian

    springs = (torch.cdist(ca, ca) < 15.0).double() * mask[:, :, None] * mask[:, None, :]
    quotient = torch.einsum("bmi,bij,bmj->bm", flat, anm_hessian(ca, springs), flat)
    assert torch.all(quotient[:, 0] < quotient[:, 4]) and torch.all(quotient > 1e-8)
