# starmd: STAR-MD (Shoghi et al., ICLR 2026) as a Snakemake pipeline.
# The paper setup (ATLAS, paper-scale model) is config.yaml; the offline demo overrides it with
#   snakemake --cores all --configfile config.demo.yaml
# Every rule calls the library through `python -m starmd <step>`; the logic lives in src/starmd/.

from pathlib import Path
from shlex import quote

from snakemake.utils import min_version

min_version("9.0")

# Every job imports starmd from this checkout's src/: the conda environments (envs/, `--sdm conda`) pin only the
# dependencies, and a virtualenv with `pip install -e .` points at the same files, so a cluster job runs the code of
# the workflow that submitted it. The prefix replaces Snakemake's default one (`set -euo pipefail;`), so it keeps it;
# Snakemake formats it like a shell command, hence the doubled braces of the shell expansion.
SRC_DIR = quote(str(Path(workflow.basedir) / "src"))
shell.prefix("set -euo pipefail; export PYTHONPATH=" f"{SRC_DIR}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


configfile: "config.yaml"


report: "report/workflow.rst"


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
