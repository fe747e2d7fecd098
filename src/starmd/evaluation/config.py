"""The `evaluation` config section: every threshold, bin count and sample cap of README.md (Metrics) in one place.

Field names are the config keys (schemas/evaluation.schema.yaml); `from_json` rejects unknown keys so a misspelt
threshold is an error naming the key, not a silently used default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from starmd.config import dataclass_section, section_json


@dataclass(frozen=True)
class EvaluationConfig:
    seed: int = 0
    reference_replica: str = "R1"  # held-out MD replica every metric compares against
    oracle_replica: str = "R2"  # a second MD replica scored like a model (upper bound)
    ca_clash_A: float = 3.0  # Str2Str/ConfDiff: any non-adjacent CA pair closer than this is a clash
    ca_break_A: float = 4.2  # Str2Str/ConfDiff: an adjacent CA pair further apart than this is a chain break
    peptide_bond_max_A: float = 1.5  # C(i)-N(i+1) longer than this is a broken peptide bond (MD: 1.33 +- 0.03 A)
    backbone_clash_A: float = 2.5  # backbone heavy atoms of residues |i-j| >= 2 closer than this clash
    jsd_bins: int = 50  # Str2Str: bins over the reference range (+ one underflow and one overflow bin)
    jsd_pseudocount: float = 1e-6  # Str2Str: added to every bin count
    min_sequence_separation: int = 4  # CA pairs with |i-j| >= this (Str2Str |i-j| > 3) enter distance features
    max_distance_pairs: int = 2000  # evenly spaced subset of those pairs (memory: frames x pairs)
    tica_lag: int = 20  # Str2Str: lag in frames of the common time grid; clamped to half the reference length
    grid_bins: int = 20  # bins per axis of the 2-D reference-PCA grid (recall, precision, density plots)
    w2_max_samples: int = 500  # frames per side in the exact empirical W2 assignment
    pairwise_rmsd_max_frames: int = 200  # frames per ensemble for the mean pairwise RMSD
    acf_max_lag: int = 50  # autocorrelation lags 0..acf_max_lag frames of the common time grid
    flag_rel_margin: float = 0.05  # oracle must beat a baseline by this relative margin to "separate" from it
    figure_max_proteins: int = 6  # proteins drawn in the per-protein figure panels (the table uses all)

    @classmethod
    def from_json(cls, text: str | None) -> "EvaluationConfig":
        raw = dataclass_section(cls, section_json(text or "{}", "evaluation"), "evaluation")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            expected = {"int": int, "float": (int, float), "str": str}[known[key].type]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ValueError(f"evaluation config: {key}={value!r} must be of type {known[key].type}")
        cfg = cls(**raw)
        for f in dataclasses.fields(cls):
            value = getattr(cfg, f.name)
            if f.type != "str" and f.name != "seed" and not (value >= 0 if f.name == "flag_rel_margin" else value > 0):
                raise ValueError(f"evaluation config: {f.name}={value!r} must be "
                                 f"{'>= 0' if f.name == 'flag_rel_margin' else '> 0'}")
        if cfg.reference_replica == cfg.oracle_replica:
            raise ValueError(f"evaluation config: oracle_replica must differ from reference_replica "
                             f"({cfg.reference_replica!r})")
        return cfg

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
