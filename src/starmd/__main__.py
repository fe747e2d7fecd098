"""`python -m starmd <step> ...`: the one entry point every Snakemake rule calls.

Each step lives in its stage package and exposes `main(argv) -> int`; this module only dispatches, so importing
one stage never imports the others (torch is not loaded to download a zip).

A bad input (`starmd.errors.InputError`, the ValueError of a config check or a FileNotFoundError: each names the
file or the setting)
ends the step with that one line on stderr and exit status 1; `--debug` (anywhere in the arguments) shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import sys

STEPS: dict[str, str] = {
    "prepare-demo": "starmd.data.demo",
    "prepare-synthetic": "starmd.data.synthetic",
    "download-atlas": "starmd.data.atlas",
    "prepare-local": "starmd.data.local",
    "prepare-mdcath": "starmd.data.mdcath",
    "make-splits": "starmd.data.splits",
    "extract-frames": "starmd.data.frames",
    "featurize": "starmd.features.cli",
    "train": "starmd.training.cli",
    "plot-training": "starmd.training.plot",
    "rollout": "starmd.rollout.cli",
    "generate": "starmd.generate",
    "evaluate": "starmd.evaluation.cli",
    "figures": "starmd.evaluation.figures",
    "estimate": "starmd.estimate.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m starmd <step> [options] [--debug]\n\nsteps:\n  " + "\n  ".join(sorted(STEPS)))
        return 0 if argv else 2
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"starmd: unknown step {step!r}; choose one of: {', '.join(sorted(STEPS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(STEPS[step])
    try:
        return int(module.main(rest) or 0)
    except (ValueError, FileNotFoundError) as exc:
        if debug:
            raise
        print(" ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message holds
        return 1


if __name__ == "__main__":
    sys.exit(main())
