# starmd: STAR-MD (Shoghi et al., ICLR 2026) as a Snakemake pipeline.
# The paper setup (ATLAS, paper-scale model) is config.yaml; the offline demo overrides it with
#   snakemake --cores all --configfile config.demo.yaml
# Every rule calls the library through `python -m starmd <step>`; the logic lives in src/starmd/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/rollout.smk"
include: "rules/evaluate.smk"
include: "rules/bench.smk"


rule all:
    input:
        all_targets(),
    default_target: True
