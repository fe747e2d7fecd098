"""`featurize`: start structure (+ sequence) -> data/features/{featurizer}/{name}.h5 through the chosen featurizer."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from starmd.config import section_json, section_keys
from starmd.data.frames import RAW_FIX
from starmd.data.residues import protein_residues
from starmd.errors import reading
from starmd.features import FEATURIZERS, get_featurizer
from starmd.features.io import write_features

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starmd featurize", description=__doc__.split("\n")[0])
    parser.add_argument("--featurizer", required=True, choices=sorted(FEATURIZERS))
    parser.add_argument("--name", required=True, help="protein name")
    parser.add_argument("--pdb", required=True, type=Path, help="start structure; its residues give the sequence")
    parser.add_argument("--out", required=True, type=Path, help="data/features/{featurizer}/{name}.h5")
    parser.add_argument("--config-json", required=True, help="JSON of the `features` config section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = section_keys(section_json(args.config_json, "features"), {"featurizer", *FEATURIZERS}, "features")
    import mdtraj as md

    with reading(args.pdb, "PDB structure", RAW_FIX):
        topology = md.load_topology(str(args.pdb))
    sequence = protein_residues(topology, str(args.pdb))[0]
    t0 = time.perf_counter()
    single, pair, attrs = get_featurizer(args.featurizer)(name=args.name, sequence=sequence, pdb_path=args.pdb,
                                                          cfg=cfg)
    write_features(args.out, single, pair, {**attrs, "name": args.name, "featurizer": args.featurizer})
    log.info("%s: %s features single %s pair %s in %.1f s -> %s", args.name, args.featurizer, single.shape,
             pair.shape, time.perf_counter() - t0, args.out)
    return 0
