"""Score one protein: the model rollout, the oracle replica and the two baselines against the reference replica.

Every ensemble goes through the same `_score` code on a common time grid, aligned the same way (every CA frame
Kabsch-superposed onto the start structure's CA); the result holds each metric per ensemble, a flag saying which
baselines the oracle fails to beat, and the curves the figures step plots without recomputing anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from starmd.evaluation import metrics as M
from starmd.evaluation.comparators import replica_frames, thermal_noise_frames
from starmd.evaluation.config import EvaluationConfig
from starmd.evaluation.inputs import Reference, Rollout
from starmd.evaluation.truth import md_segments, truth_section

FORMAT_VERSION = 1
ENSEMBLES = ("model", "oracle", "baseline_noise", "baseline_replica", "reference")
BASELINES = ("baseline_noise", "baseline_replica")
ALIGNMENT = "every CA frame Kabsch-superposed (mdtraj.superpose) onto the start structure CA (frames start/)"

# metric -> (higher is better? None = descriptive only, description)
METRICS: dict[str, tuple[bool | None, str]] = {
    "ca_validity": (True, "fraction of frames with no CA clash and no CA break"),
    "ca_clash_fraction": (False, "fraction of frames with a non-adjacent CA pair < ca_clash_A"),
    "ca_break_fraction": (False, "fraction of frames with an adjacent CA pair > ca_break_A"),
    "backbone_validity": (True, "fraction of frames with every peptide C-N <= peptide_bond_max_A, no backbone clash"),
    "ca_aa_validity": (True, "fraction of frames both CA-valid and backbone-valid (our CA+AA validity)"),
    "jsd_pairwise_distance": (False, "JS distance of CA pair distances (|i-j| >= min_sequence_separation), "
                                     "mean over pairs"),
    "jsd_radius_of_gyration": (False, "JS distance of the CA radius of gyration"),
    "jsd_tica": (False, "JS distance on reference TIC1 and TIC2 (CA distances), mean of the two"),
    "jsd_pca": (False, "JS distance on reference PC1 and PC2 (aligned CA), mean of the two"),
    "recall_pca": (True, "fraction of reference-occupied 2-D PCA bins the ensemble occupies"),
    "precision_pca": (True, "fraction of ensemble-occupied 2-D PCA bins the reference occupies"),
    "rmsf_pearson_r": (True, "Pearson r of per-residue CA RMSF with the reference"),
    "mean_pairwise_rmsd_A": (None, "mean CA RMSD over frame pairs (Angstrom)"),
    "pairwise_rmsd_abs_error_A": (False, "|mean pairwise RMSD - reference's| (Angstrom)"),
    "w2_pca_A": (False, "exact empirical W2 in the reference PC1-PC2 plane (Angstrom)"),
    "pc1_cosine": (True, "|cos| between the ensemble's and the reference's first principal axis"),
    "acf_pc1_mae": (False, "mean |ACF - reference ACF| of the reference-PC1 projection over lags 1..the "
                           "reference decorrelation lag"),
}


@dataclass(frozen=True)
class Ensemble:
    """Trajectories of one ensemble on the common time grid: CA aligned [F, N, 3] and backbone [F, N, 4, 3]."""

    ca: list[np.ndarray]
    backbone: list[np.ndarray]
    source: str

    @property
    def pooled_ca(self) -> np.ndarray:
        return np.concatenate(self.ca)

    @property
    def n_frames(self) -> int:
        return sum(len(t) for t in self.ca)


def common_time_grid(generated_dt_ps: float, reference_dt_ps: float) -> tuple[int, int, float]:
    """(generated stride, reference stride, spacing ps): subsample the finer series to the coarser one's spacing.

    The spacings must be integer multiples of each other (within 0.1%); otherwise no common grid exists and lags in
    frames would mean different physical times, so it is an error.
    """
    for fine, coarse, swap in ((reference_dt_ps, generated_dt_ps, False), (generated_dt_ps, reference_dt_ps, True)):
        ratio = coarse / fine
        k = round(ratio)
        if k >= 1 and abs(ratio - k) <= 1e-3 * k:
            return (k, 1, coarse) if swap else (1, k, coarse)
    raise ValueError(f"generated frame spacing {generated_dt_ps} ps and reference spacing {reference_dt_ps} ps are "
                     f"not integer multiples of each other; no common time grid")


class _ReferenceStats:
    """Everything fitted on the reference once: distance pairs, TICA, PCA, grid, RMSF and ACF."""

    def __init__(self, reference: Ensemble, start_ca: np.ndarray, cfg: EvaluationConfig):
        self.start_ca = start_ca
        self.ca = reference.pooled_ca
        self.pairs = M.distance_pairs(self.ca.shape[1], cfg.min_sequence_separation, cfg.max_distance_pairs)
        if len(self.pairs) < 2:  # 2-D TICA needs at least two distance features
            raise ValueError(f"protein has {self.ca.shape[1]} residues: fewer than 2 CA pairs with |i-j| >= "
                             f"{cfg.min_sequence_separation}")
        self.pwd = M.pair_distances(self.ca, self.pairs)
        self.rg = M.radius_of_gyration(self.ca)
        self.tica, self.tica_lag = M.tica_projection([M.pair_distances(t, self.pairs) for t in reference.ca],
                                                     cfg.tica_lag)
        self.tic = self.tica.transform(self.pwd)[:, :2]
        self.pca = M.fit_pca(self.ca, 2)
        self.pc = self.pca.transform(self.ca)
        self.edges = M.grid_edges(self.pc, cfg.grid_bins)
        self.rmsf = M.rmsf(self.ca, start_ca)


def _acf(ens: Ensemble, stats: _ReferenceStats, max_lag: int) -> np.ndarray:
    """Mean over the ensemble's trajectories of the reference-PC1 autocorrelation, truncated to the shortest one."""
    curves = [M.autocorrelation(stats.pca.transform(t)[:, 0], max_lag)
              for t in ens.ca if len(t) > 1]
    if not curves:
        raise ValueError(f"{ens.source}: autocorrelation needs a trajectory of at least 2 frames")
    n = min(len(c) for c in curves)
    return np.mean([c[:n] for c in curves], axis=0)


