"""Backbone reconstruction from frames, checked against a real MD backbone (villin headpiece snapshot shipped with
OpenMM: `openmm/app/data/test.pdb`, 35 residues)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starmd.data.residues import RESTYPES, one_letter
from starmd.geometry import Rigid, random_rotation
from starmd.geometry.backbone import RESNAMES, backbone_atoms
from starmd.rollout.backbone import backbone_topology


def _rebuild(atoms: torch.Tensor, aatype: torch.Tensor) -> torch.Tensor:
    return backbone_atoms(Rigid.from_3_points(atoms[:, 0], atoms[:, 1], atoms[:, 2]), aatype)


def test_resnames_follow_openfold_restypes():
    assert [one_letter(r, "test") for r in RESNAMES] == list(RESTYPES)


def test_reconstruction_reproduces_real_backbone(villin_backbone):
    aatype, true = villin_backbone.aatype, villin_backbone.atoms
    err = (_rebuild(true, aatype) - true).norm(dim=-1)  # [N, 4]
    rms = err.pow(2).mean(0).sqrt()
    assert err[:, 1].max() < 1e-9  # CA is the frame origin
    # N and C: ideal vs thermal bond lengths/angles of an MD snapshot (measured rms 0.09 / 0.04 A, max 0.20 A)
    assert rms[0] < 0.1 and rms[2] < 0.1 and err[:, [0, 2]].max() < 0.25
    # O from the psi frame: measured rms 0.20 A, max 0.40 A (a mirrored or psi-blind O would be off by ~1-2 A)
    assert rms[3] < 0.25 and err[:-1, 3].max() < 0.5
    # last residue (psi = 180 convention): within the spread between the real O and OXT positions
    assert err[-1, 3] < 2.3


def test_peptide_geometry_of_reconstruction(villin_backbone):
    aatype, true = villin_backbone.aatype, villin_backbone.atoms
    x = _rebuild(true, aatype)
    c_n = (x[:-1, 2] - x[1:, 0]).norm(dim=-1)
    n_ca = (x[:, 0] - x[:, 1]).norm(dim=-1)
    c_o = (x[:, 2] - x[:, 3]).norm(dim=-1)
    assert abs(c_n.mean() - 1.33) < 0.04 and c_n.max() < 1.6 and c_n.min() > 1.2
    assert torch.allclose(n_ca, torch.full_like(n_ca, 1.46), atol=0.01)
    assert torch.allclose(c_o, torch.full_like(c_o, 1.23), atol=0.01)


def test_reconstruction_is_se3_equivariant(villin_backbone):
    aatype, true = villin_backbone.aatype, villin_backbone.atoms
    g = torch.Generator().manual_seed(0)
    r = random_rotation((), generator=g, dtype=torch.float64)
    t = torch.randn(3, generator=g, dtype=torch.float64) * 10
    moved = true @ r.T + t
    assert torch.allclose(_rebuild(moved, aatype), _rebuild(true, aatype) @ r.T + t, atol=1e-9)


def test_topology_counts_names_and_bonds(villin_backbone):
    aatype = villin_backbone.aatype
    top = backbone_topology(aatype.numpy(), residue_index=np.arange(42, 42 + len(aatype)))
    n = len(aatype)
    assert (top.n_chains, top.n_residues, top.n_atoms, top.n_bonds) == (1, n, 4 * n, 3 * n + n - 1)
    assert [r.name for r in top.residues][:3] == ["LEU", "SER", "ASP"]
    assert [r.resSeq for r in top.residues][0] == 42
    assert [a.name for a in top.atoms][:4] == ["N", "CA", "C", "O"]
    assert [a.element.symbol for a in top.atoms][:4] == ["N", "C", "C", "O"]
    peptide = {(b[0].residue.index, b[0].name, b[1].name) for b in top.bonds if b[0].residue != b[1].residue}
    assert peptide == {(i, "C", "N") for i in range(n - 1)}


def test_bad_aatype_is_rejected(villin_backbone):
    aatype, true = villin_backbone.aatype, villin_backbone.atoms
    frames = Rigid.from_3_points(true[:, 0], true[:, 1], true[:, 2])
    with pytest.raises(ValueError, match="aatype must be"):
        backbone_atoms(frames, aatype[:-1])
    with pytest.raises(ValueError, match="0..19"):
        backbone_atoms(frames, torch.full_like(aatype, 20))
