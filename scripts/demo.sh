#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the built-in default job (no data set needed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec hmseg-core demo "$@"
