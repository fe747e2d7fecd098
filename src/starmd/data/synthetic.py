"""`prepare-synthetic`: a known-answer MD dataset whose statistics are exact, in the on-disk shape of ATLAS.

Twenty ps of peptide MD cannot tell a model that learned dynamics from one that did not. Here the backbone heavy atoms
(N, CA, C, O) of a 40-residue helical hairpin move under underdamped Langevin dynamics in an elastic network
(harmonic springs between atoms closer than a cutoff; springs of the local covalent geometry, atoms within 3 A, much
stiffer so that bond lengths stay physical in this linear model), integrated *exactly* in its normal
modes, so the stationary distribution, the RMSF and the autocorrelation of every mode are known in closed form
(`truth.json` beside the data).

Dynamics (units nm, ps, amu, kJ/mol). With H the spring network's Hessian and M the atomic masses, the mass-weighted
modes v_k, omega_k^2 = eig(M^-1/2 H M^-1/2) (six rigid-body zero modes dropped) decouple into independent oscillators
    dq_k = p_k dt,  dp_k = -omega_k^2 q_k dt - gamma_k p_k dt + sqrt(2 gamma_k kT) dW,  x = x_ref + M^-1/2 V q.
Damping is Rayleigh stiffness-proportional, gamma_k = beta omega_k^2 (a damping matrix beta H, which keeps the modes
decoupled), so the damping ratio zeta_k = beta omega_k / 2 grows with frequency: the slowest modes oscillate over a
few frames (underdamped, `damping_ratio_slowest`) and the fast ones are overdamped. One frame step of (q_k, p_k) is the
exact Ornstein-Uhlenbeck transition: mean Phi x with Phi = expm(A h), covariance Sigma - Phi Sigma Phi^T with
Sigma = diag(kT / omega^2, kT); no integration error at any frame interval. Only positions are written, so velocities
are hidden and the position process has memory. Each replica starts at the reference (mean) structure with
Maxwell-Boltzmann momenta, as MD replicas start from one structure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch

from starmd.config import dataclass_section
from starmd.geometry.elastic import anm_hessian
from starmd.io import atomic_dir, write_json

log = logging.getLogger(__name__)

KB_KJ_PER_MOL_K = 0.0083144626  # Boltzmann constant (kJ/mol/K)
MASS_AMU = {"N": 14.007, "C": 12.011, "O": 15.999}
BACKBONE = ("N", "CA", "C", "O")
_N_RIGID = 6


@dataclass(frozen=True)
class SyntheticConfig:
    """The `synthetic` config section (schemas/synthetic.schema.yaml has the descriptions)."""

    name: str = "enm1_A"
    sequence: str = "AEELLKKAEELLKKAEELGNPSGEELLKKAEELLKKAEEL"
    helix_phi_psi: list[float] = field(default_factory=lambda: [-57.0, -47.0])
    turn_start: int = 18  # index of the first turn residue; both helices are alpha
    turn_phi_psi: list[list[float]] = field(
        default_factory=lambda: [[-90.0, 0.0], [-60.0, 120.0], [-60.0, -40.0], [-60.0, 120.0]])
    cutoff_a: float = 7.0
    spring_constant: float = 1000.0  # kJ/mol/nm^2
    local_cutoff_a: float = 3.0  # bonds and bond angles (1-2 and 1-3 pairs) ...
    local_factor: float = 100.0  # ... are this much stiffer
    temperature_k: float = 300.0
    damping_ratio_slowest: float = 0.2
    frame_interval_ps: float = 0.5
    n_frames: int = 10000  # per replica
    replica_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    truth_max_lag_frames: int = 200
    truth_n_modes: int = 3  # slowest modes whose exact autocorrelation is reported and scored
    truth_mc_samples: int = 2000  # exact stationary samples for the superposed-RMSD expectations
    truth_seed: int = 0

    @classmethod
    def from_json(cls, text: str) -> "SyntheticConfig":
        import json

        cfg = cls(**dataclass_section(cls, json.loads(text), "synthetic"))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        n = len(self.sequence)
        if n < 40:
            raise ValueError(f"synthetic.sequence: need at least 40 residues (a protein-like chain), got {n}")
        if not 0 <= self.turn_start <= n - len(self.turn_phi_psi):
            raise ValueError(f"synthetic.turn_start={self.turn_start}: the turn must lie inside the {n}-residue chain")
        if not 0 < self.damping_ratio_slowest < 1:
            raise ValueError(f"synthetic.damping_ratio_slowest={self.damping_ratio_slowest}: must lie in (0, 1) "
                             f"for the slowest mode to be underdamped")
        for key in ("cutoff_a", "spring_constant", "local_cutoff_a", "local_factor", "temperature_k",
                    "frame_interval_ps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"synthetic.{key} must be > 0, got {getattr(self, key)}")
        if self.n_frames < 2 or not self.replica_seeds:
            raise ValueError("synthetic: need n_frames >= 2 and at least one replica seed")


# --- structure and network ----------------------------------------------------------------------------------------
def build_chain(cfg: SyntheticConfig):
    """Backbone-only (N, CA, C, O) mdtraj Trajectory of the helix-turn-helix built from cfg's dihedrals."""
    import mdtraj as md
    from Bio.PDB import PDBIO
    from PeptideBuilder import PeptideBuilder

    n = len(cfg.sequence)
    phi_psi = [list(cfg.helix_phi_psi)] * n
    for i, angles in enumerate(cfg.turn_phi_psi):
        phi_psi[cfg.turn_start + i] = list(angles)
    structure = PeptideBuilder.make_structure(cfg.sequence, [a[0] for a in phi_psi[1:]], [a[1] for a in phi_psi[1:]])
    writer = PDBIO()
    writer.set_structure(structure)
    with tempfile.NamedTemporaryFile("w", suffix=".pdb") as tmp:  # mdtraj reads PDB from a path only
        writer.save(tmp)
        tmp.flush()
        traj = md.load_pdb(tmp.name)
    traj = traj.atom_slice(traj.top.select("backbone or name O"))
    ca = traj.xyz[0, traj.top.select("name CA")]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)[np.triu_indices(n, 2)]
    if d.min() < 0.42:
        raise ValueError(f"synthetic: the built chain has a CA-CA clash ({10 * d.min():.2f} A); change turn_phi_psi")
    return traj