def decorrelation_lag(acf: np.ndarray) -> int:
    """First lag >= 1 at which an autocorrelation drops below 1/e (the last lag if it never does)."""
    below = np.flatnonzero(acf[1:] < 1 / math.e)
    return int(below[0]) + 1 if len(below) else len(acf) - 1


def _score(ens: Ensemble, stats: _ReferenceStats, ref_acf: np.ndarray, ref_pairwise_rmsd: float,
           cfg: EvaluationConfig, rng: np.random.Generator) -> tuple[dict[str, float], dict]:
    """Scalar metrics of one ensemble and its per-ensemble curve data."""
    ca = ens.pooled_ca
    backbone = np.concatenate(ens.backbone)
    clash, brk = M.ca_clash(ca, cfg.ca_clash_A), M.ca_break(ca, cfg.ca_break_A)
    bb_ok = M.backbone_valid(backbone, cfg.peptide_bond_max_A, cfg.backbone_clash_A)
    ca_aa_ok = M.ca_valid(backbone[:, :, 1], cfg.ca_clash_A, cfg.ca_break_A) & bb_ok
    pwd = M.pair_distances(ca, stats.pairs)
    pc = stats.pca.transform(ca)
    recall, precision = M.recall_precision(stats.pc, pc, stats.edges)
    rmsf = M.rmsf(ca, stats.start_ca)
    pairwise = M.mean_pairwise_rmsd(ca, cfg.pairwise_rmsd_max_frames, rng)
    acf = _acf(ens, stats, cfg.acf_max_lag)
    window = min(decorrelation_lag(ref_acf), len(acf) - 1)  # lags past it are dominated by finite-length noise
    bins, pseudo = cfg.jsd_bins, cfg.jsd_pseudocount
    scores = {
        "ca_validity": float(np.mean(~(clash | brk))),
        "ca_clash_fraction": float(np.mean(clash)),
        "ca_break_fraction": float(np.mean(brk)),
        "backbone_validity": float(np.mean(bb_ok)),
        "ca_aa_validity": float(np.mean(ca_aa_ok)),
        "jsd_pairwise_distance": float(np.mean(M.jsd(stats.pwd, pwd, bins, pseudo))),
        "jsd_radius_of_gyration": M.jsd(stats.rg, M.radius_of_gyration(ca), bins, pseudo),
        "jsd_tica": float(np.mean(M.jsd(stats.tic, stats.tica.transform(pwd)[:, :2], bins, pseudo))),
        "jsd_pca": float(np.mean(M.jsd(stats.pc, pc, bins, pseudo))),
        "recall_pca": recall,
        "precision_pca": precision,
        "rmsf_pearson_r": M.pearson_r(stats.rmsf, rmsf),
        "mean_pairwise_rmsd_A": pairwise,
        "pairwise_rmsd_abs_error_A": abs(pairwise - ref_pairwise_rmsd),
        "w2_pca_A": M.w2_empirical(stats.pc, pc, cfg.w2_max_samples, rng),
        "pc1_cosine": M.pc1_cosine(stats.ca, ca),
        "acf_pc1_mae": float(np.mean(np.abs(acf[1:window + 1] - ref_acf[1:window + 1]))),
    }
    hist, outside = M.histogram_2d(pc, stats.edges)
    return scores, {"rmsf": rmsf.tolist(), "acf": acf.tolist(), "pca_hist": hist.tolist(), "pca_outside": outside}


