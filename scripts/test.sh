#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the whole test suite.
# The TVM deployment tests run in a process of their own: once TVM's runtime has compiled and
# run modules in a process, rclpy discovery in that same process was seen to stall.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m pytest -q -m "not tvm" "$@"
python -m pytest -q -m tvm "$@"
