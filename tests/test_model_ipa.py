"""Invariant Point Attention: SE(3) invariance, masking, and that its residual update starts at zero."""

from __future__ import annotations

import torch

from starmd.geometry import Rigid, random_rotation
from starmd.model.ipa import InvariantPointAttention


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ipa = InvariantPointAttention(c_s=16, c_z=8, c_hidden=8, no_heads=2, no_qk_points=3, no_v_points=4).double()
    with torch.no_grad():
        ipa.linear_out.weight.normal_(0, 0.3, generator=g)  # leave the zero "final" init so the output is non-trivial
    s = torch.randn(2, 6, 16, generator=g, dtype=torch.float64)
    z = torch.randn(2, 6, 6, 8, generator=g, dtype=torch.float64)
    r = Rigid(random_rotation((2, 6), g, dtype=torch.float64), torch.randn(2, 6, 3, generator=g, dtype=torch.float64))
    return ipa, s, z, r, g


def test_ipa_is_invariant_to_a_global_rigid_transform():
    ipa, s, z, r, g = _setup()
    mask = torch.ones(2, 6)
    out = ipa(s, z, r, mask)
    glob = Rigid(random_rotation((), g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64) * 3)
    moved = glob.unsqueeze(0).unsqueeze(0).expand(2, 6).compose(r)
    assert out.abs().max() > 1e-2
    assert (ipa(s, z, moved, mask) - out).abs().max() < 1e-10


def test_ipa_masked_residues_do_not_affect_real_ones():
    ipa, s, z, r, g = _setup(1)
    mask = torch.ones(2, 6)
    mask[:, -2:] = 0
    out = ipa(s, z, r, mask)
    s2, z2 = s.clone(), z.clone()
    s2[:, -2:] += 5.0
    z2[:, :, -2:] -= 3.0
    r2 = Rigid(r.rots, r.trans + torch.tensor([0, 0, 0, 0, 7.0, -7.0], dtype=torch.float64)[None, :, None])
    out2 = ipa(s2, z2, r2, mask)
    assert (out2[:, :4] - out[:, :4]).abs().max() < 1e-12


def test_ipa_update_starts_at_zero():
    ipa = InvariantPointAttention(16, 8, 8, 2, 3, 4)
    s, z = torch.randn(1, 5, 16), torch.randn(1, 5, 5, 8)
    assert torch.count_nonzero(ipa(s, z, Rigid.identity((1, 5)), torch.ones(1, 5))) == 0
