#!/usr/bin/env bash
# The test command (README): installs what it needs, then runs the whole suite.
# CPU-only machines: GPU tests skip; every CuTe DSL kernel is still compiled for sm_90a and sm_100a
# (tests/test_compile.py). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${CUTE_MOE_NO_VENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  PY=.venv/bin/python
fi
# CPU build of torch unless one is already there (a GPU machine keeps its own CUDA build)
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]"
exec "$PY" -m pytest -q "$@"
