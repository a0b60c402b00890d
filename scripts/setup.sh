#!/usr/bin/env bash
# Create .venv and install cfgen with its test extras. Offline-safe after the first install:
# needs only PyPI (no model hub). torch is pinned to the CPU wheel; install a CUDA build of
# torch yourself first if you have a GPU (pyproject.toml gives the supported range).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# quiet pip that still fails the script when pip fails
pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
pip_q "torch==2.13.0"
pip_q -e ".[test]"
.venv/bin/python -c "import cfgen, torch, diffusers, monai; print('cfgen', cfgen.__version__, '| torch', torch.__version__)"
