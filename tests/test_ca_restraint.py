"""The rollout's CA-trace restraint (`starmd.rollout.trace`, `rollout.ca_restraint`): stretched CA-CA bonds are
closed to the start structure's, the conditioned distance follows the exact Gaussian posterior in the linear regime
(perturb-and-MAP), the law's widths decide who moves, chain breaks stay broken, rotations are untouched, and the flag
reaches a rollout (only translations change, after the same draws).

The chain is a real one: the villin headpiece shipped with OpenMM (the `villin` fixture, tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from starmd.geometry import Rigid
from starmd.geometry.peptide import ca_distances
from starmd.rollout.config import RolloutConfig
from starmd.rollout.peptide import PeptideChain
from starmd.rollout.trace import CA_CA_STD_A, condition_on_ca_bonds

F64 = torch.float64


def _shifted(frames: Rigid, std: float, batch: int, seed: int) -> Rigid:
    """batch copies of frames, each residue's translation moved by independent N(0, std^2) per coordinate (A)."""
    g = torch.Generator().manual_seed(seed)
    trans = frames.trans + std * torch.randn((batch, *frames.trans.shape), generator=g, dtype=F64)
    return Rigid(frames.rots.expand(batch, *frames.rots.shape), trans)


def test_stretched_bonds_close_to_the_start_and_rotations_stay(villin):
    frames, aatype = villin
    chain = PeptideChain.from_start(frames, aatype)
    drawn = _shifted(frames, 0.25, 8, seed=0)  # CA-CA 3.8 +- ~0.35 A, as a wide per-residue law draws it
    before, _ = ca_distances(drawn.trans)
    out = condition_on_ca_bonds(drawn, chain, 1.0, None, torch.Generator().manual_seed(0))
    after, _ = ca_distances(out.trans)
    assert (before - chain.ca_ca).abs().max() > 0.4
    err = after - chain.ca_ca  # the draw's own error is N(0, (0.05 A)^2 shrunk by the prior)
    assert err.abs().max() < 5 * CA_CA_STD_A and err.std() < 1.2 * CA_CA_STD_A, (err.abs().max(), err.std())
    torch.testing.assert_close(out.rots, drawn.rots, atol=0, rtol=0)
    moved = (out.trans - drawn.trans).norm(dim=-1)
    assert moved.mean() < 0.25  # the smallest shift, not a refold: under one prior width


def test_conditioned_distance_is_the_exact_gaussian_posterior():
    """Two residues, prior N(x, s^2 I) each, bond observed as d* + N(0, sigma^2): along the bond the posterior of the
    distance is Gaussian with precision 1 / (2 s^2) + 1 / sigma^2 and the precision-weighted mean; perpendicular
    motion does not change it to first order (sigma, s small against d, so d is nearly linear)."""
    s, scale, d_mean, d_start, batch = 0.02, 1.0, 3.9, 3.8, 20000
    sigma = scale * CA_CA_STD_A
    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([[0.0, 0.0, 0.0], [d_mean, 0.0, 0.0]], dtype=F64)
    trans = mean + s * torch.randn((batch, 2, 3), generator=g, dtype=F64)
    drawn = Rigid(torch.eye(3, dtype=F64).expand(batch, 2, 3, 3), trans)
    chain = PeptideChain(torch.zeros(2, dtype=torch.long), torch.ones(1, dtype=torch.bool),
                         torch.tensor([d_start], dtype=F64))
    out = condition_on_ca_bonds(drawn, chain, scale, torch.full((batch, 2), s, dtype=F64), g)
    d = ca_distances(out.trans)[0][:, 0]
    precision = 1 / (2 * s**2) + 1 / sigma**2
    expected_mean = (d_mean / (2 * s**2) + d_start / sigma**2) / precision
    expected_std = precision**-0.5
    assert abs(float(d.mean()) - expected_mean) < 4 * expected_std / batch**0.5 + 1e-4, (d.mean(), expected_mean)
    assert abs(float(d.std()) / expected_std - 1) < 0.03, (d.std(), expected_std)


def test_the_residues_the_law_is_sure_of_stay(villin):
    frames, aatype = villin
    chain = PeptideChain.from_start(frames, aatype)
    drawn = _shifted(frames, 0.25, 4, seed=2)
    trans_std = torch.full(drawn.shape, 0.25, dtype=F64)
    trans_std[:, ::2] = 1e-4  # even residues: the law is sure of their positions
    out = condition_on_ca_bonds(drawn, chain, 1.0, trans_std, torch.Generator().manual_seed(0))
    moved = (out.trans - drawn.trans).norm(dim=-1)
    assert moved[:, ::2].max() < 1e-3 and moved[:, 1::2].mean() > 0.05


def test_chain_breaks_stay_broken(villin):
    frames, aatype = villin
    n = frames.shape[0]
    far = Rigid(frames.rots, frames.trans + (torch.arange(n, dtype=F64) >= n // 2)[:, None] * 20.0)
    chain = PeptideChain.from_start(far, aatype)
    assert not bool(chain.bonded[n // 2 - 1]) and bool(chain.bonded[: n // 2 - 1].all())
    drawn = _shifted(far, 0.25, 2, seed=3)
    out = condition_on_ca_bonds(drawn, chain, 1.0, None, torch.Generator().manual_seed(0))
    gap = [ca_distances(r.trans)[0][:, n // 2 - 1] for r in (drawn, out)]
    assert (gap[0] - gap[1]).abs().max() < 0.3  # the break is not pulled shut (its ends move only for their bonds)
    assert gap[1].min() > 15.0


def test_rollout_flag_moves_translations_only_and_needs_the_residue_types(villin_rollout):
    frames, aatype, run = villin_rollout
    plain, restrained = run(), run(ca_restraint=1.0)
    torch.testing.assert_close(restrained.rotations, plain.rotations)  # same draws up to the restraint
    assert not torch.allclose(restrained.translations, plain.translations)
    start = ca_distances(frames.trans)[0]
    err = [(ca_distances(r.translations[:, 0])[0] - start).abs().mean() for r in (plain, restrained)]
    assert err[1] < 0.5 * err[0], err
    with pytest.raises(ValueError, match="ca_restraint needs"):
        run(residue_types=False, ca_restraint=1.0)
    with pytest.raises(ValueError, match="rollout.ca_restraint must be >= 0"):
        RolloutConfig(ca_restraint=-1.0)
