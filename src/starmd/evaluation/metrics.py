"""Pure metric functions on CA coordinates [F, N, 3] and backbone coordinates [F, N, 4, 3] (atom order N, CA, C, O),
all in Angstrom. Definitions, thresholds and their sources are in README.md (Metrics); nothing here reads files.

mdtraj does superposition, RMSD, RMSF and radius of gyration; deeptime does TICA; scipy does the Jensen-Shannon
distance, KD-tree contact search, the optimal assignment behind W2 and Pearson r. Trajectories are handed to mdtraj
in nm, so every function converts at its boundary and returns Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass

import mdtraj as md
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, jensenshannon
from scipy.stats import pearsonr

NM_PER_ANGSTROM = 0.1
BACKBONE_ATOM_NAMES = ("N", "CA", "C", "O")


# --- mdtraj bridges -------------------------------------------------------------------------------------------------
def ca_trajectory(xyz: np.ndarray) -> md.Trajectory:
    """CA-only mdtraj Trajectory from [F, N, 3] or [N, 3] Angstrom (one CA atom per residue, residues named UNK)."""
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim == 2:
        xyz = xyz[None]
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"expected CA coordinates [F, N, 3] or [N, 3], got shape {xyz.shape}")
    top = md.Topology()
    chain = top.add_chain()
    for i in range(xyz.shape[1]):
        top.add_atom("CA", md.element.carbon, top.add_residue("UNK", chain, resSeq=i + 1))
    return md.Trajectory(xyz * NM_PER_ANGSTROM, top)


def superpose(xyz: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Kabsch-superpose every frame [F, N, 3] onto `target` [N, 3] (mdtraj.superpose on all atoms given)."""
    traj = ca_trajectory(xyz).superpose(ca_trajectory(target), 0)
    return traj.xyz.astype(np.float64) / NM_PER_ANGSTROM


def rmsd_to(xyz: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[F] optimal-superposition RMSD (Angstrom) of each frame to `target` [N, 3]."""
    return md.rmsd(ca_trajectory(xyz), ca_trajectory(target), 0).astype(np.float64) / NM_PER_ANGSTROM


def radius_of_gyration(xyz: np.ndarray) -> np.ndarray:
    """[F] unweighted CA radius of gyration (Angstrom)."""
    return md.compute_rg(ca_trajectory(xyz)) / NM_PER_ANGSTROM


def rmsf(xyz: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N] per-residue CA RMSF (Angstrom) about the ensemble mean after superposing every frame onto `target`."""
    return md.rmsf(ca_trajectory(xyz), ca_trajectory(target), 0).astype(np.float64) / NM_PER_ANGSTROM


# --- validity -------------------------------------------------------------------------------------------------------
def _any_close_pair(points: np.ndarray, groups: np.ndarray, threshold: float, min_group_gap: int) -> np.ndarray:
    """[F] bool: some pair of points [F, M, 3] closer than `threshold` whose groups [M] differ by >= min_group_gap."""
    out = np.zeros(len(points), dtype=bool)
    for f, frame in enumerate(points):
        pairs = cKDTree(frame).query_pairs(threshold, output_type="ndarray")  # [P, 2]
        out[f] = bool(np.any(np.abs(groups[pairs[:, 0]] - groups[pairs[:, 1]]) >= min_group_gap))
    return out


def ca_clash(ca: np.ndarray, threshold_A: float = 3.0) -> np.ndarray:
    """[F] bool: any non-adjacent (|i-j| >= 2) CA pair closer than threshold_A."""
    return _any_close_pair(ca, np.arange(ca.shape[1]), threshold_A, 2)


def ca_break(ca: np.ndarray, threshold_A: float = 4.2) -> np.ndarray:
    """[F] bool: any adjacent CA pair further apart than threshold_A."""
    return np.any(np.linalg.norm(np.diff(ca, axis=1), axis=-1) > threshold_A, axis=1)


def ca_valid(ca: np.ndarray, clash_A: float = 3.0, break_A: float = 4.2) -> np.ndarray:
    """[F] bool: the frame has neither a CA clash nor a CA break (its mean is the CA validity)."""
    return ~(ca_clash(ca, clash_A) | ca_break(ca, break_A))


def peptide_bond_lengths(backbone: np.ndarray) -> np.ndarray:
    """[F, N-1] C(i)-N(i+1) distances (Angstrom) of backbone [F, N, 4, 3]."""
    return np.linalg.norm(backbone[:, 1:, 0] - backbone[:, :-1, 2], axis=-1)


def backbone_clash(backbone: np.ndarray, threshold_A: float = 2.5) -> np.ndarray:
    """[F] bool: backbone heavy atoms (N, CA, C, O) of residues |i-j| >= 2 closer than threshold_A.

    Residues i and i+1 are excluded because the peptide bond itself puts O(i) and N(i+1) ~2.25 A apart.
    """
    n_frames, n_res = backbone.shape[:2]
    atoms = backbone.reshape(n_frames, n_res * 4, 3)
    return _any_close_pair(atoms, np.repeat(np.arange(n_res), 4), threshold_A, 2)


def backbone_valid(backbone: np.ndarray, peptide_bond_max_A: float = 1.5, clash_A: float = 2.5) -> np.ndarray:
    """[F] bool: every peptide C-N bond <= peptide_bond_max_A and no backbone heavy-atom clash."""
    bonds_ok = np.all(peptide_bond_lengths(backbone) <= peptide_bond_max_A, axis=1)
    return bonds_ok & ~backbone_clash(backbone, clash_A)


def ca_aa_valid(backbone: np.ndarray, ca_clash_A: float = 3.0, ca_break_A: float = 4.2,
                peptide_bond_max_A: float = 1.5, backbone_clash_A: float = 2.5) -> np.ndarray:
    """[F] bool, our "CA+AA" validity: CA-valid (on the backbone's CA) AND backbone-valid (README.md (Metrics))."""
    return (ca_valid(backbone[:, :, 1], ca_clash_A, ca_break_A)
            & backbone_valid(backbone, peptide_bond_max_A, backbone_clash_A))


# --- distributions --------------------------------------------------------------------------------------------------
def distance_pairs(n_residues: int, min_separation: int = 4, max_pairs: int | None = None) -> np.ndarray:
    """[P, 2] residue pairs i < j with j - i >= min_separation; an evenly spaced subset if more than max_pairs."""
    i, j = np.triu_indices(n_residues, k=min_separation)
    pairs = np.stack([i, j], axis=1)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs[np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)]
    return pairs


