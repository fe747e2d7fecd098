#!/usr/bin/env bash
# Install OpenFold (PyPI sdist openfold==0.0.1, hash-pinned) into the active Python environment, same way on CPU and
# GPU machines. Needs: torch and starmd already installed (starmd provides the build shim); no compiler.
#
# Why not `pip install openfold`: the sdist's setup.py imports torch (so pip's build isolation must be off) and
# `scripts.utils.get_nvidia_cc`, which it does not ship; it declares no runtime dependencies; and it compiles an
# attention-softmax extension (`attn_core_inplace_cuda`): with a CUDA torch from flags current nvcc/torch reject,
# without one as a C++ stub that raises when called (and takes minutes to compile). So we build a pure-Python wheel
# ourselves, with setup.py's ext_modules dropped, and install it with --no-deps; starmd provides that extension's two
# functions in plain torch at import (src/starmd/features/openfold_compat.py).
set -euo pipefail

OPENFOLD_SHA256=d709aa2647b9e15fd4da42dfc3dbe9fc7310c42bc01bd0b4f5600eb39edef8f8
PYTHON=${PYTHON:-python}

"$PYTHON" -c "import torch, starmd.features.openfold_compat" || {
    echo "install_openfold.sh: install torch and starmd (pip install -e .) into this environment first" >&2
    exit 1
}
if "$PYTHON" -c "import openfold" 2>/dev/null; then
    echo "install_openfold.sh: openfold already installed in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    exit 0
fi

# Runtime dependencies the sdist does not declare. biopython: 1.82+ removed Bio.Data.SCOPData (openfold.data).
"$PYTHON" -m pip install "ml-collections==1.1.0" "dm-tree==0.1.10" "biopython==1.81"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shim/scripts" "$work/dist"
echo "from starmd.features.openfold_compat import get_nvidia_cc" > "$work/shim/scripts/utils.py"
echo "openfold==0.0.1 --hash=sha256:$OPENFOLD_SHA256" > "$work/requirements.txt"

# pip runs setup.py for metadata even when only downloading: it needs the shim and our torch.
PYTHONPATH="$work/shim" "$PYTHON" -m pip download --no-deps --no-build-isolation --require-hashes \
    -r "$work/requirements.txt" -d "$work"
tar -xzf "$work/openfold-0.0.1.tar.gz" -C "$work"

cd "$work/openfold-0.0.1"
PYTHONPATH="$work/shim" "$PYTHON" - "$work/dist" <<'EOF'
import runpy, sys
import setuptools
import torch.utils.cpp_extension as cpp_extension

cpp_extension.CUDA_HOME = None  # setup.py then never runs nvcc to pick CUDA flags
build = setuptools.setup
setuptools.setup = lambda ext_modules, cmdclass, **kwargs: build(**kwargs)  # pure Python: no extension to compile
sys.argv = ["setup.py", "--quiet", "bdist_wheel", "--dist-dir", sys.argv[1]]
runpy.run_path("setup.py", run_name="__main__")
EOF
"$PYTHON" -m pip install --no-deps "$work"/dist/openfold-0.0.1-*.whl
"$PYTHON" -c "from starmd.features.openfold_compat import import_openfold; import_openfold(); print('openfold OK')"
