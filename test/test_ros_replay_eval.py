"""replay -> segment -> evaluate over real rclpy topics equals the offline evaluation exactly."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from ros_testing import RCLPY_MISSING, Spinner, tiny_checkpoint, wait_for

if RCLPY_MISSING:
    pytest.skip(RCLPY_MISSING, allow_module_level=True)
pytest.importorskip("rosbags", reason="rosbag2 support needs the 'rosbags' package")

from hmseg_core.bag import dataset_drive, make_bag, synthetic_drive  # noqa: E402
from hmseg_core.cli import main as cli_main  # noqa: E402
from hmseg_core.evaluate import evaluate_checkpoint  # noqa: E402
from hmseg_ros.replay_eval import run_replay_eval  # noqa: E402
from hmseg_ros.replay_node import RELIABLE, ReplayNode  # noqa: E402


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
    stages = rep["stages_ms"]  # the segment node's per-stage timings over the run
    for name in ("wait", "decode", "preprocess", "network", "postprocess", "publish", "work", "stamp_to_publish"):
        assert stages[name]["samples"] == 3 and stages[name]["p95_ms"] >= stages[name]["p50_ms"] >= 0, (name, stages)
    assert written["stages_ms"] == stages and rep["segmenter"]["stages"] == stages
    md = (tmp_path / "report" / "replay_eval.md").read_text()
    assert "| stage | p50 ms | p95 ms | frames |" in md and "| network |" in md and "| stamp_to_publish |" in md


def test_cli_default_drive_needs_no_dataset(tmp_path, ckpt, capsys):
    code = cli_main(["replay-eval", "--checkpoint", str(ckpt), "--frames", "4", "--size", "48x64", "--storage", "sqlite3",
                     "--threads", "1", "--cache", str(tmp_path / "lat.json"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4/4 frames evaluated" in out and "identical" in out and "latency stamp -> prediction: p50" in out
    rep = json.loads((tmp_path / "out" / "replay_eval.json").read_text())
    assert rep["matches_offline"] and not np.isnan(rep["miou"])


def test_cli_replay_eval_runs_the_shipped_zoo_by_default(tmp_path, capsys):
    """Without --zoo or --checkpoint, replay-eval runs the zoo shipped with hmseg, as the node does.
    (It used to refuse: test_cli_replay_eval_requires_a_model; a missing *file* still exits 2, below.)"""
    code = cli_main(["replay-eval", "--frames", "2", "--size", "48x64", "--threads", "1", "--cache", str(tmp_path / "lat.json"),
                     "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    rep = json.loads((tmp_path / "out" / "replay_eval.json").read_text())
    assert rep["variant"] == "mrms_tiny" and rep["frames_evaluated"] == 2 and rep["matches_offline"]


def _one_error_line(err: str, prefix: str = "hmseg-core replay-eval: error:") -> str:
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args,names", [
    (["--zoo", "/nonexistent/zoo.yaml"], "zoo.yaml"),
    (["--checkpoint", "/nonexistent/model.pt"], "model.pt"),
])
def test_cli_replay_eval_names_a_missing_model_file(tmp_path, capsys, args, names):
    out = tmp_path / "out"
    assert cli_main(["replay-eval", *args, "--frames", "1", "--size", "32x48", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert names in line and "not found" in line
    assert not out.exists()  # nothing left behind


def test_cli_replay_eval_errors_inside_the_pipeline_are_one_line(tmp_path, ckpt, capsys):
    """A damaged checkpoint, a value the node refuses, a truncated or foreign bag: one line each,
    exit 2, no report folder."""
    good = tmp_path / "good"
    make_bag(good, dataset_drive_frames(2), storage="mcap")
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a bag")
    broken_ckpt = tmp_path / "broken.pt"
    broken_ckpt.write_bytes(ckpt.read_bytes()[:1000])
    common = ["--threads", "1", "--cache", str(tmp_path / "lat.json")]
    cases = [
        (["--checkpoint", str(broken_ckpt), "--bag", str(good)], "broken.pt"),
        (["--checkpoint", str(ckpt), "--bag", str(good), "--budget", "-1"], "latency_budget_ms"),
        (["--checkpoint", str(ckpt), "--bag", str(good), "--rate-scale", "0"], "rate_scale"),
        (["--checkpoint", str(ckpt), "--bag", str(truncated)], f"{truncated}: not a readable rosbag2 bag"),
        (["--checkpoint", str(ckpt), "--bag", str(tmp_path / "foreign")], f"{tmp_path / 'foreign'}: not a readable rosbag2 bag"),
    ]
    for i, (args, names) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert cli_main(["replay-eval", *args, *common, "--out", str(out)]) == 2, args
        line = _one_error_line(capsys.readouterr().err)
        assert names in line, (args, line)
        assert not out.exists(), args


def dataset_drive_frames(n: int):
    from hmseg_core.bag import synthetic_drive

    return synthetic_drive(n, (32, 48))


def test_the_replay_waits_for_its_evaluator_before_the_first_frame(tmp_path):
    # an evaluator that joins after the first frames went out would score a part of the drive
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    make_bag(tmp_path / "drive", synthetic_drive(3, (24, 32)), rate_hz=50)
    spinner = Spinner()
    try:
        replay = spinner.add(ReplayNode(context=spinner.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in dict(bag=str(tmp_path / "drive"), wait_for_subscribers=0, wait_for_label_subscribers=1,
                                                   label_topic="/test_replay/labels", image_topic="/test_replay/image").items()]))
        time.sleep(1.0)
        assert replay.published == 0 and not replay.done.is_set()
        got = []
        spinner.node("evaluator").create_subscription(Image, "/test_replay/labels", got.append, RELIABLE)
        assert wait_for(lambda: replay.done.is_set() and len(got) == 3, timeout=20), (replay.published, len(got))
    finally:
        spinner.close()
