"""Protein atoms of any structure or trajectory, and the chain breaks the model cannot represent.

Users' files hold solvent, ions and ligands, and their chains can have gaps (unmodelled loops, several chains). The
model reads one continuous chain: every other residue is removed (and reported, so nothing vanishes silently), and a
break in the chain is refused with the residues on both sides named, because a missing peptide bond would otherwise
pass every step and show up as a "broken" generated frame (a break present in the input is not a generated break).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from starmd.data.residues import is_amino_acid
from starmd.errors import InputError

NM_TO_ANGSTROM = 10.0
# A peptide C-N bond is 1.33 A; 2.0 A leaves room for MD fluctuations and low-resolution models, and is still far
# below the ~3.8 A+ of a real gap.
PEPTIDE_BOND_MAX_A = 2.0
BREAK_FIX = ("the model needs one continuous chain: model the missing residues (e.g. PDBFixer or MODELLER), or give "
             "each segment as its own protein; raw MD split across the periodic boundary is made whole by "
             "`dataset: local`")


def protein_atoms(topology) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of the atoms of amino-acid residues, and {residue name: count} of the residues left out (water,
    ions, ligands, caps)."""
    keep: list[int] = []
    removed: Counter[str] = Counter()
    for res in topology.residues:
        if is_amino_acid(res.name):
            keep.extend(a.index for a in res.atoms)
        else:
            removed[res.name] += 1
    return np.asarray(keep, dtype=np.int64), dict(sorted(removed.items()))


def select_protein(traj, source: str | os.PathLike):
    """`traj` restricted to its amino-acid residues, and what was removed; no amino acid at all is an InputError."""
    keep, removed = protein_atoms(traj.topology)
    if not len(keep):
        raise InputError(source, f"no amino-acid residues (found only {removed})",
                         "give a structure or topology that holds the protein")
    return traj.atom_slice(keep), removed


def chain_breaks(topology, xyz_nm: np.ndarray) -> list[str]:
    """Every break between consecutive residues of a protein-only topology, given one frame's coordinates [atoms, 3]
    (nm): residues in different chains, residue numbering that skips residues, or a C(i)-N(i+1) distance above
    PEPTIDE_BOND_MAX_A. A repeated number (an insertion code) with a bonded C-N is not a break."""
    residues = list(topology.residues)
    breaks = []
    for a, b in zip(residues, residues[1:]):
        reasons = []
        if a.chain.index != b.chain.index:
            reasons.append(f"chain {a.chain.index} ends, chain {b.chain.index} begins")
        if b.resSeq - a.resSeq > 1:
            reasons.append(f"numbering skips {b.resSeq - a.resSeq - 1} residue(s)")
        c = [x.index for x in a.atoms if x.name == "C"]
        n = [x.index for x in b.atoms if x.name == "N"]
        if c and n:
            d = float(np.linalg.norm(xyz_nm[c[0]] - xyz_nm[n[0]])) * NM_TO_ANGSTROM
            if d > PEPTIDE_BOND_MAX_A:
                reasons.append(f"C-N {d:.2f} A > {PEPTIDE_BOND_MAX_A} A")
        if reasons:
            breaks.append(f"{a.name} {a.resSeq} -> {b.name} {b.resSeq} ({'; '.join(reasons)})")
    return breaks


def check_continuous(traj, source: str | os.PathLike) -> None:
    """Refuse a protein-only structure whose frame 0 has a chain break, naming the residues on both sides."""
    breaks = chain_breaks(traj.topology, traj.xyz[0])
    if breaks:
        raise InputError(source, f"chain break between residues {', '.join(breaks[:5])}"
                         + (f" and {len(breaks) - 5} more" if len(breaks) > 5 else ""), BREAK_FIX)
