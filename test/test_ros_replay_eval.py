"""replay -> segment -> evaluate over real rclpy topics equals the offline evaluation exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ros_testing import RCLPY_MISSING, tiny_checkpoint

if RCLPY_MISSING:
    pytest.skip(RCLPY_MISSING, allow_module_level=True)
pytest.importorskip("rosbags", reason="rosbag2 support needs the 'rosbags' package")

from hmseg_core.bag import dataset_drive, make_bag  # noqa: E402
from hmseg_core.cli import main as cli_main  # noqa: E402
from hmseg_core.evaluate import evaluate_checkpoint  # noqa: E402
from hmseg_ros.replay_eval import run_replay_eval  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("re") / "tiny.pt", seed=4)


def test_replay_eval_equals_offline_eval(tmp_path, ckpt, camvid_fixture):
    spec, frames = dataset_drive(camvid_fixture, "val")
    make_bag(tmp_path / "drive", frames, spec, storage="mcap", rate_hz=20)
    rep = run_replay_eval(tmp_path / "drive", tmp_path / "report", model=str(ckpt), threads=1,
                          latency_cache=str(tmp_path / "lat.json"), measure_iterations=2, timeout_s=120, log=lambda s: None)
    offline = evaluate_checkpoint(ckpt, camvid_fixture, "val")  # what `hmseg-core eval` computes
    assert rep["frames_with_truth"] == rep["frames_evaluated"] == offline["images"] == 3
    assert rep["frames_without_prediction"] == 0 and rep["lockstep_timeouts"] == 0
    assert rep["confusion_matrix"] == offline["confusion_matrix"]
    assert rep["miou"] == offline["miou"] and rep["per_class_iou"] == offline["per_class_iou"]
    assert rep["matches_offline"] is True
    assert 0 < rep["latency_ms"]["p50"] <= rep["latency_ms"]["max"] < 10_000
    assert len(rep["frames"]) == 3 and rep["frames"][-1]["running_miou"] == rep["miou"]
    written = json.loads((tmp_path / "report" / "replay_eval.json").read_text())
    assert written["miou"] == rep["miou"]
    assert (tmp_path / "report" / "replay_eval.png").stat().st_size > 0
    assert "mIoU" in (tmp_path / "report" / "replay_eval.md").read_text()


def test_cli_default_drive_needs_no_dataset(tmp_path, ckpt, capsys):
    code = cli_main(["replay-eval", "--checkpoint", str(ckpt), "--frames", "4", "--size", "48x64", "--storage", "sqlite3",
                     "--threads", "1", "--cache", str(tmp_path / "lat.json"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4/4 frames evaluated" in out and "identical" in out and "latency stamp -> prediction: p50" in out
    rep = json.loads((tmp_path / "out" / "replay_eval.json").read_text())
    assert rep["matches_offline"] and not np.isnan(rep["miou"])


def test_cli_replay_eval_requires_a_model(tmp_path, capsys):
    assert cli_main(["replay-eval", "--frames", "1", "--out", str(tmp_path)]) == 2
    assert "give --zoo" in capsys.readouterr().err
