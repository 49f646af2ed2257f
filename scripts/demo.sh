#!/usr/bin/env bash
# Sets up .venv from scratch if needed, then runs the built-in default job (no data set needed):
# train mrms_tiny on generated street scenes, then replay a generated drive through the ROS 2
# nodes (replay -> segment -> evaluate) and report mIoU and latency.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
OUT="${1:-runs/demo}"
hmseg-core demo --out "$OUT"
hmseg-core replay-eval --checkpoint "$OUT/best.pt" --network-size 192x256 --frames 30 --out "$OUT/replay"
