"""Ideal backbone atoms (N, CA, C, O) from residue frames: rollout writes them, training's distance loss uses them.

N, CA and C follow from the frame alone with ideal local coordinates; O sits in the peptide plane, so it also needs the
next residue's N (AlphaFold2's psi-dependent "psi group"). Numbers are facts, not code: AlphaFold2 / OpenFold
`residue_constants.rigid_group_atom_positions` (Jumper et al. 2021, Suppl. Table 3; openfold@07e6426,
openfold/np/residue_constants.py), backbone entries only:
- N and C in the backbone frame (x along C - CA, y in the N-CA-C plane towards N, origin CA: `Rigid.from_3_points`);
- O in the psi frame: origin C, x along C - CA, y perpendicular to x and pointing away from N(i+1) (AF2 defines psi
  from N, CA, C, O and flips its sign, which puts N(i+1) on -y).

Last residue (no N(i+1)): O is placed with psi = 180 degrees (O eclipses N(i), the extended-strand value), a documented
choice that needs no sign convention; MD C-termini carry O/OXT on both sides, so either is "right" within ~2.2 A.
"""

from __future__ import annotations

import torch

from starmd.geometry.rigid import Rigid

# Three-letter names in OpenFold `restypes` order (aatype index -> residue name of the written topology).
RESNAMES = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
            "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")
ATOM_NAMES = ("N", "CA", "C", "O")

# [20, 3, 3] in RESNAMES order: rows N (backbone frame), C (backbone frame), O (psi frame); Angstrom.
# Values: OpenFold residue_constants.rigid_group_atom_positions (see module docstring); CA is the origin.
IDEAL_LOCAL = torch.tensor([
    [(-0.525, 1.363, 0.0), (1.526, 0.0, 0.0), (0.627, 1.062, 0.0)],  # ALA
    [(-0.524, 1.362, 0.0), (1.525, 0.0, 0.0), (0.626, 1.062, 0.0)],  # ARG
    [(-0.536, 1.357, 0.0), (1.526, 0.0, 0.0), (0.625, 1.062, 0.0)],  # ASN
    [(-0.525, 1.362, 0.0), (1.527, 0.0, 0.0), (0.626, 1.062, 0.0)],  # ASP
    [(-0.522, 1.362, 0.0), (1.524, 0.0, 0.0), (0.625, 1.062, 0.0)],  # CYS
    [(-0.526, 1.361, 0.0), (1.526, 0.0, 0.0), (0.626, 1.062, 0.0)],  # GLN
    [(-0.528, 1.361, 0.0), (1.526, 0.0, 0.0), (0.626, 1.062, 0.0)],  # GLU
    [(-0.572, 1.337, 0.0), (1.517, 0.0, 0.0), (0.626, 1.062, 0.0)],  # GLY
    [(-0.527, 1.360, 0.0), (1.525, 0.0, 0.0), (0.625, 1.063, 0.0)],  # HIS
    [(-0.493, 1.373, 0.0), (1.527, 0.0, 0.0), (0.627, 1.062, 0.0)],  # ILE
    [(-0.520, 1.363, 0.0), (1.525, 0.0, 0.0), (0.625, 1.063, 0.0)],  # LEU
    [(-0.526, 1.362, 0.0), (1.526, 0.0, 0.0), (0.626, 1.062, 0.0)],  # LYS
    [(-0.521, 1.364, 0.0), (1.525, 0.0, 0.0), (0.625, 1.062, 0.0)],  # MET
    [(-0.518, 1.363, 0.0), (1.524, 0.0, 0.0), (0.626, 1.062, 0.0)],  # PHE
    [(-0.566, 1.351, 0.0), (1.527, 0.0, 0.0), (0.621, 1.066, 0.0)],  # PRO
    [(-0.529, 1.360, 0.0), (1.525, 0.0, 0.0), (0.626, 1.062, 0.0)],  # SER
    [(-0.517, 1.364, 0.0), (1.526, 0.0, 0.0), (0.626, 1.062, 0.0)],  # THR
    [(-0.521, 1.363, 0.0), (1.525, 0.0, 0.0), (0.627, 1.062, 0.0)],  # TRP
    [(-0.522, 1.362, 0.0), (1.524, 0.0, 0.0), (0.627, 1.062, 0.0)],  # TYR
    [(-0.494, 1.373, 0.0), (1.527, 0.0, 0.0), (0.627, 1.062, 0.0)],  # VAL
], dtype=torch.float64)


def backbone_atoms(frames: Rigid, aatype: torch.Tensor) -> torch.Tensor:
    """Ideal backbone atoms from residue frames.

    Args:
        frames: Rigid [..., N] (Angstrom), residues in chain order (residue i+1 follows residue i).
        aatype: [N] integer OpenFold aatype (0..19).
    Returns:
        [..., N, 4, 3] positions of N, CA, C, O in Angstrom, in `frames`' dtype.
    """
    aatype = torch.as_tensor(aatype, dtype=torch.long, device=frames.device)
    if aatype.ndim != 1 or aatype.shape[0] != frames.shape[-1]:
        raise ValueError(f"aatype must be [N] with N = {frames.shape[-1]} residues, got {tuple(aatype.shape)}")
    if aatype.numel() and (aatype.min() < 0 or aatype.max() >= len(RESNAMES)):
        raise ValueError(f"aatype values must be in 0..{len(RESNAMES) - 1} (the 20 amino acids), got "
                         f"{aatype.min().item()}..{aatype.max().item()}")
    local = IDEAL_LOCAL.to(dtype=frames.dtype, device=frames.device)[aatype]  # [N, 3, 3]
    n = frames.apply(local[:, 0])  # [..., N, 3]
    ca = frames.trans  # [..., N, 3]
    c = frames.apply(local[:, 1])  # [..., N, 3]
    o_psi = local[:, 2]  # [N, 3] in the psi frame
    # psi frame of residue i < N-1: origin C(i), x along C(i) - CA(i), y away from N(i+1).
    psi = Rigid.from_3_points(2 * c[..., :-1, :] - n[..., 1:, :], c[..., :-1, :], 2 * c[..., :-1, :] - ca[..., :-1, :])
    o_inner = psi.apply(o_psi[:-1])  # [..., N-1, 3]
    # Last residue, psi = 180 deg: the psi frame is the backbone frame shifted to C (y towards N(i)), so O's local
    # position in the backbone frame is C_local + o_psi.
    o_last = frames[..., -1].apply(local[-1, 1] + o_psi[-1])  # [..., 3]
    o = torch.cat([o_inner, o_last.unsqueeze(-2)], dim=-2)  # [..., N, 3]
    return torch.stack([n, ca, c, o], dim=-2)
