"""`python -m starmd generate`: a trained checkpoint + structure files (PDB/mmCIF) -> rollouts, with no MD at all.

For proteins nobody has simulated: each structure is reduced to its protein (waters, ions, ligands removed and
reported), checked for chain breaks, featurised with the checkpoint's featurizer, and rolled out from its own
conformation with the rollout code and settings the pipeline uses (`starmd.rollout`). Outputs per structure, in
`--out-dir`: `{stem}.h5` / `{stem}.pdb` / `{stem}_s{k}.xtc` (the rollout format, docs/rollout.md), `{stem}_input.pdb`
(the protein that was rolled out) and `{stem}_report.json`: what can be measured without a reference, i.e. CA
validity and RMSD to the start per frame, radius of gyration, per-residue CA RMSF and the autocorrelation of the
RMSD-to-start and radius-of-gyration series.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from starmd.config import section_json, section_keys
from starmd.data.frames import backbone_frames
from starmd.data.residues import protein_residues, sequence_to_aatype
from starmd.data.structure import check_continuous, select_protein
from starmd.errors import reading
from starmd.evaluation.metrics import autocorrelation, ca_valid, radius_of_gyration, rmsd_to, rmsf
from starmd.features import FEATURIZERS, get_featurizer
from starmd.geometry import Rigid
from starmd.io import atomic_path, sha256sum, write_json
from starmd.rollout.config import RolloutConfig
from starmd.rollout.inputs import Features, load_model
from starmd.rollout.sampler import resolve_device, run_rollout
from starmd.rollout.writers import RolloutRecord, write_outputs
from starmd.training.cli import build_diffuser

log = logging.getLogger("starmd.generate")
STRUCTURE_FIX = "give a PDB or mmCIF file of the protein"
MAX_ACF_LAG = 50  # frames


def protein_structure(path: Path, out_pdb: Path):
    """Frame 0 of `path`, protein only and continuous, written to `out_pdb` (the featurizer reads a file)."""
    import mdtraj as md

    with reading(path, "structure (PDB/mmCIF)", STRUCTURE_FIX):
        traj = md.load_frame(str(path), 0)
    protein, removed = select_protein(traj, path)
    check_continuous(protein, path)
    log.info("%s: %d residues; removed %s", path.name, protein.n_residues, removed or "nothing")
    with atomic_path(out_pdb) as tmp:
        protein.save_pdb(str(tmp))
    return protein, removed


def report(rec: RolloutRecord, removed: dict[str, int]) -> dict:
    """Reference-free measurements of one rollout (Angstrom, ps)."""
    ca, start = rec.translations, rec.start_translations  # [S, F, N, 3], [N, 3]
    s, f, n = ca.shape[:3]
    rmsd = np.stack([rmsd_to(ca[k], start) for k in range(s)])  # [S, F]
    rg = np.stack([radius_of_gyration(ca[k]) for k in range(s)])
    lag = min(MAX_ACF_LAG, f - 1)
    dt = float(rec.time_ps[0])
    return {
        "units": {"length": "Angstrom", "time": "ps"},
        "n_samples": s, "n_frames": f, "n_residues": n, "removed_residues": removed,
        "time_ps": rec.time_ps.tolist(),
        "ca_validity": float(rec.validity.mean()),
        "ca_validity_over_time": rec.validity.mean(axis=0).tolist(),
        "rmsd_to_start_over_time": rmsd.mean(axis=0).tolist(),
        "radius_of_gyration_over_time": rg.mean(axis=0).tolist(),
        "start_radius_of_gyration": float(radius_of_gyration(start)[0]),
        "ca_rmsf": rmsf(ca.reshape(s * f, n, 3), start).tolist(),
        "autocorrelation": {
            "lag_ps": (dt * np.arange(lag + 1)).tolist(),
            "rmsd_to_start": np.mean([autocorrelation(r, lag) for r in rmsd], axis=0).tolist(),
            "radius_of_gyration": np.mean([autocorrelation(r, lag) for r in rg], axis=0).tolist(),
        },
    }


def generate(checkpoint: Path, structure: Path, out_dir: Path, cfg: RolloutConfig, features_cfg: dict) -> Path:
    """Roll out one structure; returns the report's path."""
    stem = structure.stem
    input_pdb = out_dir / f"{stem}_input.pdb"
    protein, removed = protein_structure(structure, input_pdb)
    sequence, residue_index, bb = protein_residues(protein.topology, str(structure))
    residues = [f"{r.name} {r.resSeq}" for r in protein.topology.residues]
    rots, trans = backbone_frames(protein.xyz[:1, bb], str(structure), residues)
    featurizer = features_cfg.get("featurizer", "offline")
    single, pair, _ = get_featurizer(featurizer)(name=stem, sequence=sequence, pdb_path=input_pdb, cfg=features_cfg)
    features = Features(torch.from_numpy(single), torch.from_numpy(pair), sequence, input_pdb)
    model, config, weights = load_model(checkpoint, features, cfg.use_ema)
    model = model.to(resolve_device(cfg.device))
    start = Rigid(torch.from_numpy(rots[0]).double(), torch.from_numpy(trans[0]).double())
    aatype = sequence_to_aatype(sequence)
    result = run_rollout(model, build_diffuser(config), features.single, features.pair, start, cfg, label=stem,
                         aatype=torch.as_tensor(aatype))
    ca = result.translations.double().numpy()
    s, f, n = ca.shape[:3]
    record = RolloutRecord(
        rotations=result.rotations.double().numpy(), translations=ca, time_ps=result.time_ps.numpy(),
        validity=ca_valid(ca.reshape(s * f, n, 3)).reshape(s, f), start_rotations=rots[0], start_translations=trans[0],
        aatype=aatype, residue_index=residue_index,
        attrs={"name": stem, "sequence": sequence, "delta_t_ps": cfg.delta_t_ps, "seed": cfg.seed, "steps": cfg.steps,
               "tau": cfg.tau, "n_samples": cfg.n_samples, "n_frames": cfg.n_frames, "weights": weights,
               "checkpoint": str(checkpoint), "checkpoint_sha256": sha256sum(checkpoint), "featurizer": featurizer,
               "start": f"{structure} (protein only, no MD)", "wall_s": result.wall_s, "config": cfg.to_dict()})
    write_outputs(out_dir / f"{stem}.h5", record)
    path = out_dir / f"{stem}_report.json"
    write_json(path, report(record, removed))
    log.info("%s: CA validity %.3f over %d frames x %d samples -> %s", stem, float(record.validity.mean()), f, s,
             out_dir)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd generate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="runs/{run}/checkpoints/final.pt")
    parser.add_argument("--structure", required=True, nargs="+", type=Path, help="PDB or mmCIF files")
    parser.add_argument("--out-dir", required=True, type=Path, help="receives {stem}.h5/.pdb/_s{k}.xtc/_report.json")
    parser.add_argument("--rollout-json", default="{}", help="JSON of the `rollout` config section")
    parser.add_argument("--features-json", default='{"featurizer": "offline"}',
                        help="JSON of the `features` config section (the checkpoint's featurizer)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = RolloutConfig.from_json(args.rollout_json)
    features_cfg = section_keys(section_json(args.features_json, "features"), {"featurizer", *FEATURIZERS}, "features")
    stems = [p.stem for p in args.structure]
    if len(set(stems)) != len(stems):
        raise ValueError(f"generate: structures share a file stem ({stems}); their outputs would overwrite each other")
    for structure in args.structure:
        path = generate(args.checkpoint, structure, args.out_dir, cfg, features_cfg)
        print(json.dumps({"structure": str(structure), "report": str(path)}))
    return 0
