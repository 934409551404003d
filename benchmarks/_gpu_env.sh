#!/usr/bin/env bash
# Sourced by the GPU scripts: pydantic from the carried wheels in .whl/ (the accelerator
# machine lacks it) and the package assembled as the wheel would lay it out, without pip.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
# The package without installing it: the mapped layout, assembled as the wheel would be.
rm -rf /tmp/shim && mkdir -p /tmp/shim/nnspec
cp cli/*.py /tmp/shim/nnspec/
for d in spec compiler runtime; do ln -s "$PWD/$d" "/tmp/shim/nnspec/$d"; done
ln -s "$PWD/cli/commands" /tmp/shim/nnspec/commands
export PYTHONPATH=/tmp/site:/tmp/shim PYTHONUNBUFFERED=1
