#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs hmseg into it
# with every extra the tests use. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HMSEG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch is pinned in setup.py (PINS); install it first so nothing pulls a CUDA build.
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$("$PYTHON" "$ROOT/scripts/pin.py" torch)"
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[${HMSEG_EXTRAS:-test,ros,tvm,onnx,openvino}]"
export PATH="$VENV/bin:$PATH"