def hessian(xyz_nm: np.ndarray, cutoff_nm: float, k: float, local_cutoff_nm: float, local_factor: float
            ) -> np.ndarray:
    """Anisotropic-network Hessian [3M, 3M] (kJ/mol/nm^2) of springs k between atoms closer than cutoff, k x
    local_factor for those closer than local_cutoff."""
    d = np.linalg.norm(xyz_nm[None] - xyz_nm[:, None], axis=-1)  # [M, M]
    kk = np.where(d < local_cutoff_nm, k * local_factor, k) * (d < cutoff_nm)  # [M, M]; the diagonal is ignored
    return anm_hessian(torch.from_numpy(np.asarray(xyz_nm, dtype=np.float64)), torch.from_numpy(kk)).numpy()


@dataclass(frozen=True)
class ModeSystem:
    """Normal modes of the network with their damping: everything the exact dynamics and the truth need."""

    x_ref: np.ndarray  # [M, 3] nm, mean structure
    masses: np.ndarray  # [M] amu
    omega: np.ndarray  # [K] rad/ps, ascending
    gamma: np.ndarray  # [K] 1/ps
    shapes: np.ndarray  # [3M, K] Cartesian mode shapes M^-1/2 v_k (x = x_ref + shapes q)
    kt: float

    @property
    def variances(self) -> np.ndarray:
        """Stationary variance of each mode coordinate kT / omega^2 (amu nm^2)."""
        return self.kt / self.omega**2

    def propagator(self, h: float) -> np.ndarray:
        """Phi_k = expm(A_k h) [K, 2, 2] for the state (q, p) of each mode."""
        out = np.empty((len(self.omega), 2, 2))
        for k, (w, g) in enumerate(zip(self.omega, self.gamma)):
            out[k] = scipy.linalg.expm(np.array([[0.0, 1.0], [-w * w, -g]]) * h)
        return out

    def step_covariance(self, phi: np.ndarray) -> np.ndarray:
        """Covariance [K, 2, 2] of the exact transition noise, Sigma - Phi Sigma Phi^T."""
        sigma = np.zeros((len(self.omega), 2, 2))
        sigma[:, 0, 0] = self.variances
        sigma[:, 1, 1] = self.kt
        return sigma - phi @ sigma @ phi.transpose(0, 2, 1)

    def mode_acf(self, lags_ps: np.ndarray) -> np.ndarray:
        """Normalised position autocorrelation of every mode, [K, lags] = (expm(A tau))_qq."""
        return np.stack([self.propagator(float(t))[:, 0, 0] for t in lags_ps], axis=1)

    def cartesian_covariance(self) -> np.ndarray:
        """Exact stationary covariance of the Cartesian coordinates [3M, 3M] (nm^2)."""
        return (self.shapes * self.variances) @ self.shapes.T


