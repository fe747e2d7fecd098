"""Residue vocabulary and backbone lookup shared by frame extraction and the offline featurizer.

One place decides which residue names are amino acids, how they map to OpenFold's `aatype` integers and which atoms
make a residue's backbone frame, so `data/frames/*.h5` and `data/features/*/*.h5` can never disagree on a sequence.
"""

from __future__ import annotations

import numpy as np

# OpenFold `residue_constants.restypes`; index 20 is OpenFold's unknown type "X" (kept for the one-hot width only:
# an unknown residue in an input file is an error, never silently mapped to X).
RESTYPES = "ARNDCQEGHILKMFPSTWYV"
N_RESTYPES_WITH_X = len(RESTYPES) + 1

_THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G", "HIS": "H",
    "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S", "THR": "T", "TRP": "W",
    "TYR": "Y", "VAL": "V",
    # protonation / disulfide variants written by MD engines (AMBER, CHARMM, GROMACS): same amino acid
    "HID": "H", "HIE": "H", "HIP": "H", "HSD": "H", "HSE": "H", "HSP": "H", "CYX": "C", "CYM": "C",
    "ASH": "D", "GLH": "E", "LYN": "K",
}
BACKBONE_ATOMS = ("N", "CA", "C")


def is_amino_acid(residue_name: str) -> bool:
    """True for the 20 amino acids and their MD protonation/disulfide variants (water, ions, caps: False)."""
    return residue_name.upper() in _THREE_TO_ONE


def one_letter(residue_name: str, where: str) -> str:
    """One-letter code of a residue name; `where` names the file/residue in the error."""
    try:
        return _THREE_TO_ONE[residue_name.upper()]
    except KeyError:
        raise ValueError(f"{where}: unknown residue {residue_name!r} (expected one of the 20 amino acids or an "
                         f"MD protonation variant such as HIE/CYX)") from None


def sequence_to_aatype(sequence: str) -> np.ndarray:
    """'ACD...' -> [N] int8 OpenFold aatype; rejects letters outside the 20 amino acids."""
    bad = sorted(set(sequence) - set(RESTYPES))
    if bad:
        raise ValueError(f"sequence {sequence!r} has letters {bad} outside the 20 amino acids {RESTYPES}")
    return np.array([RESTYPES.index(a) for a in sequence], dtype=np.int8)


def protein_residues(topology, source: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Sequence, residue_index [N] int32 (PDB resSeq) and backbone atom indices [N, 3] (N, CA, C) of an mdtraj
    topology. Every residue must be an amino acid with all three backbone atoms: a residue that is not, or that
    misses one, is an error naming `source` and the residue, never silently dropped (a gap would shift every frame).
    """
    letters, resseq, backbone = [], [], []
    for res in topology.residues:
        where = f"{source}: residue {res.name} {res.resSeq} (chain {res.chain.index})"
        letters.append(one_letter(res.name, where))
        names = {a.name: a.index for a in res.atoms}
        missing = [a for a in BACKBONE_ATOMS if a not in names]
        if missing:
            raise ValueError(f"{source}: {res.name} {res.resSeq} has no {'/'.join(missing)} "
                             f"(backbone atoms {'/'.join(BACKBONE_ATOMS)} are needed for its frame)")
        resseq.append(res.resSeq)
        backbone.append([names[a] for a in BACKBONE_ATOMS])
    if not letters:
        raise ValueError(f"{source}: no residues")
    return "".join(letters), np.asarray(resseq, dtype=np.int32), np.asarray(backbone, dtype=np.int64)
