#!/usr/bin/env bash
# Pack what benchmarks/gpu_suite.py imports, for an offline GPU machine whose Python already holds PyTorch.
#
#   benchmarks/pack_gpu_deps.sh [PYTHON_VERSION] [OUT]      # defaults: 3.12, .gpu/site.tar.xz
#   # there:  mkdir -p /tmp/x && tar -xJf .gpu/site.tar.xz -C /tmp/x && export PYTHONPATH=/tmp/x/site:$PWD
#
# The versions are this .venv's (the ones CI tests), as wheels for the target's Python and x86-64 Linux.
# torch, numpy, pandas, pyarrow, scipy and sympy stay the machine's own (large; torch built for its CUDA).
# Ray's cluster binaries (raylet, gcs_server, the Java jar, the dashboard's web build) are dropped: the
# suite imports Ray's modules but starts no cluster. Result for Python 3.12: about 42 MB.
set -euo pipefail
PYV=${1:-3.12}
OUT=${2:-.gpu/site.tar.xz}
PY=.venv/bin/python
# mlflow (the full one) adds only the tracking server and its web UI to mlflow-skinny's modules: left out.
KEEP_MACHINES="torch numpy pandas pyarrow scipy sympy mpmath spresso networkx jinja2 MarkupSafe triton setuptools mlflow"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pins=$($PY - $KEEP_MACHINES <<'EOF'
import importlib.metadata as md, sys
keep = {k.lower().replace("_", "-") for k in sys.argv[1:]}
sys.argv = ["gpu_suite"]
sys.path.insert(0, "benchmarks")
import gpu_suite  # noqa: F401,E402  (its import closure is what the machine needs)
top = md.packages_distributions()
dists = {d for m in list(sys.modules) for d in top.get(m.split(".")[0], [])}
dists.add("pycparser")  # cffi's C parser: soundfile's cffi needs it, not imported at import time
print(" ".join(sorted(f"{d}=={md.version(d)}" for d in dists if d.lower().replace("_", "-") not in keep)))
EOF
)
plat=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  plat+=(--platform "${p}_x86_64")
done
echo "packing for Python $PYV: $pins" | fold -w 118
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${plat[@]}" -d "$work/whl" $pins
$PY -m pip install -q --no-index --no-deps --no-compile --target "$work/site" --python-version "$PYV" --implementation cp \
  --only-binary=:all: "${plat[@]}" "$work"/whl/*.whl
rm -rf "$work"/site/ray/jars "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/ray/core/src/ray/gcs/gcs_server \
  "$work"/site/ray/dashboard/client/build
mkdir -p "$(dirname "$OUT")"
tar -I 'xz -T0 -6' -cf "$OUT" -C "$work" site
ls -l "$OUT"