def _time_curves(ens: Ensemble, time_ps: np.ndarray, start_ca: np.ndarray, cfg: EvaluationConfig) -> dict:
    """Validity and RMSD-to-start vs time over the first len(time_ps) frames, mean over the ensemble's trajectories."""
    ca = [t[: len(time_ps)] for t in ens.ca]
    n = min(len(t) for t in ca)
    ca_ok = [M.ca_valid(t[:n], cfg.ca_clash_A, cfg.ca_break_A) for t in ca]
    aa_ok = [M.ca_aa_valid(b[:n], cfg.ca_clash_A, cfg.ca_break_A, cfg.peptide_bond_max_A, cfg.backbone_clash_A)
             for b in ens.backbone]
    return {
        "time_ps": time_ps[:n].tolist(),
        "ca_validity": np.mean(ca_ok, axis=0).tolist(),
        "ca_aa_validity": np.mean(aa_ok, axis=0).tolist(),
        "rmsd_to_start_A": np.mean([M.rmsd_to(t[:n], start_ca) for t in ca], axis=0).tolist(),
    }


def _separation_flags(values: dict[str, float], higher_is_better: bool, margin: float) -> list[str]:
    """Baselines the oracle does not beat by more than `margin` (relative): the metric cannot tell them apart."""
    oracle = values["oracle"]
    failed = []
    for name in BASELINES:
        base = values[name]
        if math.isnan(oracle) or math.isnan(base):
            failed.append(name)
            continue
        gain = (oracle - base) if higher_is_better else (base - oracle)
        if gain <= margin * max(abs(oracle), abs(base), 1e-12):
            failed.append(name)
    return failed