def pair_distances(ca: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[F, P] CA distances (Angstrom) of the given residue pairs."""
    return np.linalg.norm(ca[:, pairs[:, 0]] - ca[:, pairs[:, 1]], axis=-1)


def _binned_counts(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """[D, bins + 2] counts of samples x [n, D]: bin 0 underflow, 1..bins over [lo, hi], bins + 1 overflow."""
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    inside = np.clip(np.floor((x - lo) / width).astype(np.int64) + 1, 1, bins)
    idx = np.where(x < lo, 0, np.where(x > hi, bins + 1, inside))  # [n, D]
    flat = idx + (bins + 2) * np.arange(x.shape[1])
    return np.bincount(flat.ravel(), minlength=x.shape[1] * (bins + 2)).reshape(x.shape[1], bins + 2)


def jsd(reference: np.ndarray, generated: np.ndarray, bins: int = 50, pseudocount: float = 1e-6) -> np.ndarray:
    """Jensen-Shannon distance (natural log, so in [0, sqrt(ln 2)]) per column of [n_ref, D] vs [n_gen, D].

    Histograms have `bins` equal bins over each column's reference range plus an underflow and an overflow bin, so a
    generated ensemble that leaves the reference range is penalised rather than ignored; every bin gets +pseudocount.
    1-D inputs are treated as one column and give a scalar.
    """
    scalar = np.ndim(reference) == 1
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    gen = np.asarray(generated, dtype=np.float64).reshape(len(generated), -1)
    if ref.shape[1] != gen.shape[1] or not len(ref) or not len(gen):
        raise ValueError(f"jsd needs non-empty samples with equal columns, got {ref.shape} and {gen.shape}")
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    p = _binned_counts(ref, lo, hi, bins) + pseudocount
    q = _binned_counts(gen, lo, hi, bins) + pseudocount
    out = jensenshannon(p, q, axis=1)
    return float(out[0]) if scalar else out


def tica_projection(reference_features: list[np.ndarray], lag: int, dim: int = 2):
    """Fit deeptime TICA (kinetic-map scaling) on reference feature trajectories [T, D]; returns (model, lag used).

    The lag is clamped to half the shortest reference trajectory so at least half its frames form lagged pairs.
    """
    from deeptime.decomposition import TICA

    shortest = min(len(t) for t in reference_features)
    if shortest < 4:
        raise ValueError(f"TICA needs reference trajectories of >= 4 frames, shortest has {shortest}")
    lag_used = max(1, min(lag, shortest // 2))
    model = TICA(lagtime=lag_used, dim=dim).fit([np.asarray(t, dtype=np.float64) for t in reference_features])
    return model.fetch_model(), lag_used


@dataclass(frozen=True)
class PCA:
    """Principal axes of aligned CA coordinates: mean [3N], components [k, 3N] (unit rows), explained variance [k]."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray

    def transform(self, ca: np.ndarray) -> np.ndarray:
        """[F, N, 3] aligned CA -> [F, k] projections (Angstrom)."""
        return (ca.reshape(len(ca), -1) - self.mean) @ self.components.T


def fit_pca(ca: np.ndarray, dim: int = 2) -> PCA:
    """PCA of aligned CA coordinates [F, N, 3] by SVD; each axis's sign makes its largest loading positive."""
    x = ca.reshape(len(ca), -1).astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim]
    comps = comps * np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    var = s**2 / max(len(x) - 1, 1)
    return PCA(mean, comps, var[:dim], var[:dim] / max(var.sum(), 1e-300))


