"""The backbone-only mdtraj Topology that rollout trajectories (N, CA, C, O from `starmd.geometry.backbone`) are
written with, so users can open them in VMD/PyMOL/mdtraj."""

from __future__ import annotations

import mdtraj as md
import numpy as np

from starmd.data.residues import RESTYPES
from starmd.geometry.backbone import ATOM_NAMES, RESNAMES


def backbone_topology(aatype: np.ndarray, residue_index: np.ndarray | None = None) -> md.Topology:
    """One-chain protein topology with atoms N, CA, C, O per residue and the backbone bonds (incl. the peptide bond
    C(i)-N(i+1)), so viewers draw a connected backbone. `residue_index` [N] sets PDB resSeq (default 1..N)."""
    aatype = np.asarray(aatype)
    if residue_index is None:
        residue_index = np.arange(1, len(aatype) + 1)
    if len(residue_index) != len(aatype):
        raise ValueError(f"residue_index has {len(residue_index)} entries for {len(aatype)} residues")
    top = md.Topology()
    chain = top.add_chain()
    elements = [md.element.get_by_symbol(name[0]) for name in ATOM_NAMES]
    prev_c = None
    for a, resseq in zip(aatype.tolist(), np.asarray(residue_index).tolist()):
        if not 0 <= a < len(RESNAMES):
            raise ValueError(f"aatype {a} is not one of the 20 amino acids ({RESTYPES})")
        res = top.add_residue(RESNAMES[a], chain, resSeq=int(resseq))
        n, ca, c, o = (top.add_atom(name, el, res) for name, el in zip(ATOM_NAMES, elements))
        top.add_bond(n, ca)
        top.add_bond(ca, c)
        top.add_bond(c, o)
        if prev_c is not None:
            top.add_bond(prev_c, n)
        prev_c = c
    return top