def mode_system(traj, cfg: SyntheticConfig) -> ModeSystem:
    """Diagonalise the mass-weighted Hessian; Rayleigh damping beta = 2 zeta_1 / omega_1."""
    x = traj.xyz[0].astype(np.float64)
    masses = np.array([MASS_AMU[a.element.symbol] for a in traj.top.atoms])
    h = hessian(x, cfg.cutoff_a / 10.0, cfg.spring_constant, cfg.local_cutoff_a / 10.0, cfg.local_factor)
    inv_sqrt_m = np.repeat(masses, 3) ** -0.5
    w2, v = np.linalg.eigh(h * inv_sqrt_m[:, None] * inv_sqrt_m[None])
    if w2[_N_RIGID] < 1e-6 * w2[-1]:
        raise ValueError("synthetic: the elastic network has more than 6 zero modes (disconnected); raise cutoff_a")
    omega = np.sqrt(w2[_N_RIGID:])
    beta = 2.0 * cfg.damping_ratio_slowest / omega[0]
    return ModeSystem(x_ref=x, masses=masses, omega=omega, gamma=beta * omega**2,
                      shapes=inv_sqrt_m[:, None] * v[:, _N_RIGID:], kt=KB_KJ_PER_MOL_K * cfg.temperature_k)


# --- exact trajectories ---------------------------------------------------------------------------------------------
def simulate(system: ModeSystem, n_frames: int, frame_interval_ps: float, seed: int) -> np.ndarray:
    """Positions [n_frames, M, 3] (nm) at frame_interval_ps, 1..n_frames after a start at x_ref with thermal momenta."""
    rng = np.random.default_rng(seed)
    phi = system.propagator(frame_interval_ps)
    chol = np.linalg.cholesky(system.step_covariance(phi) + 1e-300 * np.eye(2))  # [K, 2, 2]
    n_modes = len(system.omega)
    state = np.zeros((n_modes, 2))
    state[:, 1] = np.sqrt(system.kt) * rng.standard_normal(n_modes)
    q = np.empty((n_frames, n_modes))
    for f in range(n_frames):
        state = np.einsum("kij,kj->ki", phi, state) + np.einsum("kij,kj->ki", chol, rng.standard_normal((n_modes, 2)))
        q[f] = state[:, 0]
    return system.x_ref[None] + (q @ system.shapes.T).reshape(n_frames, -1, 3)


