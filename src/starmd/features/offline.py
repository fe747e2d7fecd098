"""`featurizer: offline`: deterministic SE(3)-invariant single/pair features from sequence and start structure.

Stands in for frozen OpenFold representations where no weights are available (the demo, CI). It gives the model
what OpenFold's features mostly encode for a single chain: residue identity, chain position, relative position, and
the start structure's geometry, all expressed in quantities that do not change when the structure is rotated or
translated (distances, dihedrals, and relative frames R_i^T R_j, R_i^T (x_j - x_i)).

single [N, c_s] = one-hot aatype (21, OpenFold order + X)
                 | sin/cos of the residue position (2 * n_position_freqs)
                 | if local_structure: sin/cos of phi, psi, omega (6) + their presence masks (3)
                   + log(1 + number of CA within r) for each r in neighbour_radii_a
pair [N, N, c_z] = one-hot of clip(resSeq_j - resSeq_i, +-relpos_clip) (2 * relpos_clip + 1)
                 | Gaussian RBFs of the CA-CA distance (n_rbf, centres rbf_min_a..rbf_max_a)
                 | R_i^T R_j (9) | unit vector R_i^T (x_j - x_i) / |x_j - x_i| (3; 0 on the diagonal)
Frames are `Rigid.from_3_points(N, CA, C)`, the same as data/frames/*.h5.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np
import torch

from starmd.config import dataclass_section
from starmd.data.residues import N_RESTYPES_WITH_X, protein_residues, sequence_to_aatype
from starmd.geometry import Rigid
from starmd.io import sha256sum

NM_TO_ANGSTROM = 10.0


@dataclasses.dataclass(frozen=True)
class OfflineSettings:
    """The `features.offline` config sub-object (schemas/features.schema.yaml)."""

    relpos_clip: int = 32
    n_position_freqs: int = 16
    position_max_period: float = 1000.0
    n_rbf: int = 16
    rbf_min_a: float = 2.0
    rbf_max_a: float = 22.0
    local_structure: bool = True
    neighbour_radii_a: tuple[float, ...] = (8.0, 12.0)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "OfflineSettings":
        """Read `cfg["offline"]` (the `features` section) and check every key and value."""
        sub = dataclass_section(cls, cfg.get("offline") or {}, "features.offline")
        if "neighbour_radii_a" in sub:
            sub["neighbour_radii_a"] = tuple(sub["neighbour_radii_a"])
        s = cls(**sub)
        for key in ("relpos_clip", "n_position_freqs", "n_rbf"):
            if not isinstance(getattr(s, key), int) or getattr(s, key) < 1:
                raise ValueError(f"features.offline.{key}: {getattr(s, key)!r}, expected an integer >= 1")
        if not 0 <= s.rbf_min_a < s.rbf_max_a:
            raise ValueError(f"features.offline: need 0 <= rbf_min_a < rbf_max_a, got {s.rbf_min_a}, {s.rbf_max_a}")
        if s.position_max_period <= 1 or any(r <= 0 for r in s.neighbour_radii_a):
            raise ValueError("features.offline: position_max_period must be > 1 and neighbour_radii_a positive")
        return s

    @property
    def c_s(self) -> int:
        local = 9 + len(self.neighbour_radii_a) if self.local_structure else 0
        return N_RESTYPES_WITH_X + 2 * self.n_position_freqs + local

    @property
    def c_z(self) -> int:
        return 2 * self.relpos_clip + 1 + self.n_rbf + 12


def featurize(*, name: str, sequence: str, pdb_path: str | os.PathLike | None,
              cfg: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """single [N, c_s] float32, pair [N, N, c_z] float32 and HDF5 attrs from the start structure `pdb_path`.

    `cfg` is the `features` config section; its `offline` sub-object holds the settings.
    """
    import mdtraj as md

    settings = OfflineSettings.from_config(cfg)
    if pdb_path is None:
        raise ValueError(f"{name}: the offline featurizer needs the start structure (--pdb)")
    structure = md.load(str(pdb_path))
    single, pair, pdb_sequence = structure_features(structure, settings, source=str(pdb_path))
    if pdb_sequence != sequence:
        raise ValueError(f"{name}: sequence {sequence!r} differs from the {pdb_sequence!r} of {pdb_path}")
    attrs = {"name": name, "featurizer": "offline", "sequence": sequence,
             "settings": dataclasses.asdict(settings), "pdb_sha256": sha256sum(pdb_path)}
    return single, pair, attrs


def structure_features(structure, settings: OfflineSettings, source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Frame 0 of an mdtraj structure -> (single [N, c_s] float32, pair [N, N, c_z] float32, sequence).

    Computed in float64 and cast once, so identical input gives identical bytes.
    """
    sequence, residue_index, bb_idx = protein_residues(structure.topology, source)
    backbone = torch.from_numpy(structure.xyz[0, bb_idx].astype(np.float64) * NM_TO_ANGSTROM)  # [N, 3, 3]
    frames = Rigid.from_3_points(backbone[:, 0], backbone[:, 1], backbone[:, 2])  # [N]
    # relative frame of j seen from i: rots R_i^T R_j, trans R_i^T (x_j - x_i)
    rel = frames.unsqueeze(-1).invert().compose(frames.unsqueeze(-2))  # [N, N]
    dist = rel.trans.norm(dim=-1).numpy()  # [N, N] CA-CA distance, A

    single = [_one_hot(sequence_to_aatype(sequence).astype(np.int64), N_RESTYPES_WITH_X),
              _sinusoid(residue_index - residue_index[0], settings.n_position_freqs, settings.position_max_period)]
    if settings.local_structure:
        single += [_backbone_dihedrals(structure), _neighbour_counts(dist, settings.neighbour_radii_a)]

    offset = np.clip(residue_index[None, :] - residue_index[:, None], -settings.relpos_clip, settings.relpos_clip)
    direction = rel.trans / rel.trans.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # [N, N, 3]; 0 where i == j
    pair = [_one_hot(offset + settings.relpos_clip, 2 * settings.relpos_clip + 1),
            _rbf(dist, settings.n_rbf, settings.rbf_min_a, settings.rbf_max_a),
            rel.rots.reshape(*dist.shape, 9).numpy(), direction.numpy()]
    return (np.concatenate(single, axis=-1).astype(np.float32),
            np.concatenate(pair, axis=-1).astype(np.float32), sequence)


