#!/usr/bin/env bash
# Snakemake runs this once inside the freshly created envs/openfold.yaml environment (from the directory snakemake
# was started in, the repository root). It installs OpenFold the one supported way: scripts/install_openfold.sh.
set -euo pipefail
if [[ ! -f scripts/install_openfold.sh ]]; then
    echo "openfold.post-deploy.sh: run snakemake from the starmd repository root (no scripts/install_openfold.sh in $PWD)" >&2
    exit 1
fi
# starmd (the build shim) comes from this checkout, as in every job (the Snakefile's shell prefix)
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" bash scripts/install_openfold.sh