def stationary_samples(system: ModeSystem, n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent draws [n, M, 3] (nm) from the exact stationary distribution."""
    q = rng.standard_normal((n, len(system.omega))) * np.sqrt(system.variances)
    return system.x_ref[None] + (q @ system.shapes.T).reshape(n, -1, 3)


# --- the exact answers ------------------------------------------------------------------------------------------------
def ca_projections(system: ModeSystem, ca_atoms: np.ndarray, n_modes: int) -> np.ndarray:
    """Unit vectors [n_modes, 3 N_ca]: the best linear estimate of each slow mode's coordinate from CA positions.

    A generated frame has CA (and reconstructed N, C, O), so modes are read from CA alone: w_k = Sigma_CA^+
    Cov(x_CA, q_k), the regression of q_k on the CA coordinates. Reading the CA part of the mode shape instead would
    mix in the fast modes, whose CA parts are not orthogonal to it.
    """
    idx = (3 * ca_atoms[:, None] + np.arange(3)).ravel()
    u = system.shapes[idx]  # [3N, K]
    cov_ca = (u * system.variances) @ u.T
    w = (np.linalg.pinv(cov_ca, hermitian=True) @ (u[:, :n_modes] * system.variances[:n_modes])).T  # [n, 3N]
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def truth(system: ModeSystem, traj, cfg: SyntheticConfig) -> dict[str, Any]:
    """Exact statistics of the CA atoms (Angstrom, ps, frames) and the data evaluation needs to score against them."""
    import mdtraj as md

    ca = traj.top.select("name CA")
    n_ca = len(ca)
    cov = system.cartesian_covariance() * 100.0  # A^2
    idx = (3 * ca[:, None] + np.arange(3)).ravel()
    cov_ca = cov[np.ix_(idx, idx)]
    rmsf = np.sqrt(np.trace(cov_ca.reshape(n_ca, 3, n_ca, 3), axis1=1, axis2=3).diagonal())
    lags = np.arange(cfg.truth_max_lag_frames + 1)
    lags_ps = lags * cfg.frame_interval_ps
    acf_modes = system.mode_acf(lags_ps)  # [K, lags]
    w = ca_projections(system, ca, cfg.truth_n_modes)  # [n, 3 N]
    # Projection y = w . x_CA mixes every mode m with weight (w . u_m)^2 var_m: exact ACF of y.
    u = system.shapes[idx] * 10.0  # [3N, K] A per unit q
    weight = (w @ u) ** 2 * system.variances  # [n, K]
    proj_cov = weight @ acf_modes  # [n, lags]
    acf_proj = proj_cov / proj_cov[:, :1]
    own_share = weight[np.arange(cfg.truth_n_modes), np.arange(cfg.truth_n_modes)] / weight.sum(1)
    # Superposed RMSD expectations by exact stationary sampling, with the same mdtraj calls evaluation uses.
    rng = np.random.default_rng(cfg.truth_seed)
    samples = md.Trajectory(stationary_samples(system, cfg.truth_mc_samples, rng)[:, ca].astype(np.float32),
                            traj.top.subset(ca))
    ref = md.Trajectory(system.x_ref[None, ca].astype(np.float32), samples.top)
    to_start = 10.0 * md.rmsd(samples, ref, 0)
    half = cfg.truth_mc_samples // 2
    pair = 10.0 * np.array([md.rmsd(samples[half + i], samples, i)[0] for i in range(half)])
    zeta = system.gamma / (2 * system.omega)
    # Decorrelation time of a mode = 1 / (decay rate of its ACF envelope) = 1 / -Re(slowest eigenvalue of A_k):
    # zeta omega when underdamped (the oscillation decays as exp(-zeta omega t)), the slower root when overdamped.
    rate = system.omega * (zeta - np.sqrt(np.clip(zeta**2 - 1, 0, None)))
    return {
        "units": {"length": "Angstrom", "time": "ps", "lag": "frames of frame_interval_ps"},
        "frame_interval_ps": cfg.frame_interval_ps,
        "temperature_k": cfg.temperature_k,
        "n_residues": n_ca,
        "mean_ca_A": (system.x_ref[ca] * 10.0).tolist(),
        "ca_rmsf_A": rmsf.tolist(),
        "ca_rms_to_mean_A": float(np.sqrt(np.trace(cov_ca) / n_ca)),
        "pairwise_rms_deviation_A": float(np.sqrt(2 * np.trace(cov_ca) / n_ca)),
        "mean_pairwise_rmsd_A": float(pair.mean()),
        "mean_pairwise_rmsd_se_A": float(pair.std(ddof=1) / np.sqrt(len(pair))),
        "rmsd_to_start_plateau_A": float(to_start.mean()),
        "rmsd_to_start_plateau_se_A": float(to_start.std(ddof=1) / np.sqrt(len(to_start))),
        "modes": {
            "omega_per_ps": system.omega.tolist(),
            "gamma_per_ps": system.gamma.tolist(),
            "damping_ratio": zeta.tolist(),
            "variance_amu_nm2": system.variances.tolist(),
            "n_underdamped": int((zeta < 1).sum()),
            "n_overdamped": int((zeta >= 1).sum()),
        },
        "slow_modes": {
            "n": cfg.truth_n_modes,
            "projection_ca": w.tolist(),
            "period_frames": (2 * np.pi / (system.omega[:cfg.truth_n_modes] * np.sqrt(
                np.clip(1 - zeta[:cfg.truth_n_modes] ** 2, 1e-12, None))) / cfg.frame_interval_ps).tolist(),
            "damping_ratio": zeta[:cfg.truth_n_modes].tolist(),
            "variance_A2": proj_cov[:, 0].tolist(),
            "own_mode_variance_fraction": own_share.tolist(),
            "acf": acf_proj.tolist(),
            "decorrelation_time_frames": (1.0 / (rate[:cfg.truth_n_modes] * cfg.frame_interval_ps)).tolist(),
        },
    }


def prepare_synthetic(out_dir: str | Path, cfg: SyntheticConfig) -> Path:
    """Write `{name}.pdb`, `{name}_prod_R{k}_fit.xtc`, `provenance.json` and `truth.json` into out_dir."""
    import mdtraj as md

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    traj = build_chain(cfg)
    system = mode_system(traj, cfg)
    with atomic_dir(out_dir) as work:
        traj.save_pdb(str(work / f"{cfg.name}.pdb"))
        for k, seed in enumerate(cfg.replica_seeds, start=1):
            xyz = simulate(system, cfg.n_frames, cfg.frame_interval_ps, seed)
            time_ps = cfg.frame_interval_ps * np.arange(1, cfg.n_frames + 1)
            md.Trajectory(xyz.astype(np.float32), traj.top, time=time_ps).save_xtc(
                str(work / f"{cfg.name}_prod_R{k}_fit.xtc"))
        write_json(work / "truth.json", truth(system, traj, cfg))
        write_json(work / "provenance.json", {
            "name": cfg.name, "sequence": cfg.sequence, "engine": "starmd exact normal-mode Langevin",
            "model": "elastic network (N, CA, C, O), Rayleigh damping gamma_k = beta omega_k^2",
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "n_atoms": traj.n_atoms, "frame_interval_ps": cfg.frame_interval_ps,
            "n_frames_per_replica": cfg.n_frames, "replica_seeds": list(cfg.replica_seeds),
            "fit": "none needed: the network has no rigid-body motion (zero modes removed)",
            "total_wall_s": round(time.perf_counter() - t0, 2),
        })
    log.info("%s: wrote %s in %.1f s", cfg.name, out_dir, time.perf_counter() - t0)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd prepare-synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the system's name; must equal synthetic.name")
    parser.add_argument("--out-dir", required=True, type=Path, help="data/raw/synthetic/{name}")
    parser.add_argument("--config-json", required=True, help="JSON of the `synthetic` config section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = SyntheticConfig.from_json(args.config_json)
    if args.name != cfg.name:
        parser.error(f"--name {args.name!r} is not the configured system synthetic.name={cfg.name!r}")
    prepare_synthetic(args.out_dir, cfg)
    return 0
