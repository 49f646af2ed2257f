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
# Optional, for machines without a ROS 2 distro: HMSEG_ROS2_TOOLING names a folder with the upstream
# launch tooling (launch, launch_ros, the ros2 command, vision_msgs) and its install.sh, e.g.
# ../shared/ros2-tooling; colcon comes with it. Then the tests build the package with colcon and
# run the real `ros2 launch` (test/test_ros_launch.py); without it those tests skip, saying why.
if [ -n "${HMSEG_ROS2_TOOLING:-}" ]; then
  bash "$HMSEG_ROS2_TOOLING/install.sh" "$VENV"
fi
export PATH="$VENV/bin:$PATH"
