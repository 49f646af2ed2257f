"""Smoke test of benchmarks/bench_ros_pipeline.py: a few seconds at 10 Hz with a tiny checkpoint
(the real ``ros2 launch`` where the tooling is present, else the console script) gives a report
with every field, and labels came back. About 20 s on a busy 2-core machine: marked ``slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ros_testing import RCLPY_MISSING, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(RCLPY_MISSING), reason=RCLPY_MISSING or "rclpy present")]


def test_bench_ros_pipeline_smoke(tmp_path):
    from test_ros_launch import TOOLING_MISSING

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_ros_pipeline.py"), "--model", str(ckpt), "--size", "48x64",
           "--rate", "10", "--seconds", "3", "--threads", "1", "--network-runs", "5", "--measure-iterations", "1",
           "--latency-cache", str(tmp_path / "lat.json"), "--warmup-s", "0.5", "--json", str(out)]
    if TOOLING_MISSING:
        cmd.append("--no-launch")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads(out.read_text())
    for key in ("cpu", "cores", "variant", "backend", "network_only", "stamp_to_labels_ms", "output_hz", "labels_received",
                "camera_published", "node", "stages_ms", "cpu_use", "windowed_p95_ms"):
        assert key in rep, key
    assert rep["cpu"] and rep["variant"] == "tiny" and rep["node_exit"] == 0
    assert rep["backend"] in ("torch", "onnxruntime", "openvino", "tvm")  # auto: the fastest measured here
    assert rep["network_only"]["backend"] == rep["backend"] and rep["ready_s"] > 0 and rep["fresh_cache"] is False
    assert rep["labels_received"] > 0 and rep["output_hz"] > 0 and rep["camera_published"] > 0
    assert rep["network_only"]["segment_ms"]["p50"] > 0 and rep["network_only"]["runs"] == 5
    assert rep["network_only"]["paced_segment_ms"]["n"] == 5 and rep["network_only"]["rate_hz"] == 10
    assert rep["cpu_use"]["roles_pct"]["node"] > 0 and rep["cpu_use"]["seconds"] > 0  # the node's threads were found
    assert any(k.startswith("node: ") for k in rep["cpu_use"]["threads_pct"])
    assert 0 < rep["stamp_to_labels_ms"]["p50"] <= rep["stamp_to_labels_ms"]["p95"]
    node = rep["node"]
    assert node["received"] > 0 and node["processed"] > 0 and node["dropped"] is not None
    assert node["processed"] + node["dropped"] <= node["received"] <= rep["camera_published"]
    for name in ("wait", "decode", "network", "publish", "work", "stamp_to_publish"):
        assert rep["stages_ms"][name]["p95_ms"] >= rep["stages_ms"][name]["p50_ms"] >= 0, name
    assert "| stamp -> labels" in res.stdout and "| network |" in res.stdout
