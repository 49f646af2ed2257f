"""Launch files, config files and declared parameters agree; the packaged params file starts the node;
with launch_ros present, segment.launch.py brings the node up."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import pytest
import yaml
from ros_testing import RCLPY_MISSING, tiny_checkpoint, wait_for

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_YAML = yaml.safe_load((ROOT / "config/segment.yaml").read_text())["/**"]["ros__parameters"]
REPLAY_YAML = yaml.safe_load((ROOT / "config/replay_eval.yaml").read_text())
LAUNCH_ONLY = {"params_file", "replay_params_file"}  # arguments that name files, not parameters


def declared_arguments(path: Path) -> set:
    """Names of DeclareLaunchArgument(...) calls, plus the keys of an ARGUMENTS dict they iterate."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            names |= {k.value for k in node.value.keys}
    return names


def executables(path: Path) -> set:
    tree = ast.parse(path.read_text())
    return {kw.value.value for n in ast.walk(tree) if isinstance(n, ast.Call) for kw in n.keywords
            if kw.arg == "executable" and isinstance(kw.value, ast.Constant)}


def test_segment_launch_arguments_are_config_keys():
    args = declared_arguments(ROOT / "launch/segment.launch.py")
    assert {"input_topic", "zoo", "model", "latency_budget_ms", "backend", "params_file"} <= args
    assert args - LAUNCH_ONLY <= set(SEGMENT_YAML), args - LAUNCH_ONLY - set(SEGMENT_YAML)


def test_replay_eval_launch_arguments_are_config_keys():
    args = declared_arguments(ROOT / "launch/replay_eval.launch.py")
    keys = set(SEGMENT_YAML) | {k for node in REPLAY_YAML.values() for k in node["ros__parameters"]}
    assert args - LAUNCH_ONLY <= keys, args - LAUNCH_ONLY - keys


def test_launch_executables_are_console_scripts():
    scripts = dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', (ROOT / "setup.py").read_text()))
    for launch in (ROOT / "launch").glob("*.launch.py"):
        for exe in executables(launch):
            assert exe in scripts, f"{launch.name} runs {exe!r}, which setup.py does not install"


@pytest.mark.skipif(bool(RCLPY_MISSING), reason=RCLPY_MISSING or "rclpy present")
def test_config_files_list_exactly_the_declared_parameters():
    from hmseg_ros.evaluator_node import PARAMETERS as EVALUATOR
    from hmseg_ros.replay_node import PARAMETERS as REPLAY
    from hmseg_ros.segment_node import PARAMETERS as SEGMENT

    assert set(SEGMENT_YAML) == set(SEGMENT)
    assert set(REPLAY_YAML["hmseg_replay"]["ros__parameters"]) == set(REPLAY)
    assert set(REPLAY_YAML["hmseg_evaluator"]["ros__parameters"]) == set(EVALUATOR) - {"class_names"}
    for name, value in SEGMENT_YAML.items():  # same types as declared, or rcl rejects the file
        assert type(value) is type(SEGMENT[name][0]), name


@pytest.mark.skipif(bool(RCLPY_MISSING), reason=RCLPY_MISSING or "rclpy present")
def test_node_starts_from_the_packaged_params_file(tmp_path):
    import rclpy

    from hmseg_ros.segment_node import SegmentNode

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = SegmentNode(context=ctx, cli_args=[
            "--ros-args", "--params-file", str(ROOT / "config/segment.yaml"), "-p", f"model:={ckpt}",
            "-p", "expected_height:=32", "-p", "expected_width:=48", "-p", "measure_iterations:=1",
            "-p", f"latency_cache:={tmp_path / 'lat.json'}", "-p", "latency_budget_ms:=25.0",
        ])
        assert node.get_parameter("latency_budget_ms").value == 25.0
        assert node.get_parameter("qos").value == "sensor_data"
        assert node.selection.variant.name == "m"
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def _launch_ros_missing() -> str:
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError as e:
        return f"launch_ros is not importable ({e}); it comes with a ROS 2 distro, not from PyPI"
    try:
        get_package_share_directory("hmseg_ros")
    except PackageNotFoundError:
        return "hmseg_ros is not installed in an ament prefix (colcon build, then source install/setup.bash)"
    return ""


@pytest.mark.skipif(bool(_launch_ros_missing()), reason=_launch_ros_missing() or "launch_ros present")
def test_segment_launch_brings_the_node_up(tmp_path):
    import launch
    import rclpy
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch/segment.launch.py")),
        launch_arguments={"model": str(ckpt), "input_topic": "/launch_test/image"}.items(),
    )
    service = launch.LaunchService()
    service.include_launch_description(launch.LaunchDescription([include]))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        probe = rclpy.create_node("launch_probe", context=ctx)
        assert wait_for(lambda: "hmseg_segment" in probe.get_node_names(), timeout=60.0)
        probe.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
        service.shutdown()
        runner.join(timeout=30.0)
