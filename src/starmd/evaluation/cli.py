"""`python -m starmd evaluate`: score one protein's rollout against its MD reference -> runs/{run}/eval/{name}.json.

The JSON holds every number and curve the figures step draws, so figures never recompute a metric.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from starmd.evaluation.config import EvaluationConfig
from starmd.evaluation.evaluate import evaluate_protein
from starmd.evaluation.inputs import load_reference, load_rollout
from starmd.evaluation.truth import load_truth
from starmd.io import sha256sum, write_json


def json_safe(obj):
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd evaluate", description=__doc__)
    parser.add_argument("--name", required=True, help="protein name, e.g. 6o2v_A")
    parser.add_argument("--rollout", required=True, type=Path, help="runs/{run}/rollouts/{name}.h5 (+ .pdb, _s{k}.xtc)")
    parser.add_argument("--frames", required=True, type=Path, help="data/frames/{name}.h5 (MD reference CA)")
    parser.add_argument("--raw-dir", required=True, type=Path,
                        help="data/raw/{dataset}/{name}/ holding {name}.pdb and {name}_prod_R{k}_fit.xtc")
    parser.add_argument("--out", required=True, type=Path, help="runs/{run}/eval/{name}.json")
    parser.add_argument("--config-json", default="{}", help="JSON of the `evaluation` config section")
    args = parser.parse_args(argv)

    cfg = EvaluationConfig.from_json(args.config_json)
    truth_path = args.raw_dir / "truth.json"  # only the synthetic known-answer system has one
    truth = load_truth(truth_path) if truth_path.exists() else None
    result = evaluate_protein(args.name, load_rollout(args.rollout), load_reference(args.frames, args.raw_dir,
                                                                                     args.name), cfg, truth)
    result["inputs"] = {"rollout": str(args.rollout), "rollout_sha256": sha256sum(args.rollout),
                        "frames": str(args.frames), "frames_sha256": sha256sum(args.frames),
                        "raw_dir": str(args.raw_dir), "truth": str(truth_path) if truth else None}
    write_json(args.out, json_safe(result))
    return 0