def evaluate_protein(name: str, rollout: Rollout, reference: Reference, cfg: EvaluationConfig,
                     truth: dict | None = None) -> dict:
    """All metrics and curves of one protein as a JSON-ready dict (README.md (Metrics) describes every entry).

    With `truth` (the synthetic system's truth.json) every ensemble is also scored against the exact statistics
    (`truth` block; starmd.evaluation.truth)."""
    if rollout.sequence != reference.sequence:
        raise ValueError(f"{name}: rollout sequence {rollout.sequence!r} differs from frames sequence "
                         f"{reference.sequence!r}")
    for role, rep in (("reference_replica", cfg.reference_replica), ("oracle_replica", cfg.oracle_replica)):
        if rep not in reference.ca:
            raise ValueError(f"{name}: {role} {rep!r} not in the frames file (replicas {sorted(reference.ca)})")
    gen_stride, ref_stride, spacing = common_time_grid(rollout.delta_t_ps, reference.dt_ps)
    rng = np.random.default_rng([cfg.seed, len(ENSEMBLES)])  # baseline draws; per-ensemble streams below

    def ensemble_rng(key: str) -> np.random.Generator:
        """Independent of scoring order; the reference's stream reproduces its own subsamples exactly."""
        return np.random.default_rng([cfg.seed, ENSEMBLES.index(key)])

    def align(xyz: np.ndarray) -> np.ndarray:
        return M.superpose(xyz, reference.start_ca)

    def replica(rep: str) -> Ensemble:
        return Ensemble([align(reference.ca[rep][::ref_stride])], [reference.backbone[rep][::ref_stride]],
                        f"MD replica {rep}, stored frames at stride {ref_stride}")

    model = Ensemble([align(t[::gen_stride]) for t in rollout.ca], [b[::gen_stride] for b in rollout.backbone],
                     f"{len(rollout.ca)} rollout samples, frames at stride {gen_stride}")
    ens = {"model": model, "reference": replica(cfg.reference_replica), "oracle": replica(cfg.oracle_replica)}
    stats = _ReferenceStats(ens["reference"], reference.start_ca, cfg)
    n = model.n_frames
    noise_bb = thermal_noise_frames(reference.start_backbone, stats.rmsf, n, rng)
    ens["baseline_noise"] = Ensemble([align(noise_bb[:, :, 1])], [noise_bb],
                                     f"start structure + Gaussian noise matched to {cfg.reference_replica} RMSF")
    pool = [rep for rep in sorted(reference.ca) if rep != cfg.reference_replica]
    pool_ca, pool_bb = replica_frames([reference.ca[r] for r in pool], [reference.backbone[r] for r in pool], n, rng)
    ens["baseline_replica"] = Ensemble([align(pool_ca)], [pool_bb], f"random frames of replicas {pool}")

    ref_acf = _acf(ens["reference"], stats, cfg.acf_max_lag)
    ref_pairwise = M.mean_pairwise_rmsd(stats.ca, cfg.pairwise_rmsd_max_frames, ensemble_rng("reference"))
    scores, per_ens = {}, {}
    for key in ENSEMBLES:
        scores[key], per_ens[key] = _score(ens[key], stats, ref_acf, ref_pairwise, cfg, ensemble_rng(key))

    metrics = {}
    for metric, (higher, description) in METRICS.items():
        values = {key: scores[key][metric] for key in ENSEMBLES}
        entry = {"description": description, "higher_is_better": higher, **values}
        if higher is not None:
            entry["oracle_not_separated_from"] = _separation_flags(values, higher, cfg.flag_rel_margin)
        metrics[metric] = entry

    # model: rollout times after its own start frame; MD replicas: frame k at k x spacing after the PDB start
    model_time = rollout.time_ps[::gen_stride]
    md_time = np.arange(len(model_time)) * spacing
    n_lags = min(len(per_ens[k]["acf"]) for k in ENSEMBLES)
    curves = {
        "time": {"model": _time_curves(model, model_time, rollout.start_ca, cfg),
                 **{k: _time_curves(ens[k], md_time, reference.start_ca, cfg) for k in ("oracle", "reference")}},
        "autocorrelation": {"lag_ps": (np.arange(n_lags) * spacing).tolist(),
                            **{k: per_ens[k]["acf"][:n_lags] for k in ENSEMBLES}},
        "rmsf": {"residue_index": np.asarray(reference.residue_index).tolist(),
                 **{k: per_ens[k]["rmsf"] for k in ENSEMBLES}},
        "pca": {"x_edges": stats.edges[0].tolist(), "y_edges": stats.edges[1].tolist(),
                "explained_variance_ratio": stats.pca.explained_variance_ratio.tolist(),
                "hist": {k: per_ens[k]["pca_hist"] for k in ENSEMBLES},
                "outside": {k: per_ens[k]["pca_outside"] for k in ENSEMBLES}},
    }
    result = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "config": cfg.as_dict(),
        "alignment": ALIGNMENT,
        "rollout_start_rmsd_to_pdb_start_A": float(M.rmsd_to(rollout.start_ca[None], reference.start_ca)[0]),
        "time_grid": {"spacing_ps": spacing, "generated_delta_t_ps": rollout.delta_t_ps,
                      "reference_dt_ps": reference.dt_ps, "generated_stride": gen_stride,
                      "reference_stride": ref_stride},
        "acf": {"decorrelation_lag_frames": decorrelation_lag(ref_acf),
                "decorrelation_lag_ps": decorrelation_lag(ref_acf) * spacing},
        "tica": {"lag_frames": stats.tica_lag, "lag_ps": stats.tica_lag * spacing,
                 "n_distance_pairs": int(len(stats.pairs))},
        "ensembles": {k: {"source": ens[k].source, "n_trajectories": len(ens[k].ca), "n_frames": ens[k].n_frames}
                      for k in ENSEMBLES},
        "metrics": metrics,
        "curves": curves,
    }
    if truth is not None:
        length = min(len(t) for t in model.ca)
        segments = md_segments(ens["oracle"].ca[0], len(model.ca), length)
        result["truth"] = truth_section(
            {"model": model.ca, "oracle_segments": segments,
             **{k: ens[k].ca for k in ("oracle", "reference", "baseline_noise", "baseline_replica")}},
            truth, spacing, cfg.pairwise_rmsd_max_frames, cfg.seed)
        result["truth"]["oracle_segments"] = (f"{len(segments)} consecutive segments of {length} frames of MD replica "
                                              f"{cfg.oracle_replica}: the model's sample size, the noise floor")
    return result
