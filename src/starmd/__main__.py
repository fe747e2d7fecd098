"""`python -m starmd <step> ...`: the one entry point every Snakemake rule calls.

Each step lives in its stage package and exposes `main(argv) -> int`; this module only dispatches, so importing
one stage never imports the others (torch is not loaded to download a zip).
"""

from __future__ import annotations

import importlib
import sys

STEPS: dict[str, str] = {
    "prepare-demo": "starmd.data.demo",
    "prepare-synthetic": "starmd.data.synthetic",
    "download-atlas": "starmd.data.atlas",
    "make-splits": "starmd.data.splits",
    "extract-frames": "starmd.data.frames",
    "featurize": "starmd.features.cli",
    "train": "starmd.training.cli",
    "plot-training": "starmd.training.plot",
    "rollout": "starmd.rollout.cli",
    "evaluate": "starmd.evaluation.cli",
    "figures": "starmd.evaluation.figures",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m starmd <step> [options]\n\nsteps:\n  " + "\n  ".join(sorted(STEPS)))
        return 0 if argv else 2
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"starmd: unknown step {step!r}; choose one of: {', '.join(sorted(STEPS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(STEPS[step])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