def _one_hot(index: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float64)[index]


def _sinusoid(position: np.ndarray, n_freqs: int, max_period: float) -> np.ndarray:
    """[N] -> [N, 2 * n_freqs]: Transformer position encoding, periods from 2*pi up to ~2*pi*max_period."""
    freqs = max_period ** (-np.arange(n_freqs) / n_freqs)  # [F]
    angle = position[:, None].astype(np.float64) * freqs[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1)


def _rbf(dist: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """[N, N] -> [N, N, n] Gaussian radial basis with evenly spaced centres and width = spacing."""
    centres = np.linspace(lo, hi, n)
    width = (hi - lo) / max(n - 1, 1)
    return np.exp(-(((dist[..., None] - centres) / width) ** 2))


def _backbone_dihedrals(structure) -> np.ndarray:
    """[N, 9]: sin/cos of phi, psi, omega of each residue (mdtraj) and 1/0 masks where the angle exists.

    phi_i = C(i-1)-N-CA-C, psi_i = N-CA-C-N(i+1), omega_i = CA-C-N(i+1)-CA(i+1): the termini lack some.
    """
    import mdtraj as md

    out = np.zeros((structure.n_residues, 9))
    for col, (fn, owner) in enumerate(((md.compute_phi, 1), (md.compute_psi, 0), (md.compute_omega, 0))):
        atoms, angles = fn(structure[:1])  # atoms [K, 4], angles [1, K] in radians
        res = np.array([structure.topology.atom(a[owner]).residue.index for a in atoms], dtype=np.int64)
        out[res, 2 * col] = np.sin(angles[0])
        out[res, 2 * col + 1] = np.cos(angles[0])
        out[res, 6 + col] = 1.0
    return out


def _neighbour_counts(dist: np.ndarray, radii: tuple[float, ...]) -> np.ndarray:
    """[N, N] -> [N, len(radii)]: log(1 + number of other CA within each radius), a burial proxy."""
    off_diag = ~np.eye(len(dist), dtype=bool)
    return np.stack([np.log1p(((dist < r) & off_diag).sum(-1)) for r in radii], axis=-1).astype(np.float64)