def grid_edges(reference_2d: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width edges over the reference range of each of the two columns (a flat axis gets width 1 A)."""
    edges = []
    for col in reference_2d.T:
        lo, hi = float(col.min()), float(col.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges.append(np.linspace(lo, hi, bins + 1))
    return edges[0], edges[1]


def histogram_2d(points: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, int]:
    """Counts [bins_x, bins_y] of 2-D points on the grid, and how many points fall outside it."""
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=edges)
    return counts, int(len(points) - counts.sum())


def recall_precision(reference_2d: np.ndarray, generated_2d: np.ndarray,
                     edges: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Recall = fraction of reference-occupied grid bins that generated frames occupy; precision = fraction of
    generated-occupied bins that the reference occupies, where generated frames off the grid count as one extra
    generated-occupied bin the reference never occupies."""
    ref, _ = histogram_2d(reference_2d, edges)
    gen, outside = histogram_2d(generated_2d, edges)
    both = np.count_nonzero((ref > 0) & (gen > 0))
    return both / np.count_nonzero(ref > 0), both / (np.count_nonzero(gen > 0) + (outside > 0))


# --- ensembles ------------------------------------------------------------------------------------------------------
def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r (NaN if either side is constant, where r is undefined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pearsonr(a, b).statistic)


def subsample(n: int, max_n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most max_n of n items, drawn without replacement."""
    return np.arange(n) if n <= max_n else np.sort(rng.choice(n, max_n, replace=False))


def mean_pairwise_rmsd(ca: np.ndarray, max_frames: int, rng: np.random.Generator) -> float:
    """Mean optimal-superposition RMSD (Angstrom) over all frame pairs of (a subsample of) an ensemble."""
    traj = ca_trajectory(ca[subsample(len(ca), max_frames, rng)])
    if traj.n_frames < 2:
        raise ValueError("mean pairwise RMSD needs at least 2 frames")
    traj.center_coordinates()  # once, instead of once per reference frame below
    mat = np.stack([md.rmsd(traj, traj, k, parallel=False, precentered=True)
                    for k in range(traj.n_frames)])  # [F, F] nm
    return float(mat[np.triu_indices(traj.n_frames, k=1)].mean() / NM_PER_ANGSTROM)


def w2_empirical(a: np.ndarray, b: np.ndarray, max_samples: int, rng: np.random.Generator) -> float:
    """Exact empirical 2-Wasserstein distance between point clouds [n, d] and [m, d] on equal-size subsamples.

    Both sides are subsampled (without replacement) to n = min(len(a), len(b), max_samples) points; the optimal
    one-to-one matching (scipy linear_sum_assignment) of squared Euclidean costs is then the exact W2 of the two
    uniform empirical measures.
    """
    n = min(len(a), len(b), max_samples)
    sa = a[rng.choice(len(a), n, replace=False)]
    sb = b[rng.choice(len(b), n, replace=False)]
    cost = cdist(sa, sb, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def pc1_cosine(reference_ca: np.ndarray, generated_ca: np.ndarray) -> float:
    """|cos| between the first principal axes of two aligned CA ensembles (sign of a PC is arbitrary)."""
    return float(abs(fit_pca(reference_ca, 1).components[0] @ fit_pca(generated_ca, 1).components[0]))


# --- dynamics -------------------------------------------------------------------------------------------------------
def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """[min(max_lag, T-1) + 1] autocorrelation of a 1-D series about its own mean, C(0) = 1.

    The standard biased estimator (every lag's sum divided by T, as statsmodels' default): |C(k)| <= 1, and long
    lags, which few pairs support, shrink towards 0 instead of exploding.
    """
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    lags = range(min(max_lag, len(x) - 1) + 1)
    power = float(x @ x)
    if power == 0:
        return np.array([1.0] + [0.0] * (len(lags) - 1))
    return np.array([float(x[: len(x) - k] @ x[k:]) / power for k in lags])
