"""Peptide geometry of residue frames (`starmd.geometry.peptide`) and the rollout's peptide restraint
(`starmd.rollout.peptide`, `rollout.peptide_restraint`): ideal values against a real backbone, the Jacobian against
finite differences, the conditioned frames' bonds, their spread, the law's weights, chain breaks, and the flag
reaching a rollout (only rotations change, after the same translations).

The chain is a real one: the villin headpiece shipped with OpenMM (the `villin` fixture, tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from starmd.evaluation.metrics import backbone_clash
from starmd.geometry import Rigid, rotmat_to_rotvec, rotvec_to_rotmat
from starmd.geometry.backbone import IDEAL_LOCAL, backbone_atoms
from starmd.geometry.contacts import (CONTACT_MIN_A, atom_rotation_jacobian, contact_distances, contact_jacobian,
                                      contact_pairs)
from starmd.geometry.peptide import peptide_bonded, peptide_distances, peptide_targets
from starmd.rollout.config import RolloutConfig
from starmd.rollout.peptide import PeptideChain, condition_on_peptide_bonds

F64 = torch.float64


def _turned(frames: Rigid, angle: float, batch: int, seed: int) -> Rigid:
    """batch copies of frames, each residue turned by an independent random rotation of ~angle rad per axis."""
    g = torch.Generator().manual_seed(seed)
    w = angle * torch.randn((batch, *frames.shape, 3), generator=g, dtype=F64)
    return Rigid(frames.rots @ rotvec_to_rotmat(w), frames.trans.expand(batch, *frames.trans.shape))


def test_ideal_values_match_a_real_backbone_and_the_bond_sits_where_backbone_atoms_put_it(villin):
    frames, aatype = villin
    ideal, spread = peptide_targets(aatype)
    dist, _ = peptide_distances(frames, aatype)
    assert dist.shape == ideal.shape == spread.shape == (frames.shape[0] - 1, 3)
    # a crystal backbone placed by ideal frames (its own N and C are not ideal): close to the ideal values
    assert (dist - ideal).abs().mean(0).lt(torch.tensor([0.05, 0.1, 0.1], dtype=F64)).all()
    # the ideal sides carry AlphaFold2's angles: CA-C-N 116.6 deg, C-N-CA 121.4 deg
    local = IDEAL_LOCAL[aatype.long()]
    ca_c, n_ca, c_n = local[:-1, 1].norm(dim=-1), local[1:, 0].norm(dim=-1), ideal[:, 0]
    cos_ca_c_n = (ca_c**2 + c_n**2 - ideal[:, 1] ** 2) / (2 * ca_c * c_n)
    cos_c_n_ca = (c_n**2 + n_ca**2 - ideal[:, 2] ** 2) / (2 * c_n * n_ca)
    torch.testing.assert_close(cos_ca_c_n, torch.full_like(c_n, -0.4473))
    torch.testing.assert_close(cos_c_n_ca, torch.full_like(c_n, -0.5203))
    assert spread[:, 0].min() >= 0.014 and spread[:, 1:].gt(0.02).all() and spread[:, 1:].lt(0.04).all()
    atoms = backbone_atoms(frames, aatype)  # N, CA, C, O
    c_n = (atoms[:-1, 2] - atoms[1:, 0]).norm(dim=-1)
    torch.testing.assert_close(dist[:, 0], c_n)


def test_jacobian_matches_finite_differences(villin):
    frames, aatype = villin
    frames = _turned(frames[:6], 0.3, 1, seed=0)[0]
    dist, jac = peptide_distances(frames, aatype[:6], with_jacobian=True)  # [5, 3], [5, 3, 2, 3]
    eps = 1e-6
    for res in range(6):
        for axis in range(3):
            w = torch.zeros(6, 3, dtype=F64)
            w[res, axis] = eps
            moved, _ = peptide_distances(Rigid(frames.rots @ rotvec_to_rotmat(w), frames.trans), aatype[:6])
            expected = torch.zeros_like(dist)
            if res < 5:
                expected[res] = jac[res, :, 0, axis]
            if res > 0:
                expected[res - 1] = jac[res - 1, :, 1, axis]
            torch.testing.assert_close((moved - dist) / eps, expected, atol=1e-5, rtol=0)


def test_contact_jacobian_matches_finite_differences(villin):
    """Every atom, O included (it follows the next residue's N), and the chain's last residue."""
    frames, aatype = villin
    frames, aatype = _turned(frames[:6], 0.3, 2, seed=4), aatype[:6]
    pairs = contact_pairs(torch.zeros(6, 3, dtype=F64))  # every CA at one point: every pair can clash
    assert len(pairs[0]) == 16 * (4 + 3 + 2 + 1)  # 4 x 4 atoms for each of the 10 residue pairs two or more apart
    atoms = backbone_atoms(frames, aatype)
    jac = contact_jacobian(atoms, atom_rotation_jacobian(frames, aatype), *pairs)  # [2, P, 6, 3]
    eps = 1e-6
    for res in range(6):
        for axis in range(3):
            w = torch.zeros(2, 6, 3, dtype=F64)
            w[:, res, axis] = eps
            moved = [contact_distances(backbone_atoms(Rigid(frames.rots @ rotvec_to_rotmat(s * w), frames.trans),
                                                      aatype), pairs) for s in (1, -1)]
            torch.testing.assert_close((moved[0] - moved[1]) / (2 * eps), jac[:, :, res, axis], atol=1e-6, rtol=0)


def test_contact_pairs_are_every_pair_the_rotations_can_bring_inside_the_wall(villin):
    """Pruning by CA distance is exact for a rotation-only correction: frames turned at random (any rotation) never
    bring a pair left out inside CONTACT_MIN_A, and the list grows with the chain, not its square."""
    frames, aatype = villin
    n = frames.shape[0]
    pairs = contact_pairs(frames.trans)
    every = contact_pairs(torch.zeros(n, 3, dtype=F64))
    assert len(every[0]) == 8 * (n - 1) * (n - 2) and len(pairs[0]) < len(every[0]) / 3
    kept = set(zip(pairs[0].tolist(), pairs[1].tolist()))
    assert kept <= set(zip(every[0].tolist(), every[1].tolist()))
    turned = _turned(frames, 3.0, 64, seed=5)  # ~uniform rotations
    inside = contact_distances(backbone_atoms(turned, aatype), every) < CONTACT_MIN_A  # [64, P_all]
    close = {(a, b) for a, b, hit in zip(every[0].tolist(), every[1].tolist(), inside.any(0).tolist()) if hit}
    assert close and close <= kept


def test_conditioning_opens_backbone_clashes_and_keeps_the_bonds(villin):
    """The crankshaft the three peptide distances leave free swings O(i) into N(i+2); the wall opens those clashes
    (the evaluation's 2.5 A test) while the bonds stay closed, and a crystal without clashes keeps its contacts."""
    frames, aatype = villin
    chain = PeptideChain.from_start(frames, aatype)
    pairs = contact_pairs(frames.trans)
    assert contact_distances(backbone_atoms(frames, aatype), pairs).min() > CONTACT_MIN_A
    turned = _turned(frames, 0.2, 8, seed=1)
    assert backbone_clash(backbone_atoms(turned, aatype).numpy()).mean() > 0.8
    out = condition_on_peptide_bonds(turned, chain, 1.0, None, torch.Generator().manual_seed(0))
    atoms = backbone_atoms(out, aatype)
    assert not backbone_clash(atoms.numpy()).any()
    assert contact_distances(atoms, pairs).min() > CONTACT_MIN_A - 0.1
    after, _ = peptide_distances(out, aatype)
    assert after[..., 0].max() < 1.45
    torch.testing.assert_close(out.trans, turned.trans, rtol=0, atol=0)


def test_chain_breaks_are_not_bonded(villin):
    frames, aatype = villin
    assert peptide_bonded(frames, aatype).all()
    shifted = Rigid(frames.rots, torch.cat([frames.trans[:10], frames.trans[10:] + 6.0]))
    bonded = peptide_bonded(shifted, aatype)
    assert not bonded[9] and bonded[:9].all() and bonded[10:].all()


def test_conditioning_closes_turned_bonds_within_the_restraint_and_keeps_translations(villin):
    frames, aatype = villin
    chain = PeptideChain.from_start(frames, aatype)
    turned = _turned(frames, 0.1, 16, seed=1)
    ideal, _ = peptide_targets(aatype)
    before, _ = peptide_distances(turned, aatype)
    assert (before[..., 0] > 1.5).any(-1).float().mean() > 0.5  # most frames break a bond
    out = condition_on_peptide_bonds(turned, chain, 1.0, None, torch.Generator().manual_seed(0))
    after, _ = peptide_distances(out, aatype)
    assert torch.equal(out.trans, turned.trans)
    assert after[..., 0].max() < 1.45
    # perturb-and-MAP: the bond's error is the restraint's own spread (0.014 A), not zero and not the turn's 0.2 A
    rms = (after[..., 0] - ideal[:, 0]).square().mean().sqrt()
    assert 0.007 < rms < 0.03, rms
    # the angles come back too, to the crystal's own level (its CA-CA distances do not all allow ideal angles)
    crystal, _ = peptide_distances(frames, aatype)
    angle_rms = [(d[..., 1:] - ideal[:, 1:]).square().mean().sqrt() for d in (before, after, crystal)]
    assert angle_rms[1] < 0.75 * angle_rms[0] and angle_rms[1] < 1.1 * angle_rms[2], angle_rms
    turn = rotmat_to_rotvec(turned.rots.transpose(-1, -2) @ out.rots).norm(dim=-1)
    assert turn.mean() < 0.1 * 3**0.5


def test_conditioning_turns_the_residues_the_law_is_unsure_of(villin):
    frames, aatype = villin
    chain = PeptideChain.from_start(frames, aatype)
    turned = _turned(frames, 0.1, 4, seed=2)
    rot_std = torch.full(turned.shape, 0.1, dtype=F64)
    rot_std[:, ::2] = 1e-4  # even residues: the law is sure of their rotations
    out = condition_on_peptide_bonds(turned, chain, 1.0, rot_std, torch.Generator().manual_seed(0))
    turn = rotmat_to_rotvec(turned.rots.transpose(-1, -2) @ out.rots).norm(dim=-1)
    assert turn[:, ::2].max() < 2e-3 and turn[:, 1::2].mean() > 0.05
    after, _ = peptide_distances(out, aatype)
    assert after[..., 0].max() < 1.5


def test_no_bonds_no_turn(villin):
    frames, aatype = villin
    n = frames.shape[0]
    chain = PeptideChain(aatype, torch.zeros(n - 1, dtype=torch.bool), torch.full((n - 1,), 3.8, dtype=F64))
    turned = _turned(frames, 0.1, 2, seed=3)
    out = condition_on_peptide_bonds(turned, chain, 1.0, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.rots, turned.rots, atol=1e-12, rtol=0)


def test_rollout_flag_turns_rotations_only_and_needs_the_residue_types(villin_rollout):
    frames, aatype, run = villin_rollout
    plain, restrained = run(), run(peptide_restraint=1.0)
    torch.testing.assert_close(restrained.translations, plain.translations)  # same draws up to the restraint
    assert not torch.allclose(restrained.rotations, plain.rotations)
    bonds = [peptide_distances(Rigid(r.rotations[:, 0], r.translations[:, 0]), aatype)[0][..., 0]
             for r in (plain, restrained)]
    assert (bonds[1] - 1.329).abs().mean() < (bonds[0] - 1.329).abs().mean()
    with pytest.raises(ValueError, match="peptide_restraint needs"):
        run(residue_types=False, peptide_restraint=1.0)
    with pytest.raises(ValueError, match="rollout.peptide_restraint must be >= 0"):
        RolloutConfig(peptide_restraint=-1.0)
