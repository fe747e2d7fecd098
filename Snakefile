# starmd: STAR-MD (Shoghi et al., ICLR 2026) as a Snakemake pipeline.
# The paper setup (ATLAS, paper-scale model) is config.yaml; the offline demo overrides it with
#   snakemake --cores all --configfile config.demo.yaml
# Every rule calls the library through `python -m starmd <step>`; the logic lives in src/starmd/.

import os
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# Every job imports starmd from this checkout's src/: the conda environments (envs/, `--sdm conda`) pin only the
# dependencies, and a virtualenv with `pip install -e .` points at the same files. Jobs inherit it (sbatch
# --export=ALL), so a cluster job runs the code of the workflow that submitted it.
_SRC = str(Path(workflow.basedir) / "src")
if _SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")]))


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/rollout.smk"
include: "rules/evaluate.smk"
include: "rules/bench.smk"


rule all:
    default_target: True
    input:
        all_targets(),
