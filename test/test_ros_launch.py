"""Launch files, config files and declared parameters agree; the packaged params file starts the node;
with the launch tooling present (a ROS 2 distro, or ../shared/ros2-tooling), the package is built with
colcon into a temporary workspace and the real ``ros2 launch`` runs it: the node comes up and
segments, command-line arguments win over the user's params file and the file over the defaults,
two namespaced instances serve two cameras, and replay_eval.launch.py writes its report.

``launch`` runs a LaunchService only in a process's main thread, so each launch is a subprocess
(``ros2 launch ...``), as a user runs it; the test process talks to it over real topics."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import yaml
from ros_testing import RCLPY_MISSING, tiny_checkpoint, wait_for

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_YAML = yaml.safe_load((ROOT / "config/segment.yaml").read_text())["/**"]["ros__parameters"]
REPLAY_YAML = yaml.safe_load((ROOT / "config/replay_eval.yaml").read_text())
LAUNCH_ONLY = {"params_file", "replay_params_file", "namespace"}  # arguments that are not parameters


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


def _float_parameters():
    if RCLPY_MISSING:
        return []
    from hmseg_ros.evaluator_node import PARAMETERS as EVALUATOR
    from hmseg_ros.replay_node import PARAMETERS as REPLAY
    from hmseg_ros.segment_node import PARAMETERS as SEGMENT

    return [pytest.param(table, name, id=f"{node}.{name}") for node, table in (("segment", SEGMENT), ("replay", REPLAY), ("evaluator", EVALUATOR))
            for name, (default, _) in table.items() if isinstance(default, float)]


@pytest.mark.skipif(bool(RCLPY_MISSING), reason=RCLPY_MISSING or "rclpy present")
@pytest.mark.parametrize("table,name", _float_parameters())
def test_every_float_parameter_takes_an_integer_and_stays_a_float(table, name):
    """At start-up (an override, as -p NAME:=5 or `NAME: 5` in YAML give) and at run time."""
    import rclpy
    from rclpy.parameter import Parameter

    from hmseg_ros.params import ParameterError, declare_parameters

    default, desc = table[name]
    r = desc.floating_point_range[0] if desc.floating_point_range else None
    inside = int(r.from_value) + 1 if r is not None else 3  # an integer inside the range
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("float_params", context=ctx, parameter_overrides=[Parameter(name, value=inside)])
        values = declare_parameters(node, table)
        assert values[name] == float(inside) and isinstance(values[name], float)
        assert node.get_parameter(name).type_ == Parameter.Type.DOUBLE
        if not desc.read_only:
            other = int(r.from_value) if r is not None else inside + 1
            assert node.set_parameters([Parameter(name, value=other)])[0].successful
            assert node.get_parameter(name).value == float(other) and node.get_parameter(name).type_ == Parameter.Type.DOUBLE
        res = node.set_parameters([Parameter(name, value="text")])[0]
        assert not res.successful and ("expects a number" in res.reason or "read-only" in res.reason)
        node.destroy_node()
        if r is not None:  # out of range at start-up: one ParameterError naming the parameter
            node = rclpy.create_node("float_params_bad", context=ctx, parameter_overrides=[Parameter(name, value=int(r.to_value) + 1)])
            with pytest.raises(ParameterError, match=f"parameter '{name}' must be a number from"):
                declare_parameters(node, table)
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


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


# ---------------------------------------------------------------------------- the real ros2 launch
def _tooling_missing() -> str:
    """Why ``ros2 launch`` cannot run here ('' when it can)."""
    if RCLPY_MISSING:
        return RCLPY_MISSING
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
        import ros2launch  # noqa: F401
    except ImportError as e:
        return (f"the ROS 2 launch tooling is not importable ({e}); it comes with a ROS 2 distro, or here: "
                "bash ../shared/ros2-tooling/install.sh .venv")
    if _ros2() is None:
        return "the `ros2` command is not on PATH (a ROS 2 distro, or ../shared/ros2-tooling/install.sh)"
    if shutil.which("colcon", path=_path()) is None and not _installed_in_ament_prefix():
        return "neither colcon (to build the package) nor an ament prefix holding hmseg_ros (colcon build; source install/setup.bash)"
    return ""


def _path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _ros2() -> Optional[str]:
    return shutil.which("ros2", path=_path())


def _installed_in_ament_prefix() -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("hmseg_ros")
    except (PackageNotFoundError, KeyError, ValueError):
        return False
    return True


TOOLING_MISSING = _tooling_missing()
requires_launch = pytest.mark.skipif(bool(TOOLING_MISSING), reason=TOOLING_MISSING or "ros2 launch present")


def _sourced_env(setup: Path, base: Dict[str, str]) -> Dict[str, str]:
    """The environment after ``source setup`` in bash (what a user's shell has)."""
    out = subprocess.run(["bash", "-c", f'source "{setup}" >/dev/null && env -0'], env=base, capture_output=True, timeout=60, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


@pytest.fixture(scope="module")
def ros2_env(tmp_path_factory) -> Dict[str, str]:
    """An environment where ``ros2 launch hmseg_ros ...`` runs this working tree: the package built
    with colcon (about 1 s) in a temporary workspace, never inside the repository."""
    logs = tmp_path_factory.mktemp("ros_log")  # ROS logs of the launched processes stay out of ~/.ros
    base = dict(os.environ, PATH=_path(), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ROS_LOG_DIR=str(logs))
    colcon = shutil.which("colcon", path=base["PATH"])
    if colcon is None:  # a distro with hmseg_ros already built and sourced
        return base
    ws = tmp_path_factory.mktemp("colcon_ws")
    (ws / "src").mkdir()
    (ws / "src" / "hmseg").symlink_to(ROOT, target_is_directory=True)
    prefixes = [p for p in (base.get("AMENT_PREFIX_PATH", ""), sys.prefix) if p]
    env = dict(base, AMENT_PREFIX_PATH=os.pathsep.join(prefixes))
    res = subprocess.run([colcon, "build", "--packages-select", "hmseg_ros"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"colcon build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert (ws / "install" / "hmseg_ros" / "lib" / "hmseg_ros" / "hmseg_segment").exists()
    return _sourced_env(ws / "install" / "setup.bash", env)


class Launch:
    """``ros2 launch hmseg_ros FILE ARGS...`` as a subprocess in a session of its own; ``stop()``
    ends it as Ctrl-C does and returns its exit status (killing what is left after ``timeout``)."""

    def __init__(self, env: Dict[str, str], log: Path, launch_file: str, *arguments: str) -> None:
        self.log = log
        self._out = open(log, "w")
        self._stopped = False
        self.proc = subprocess.Popen([_ros2(), "launch", "hmseg_ros", launch_file, *arguments], env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        self._stopped = True
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever the launch left behind
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self._out.close()

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc) -> None:
        if not self._stopped:
            self.stop()


def ros2(env: Dict[str, str], *args: str, timeout: float = 60.0) -> str:
    """Run the real ``ros2`` command (without the daemon, so nothing outlives the test)."""
    res = subprocess.run([_ros2(), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"ros2 {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


def param_get(env: Dict[str, str], node: str, name: str) -> str:
    """What ``ros2 param get`` prints, e.g. ``Double value is: 30.0``."""
    return ros2(env, "param", "get", "--no-daemon", "--timeout", "20", node, name).strip()


def params_of(probe, node: str, *names: str, timeout: float = 30.0) -> dict:
    """The running node's parameters, asked over its parameter services: name -> (type name, value)."""
    from rclpy.parameter import Parameter, parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(probe, node)  # its service clients stay with the probe (rclpy has no destroy)
    assert client.wait_for_services(timeout_sec=timeout), f"{node}: no parameter services"
    future = client.get_parameters(list(names))
    assert wait_for(future.done, timeout=timeout), f"{node}: no answer for {names}"
    return {n: (Parameter.Type(v.type).name, parameter_value_to_python(v)) for n, v in zip(names, future.result().values)}


def user_params(path: Path, tmp: Path, **values) -> Path:
    """A user's params file: quick latency measurement at the test's frame size, plus ``values``."""
    p = dict(expected_height=H, expected_width=W, measure_iterations=1, latency_cache=str(tmp / "latency.json"), threads=1)
    p.update(values)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": p}}))
    return path


H, W = 48, 64


@pytest.fixture(scope="module")
def probe():
    from ros_testing import Spinner

    spinner = Spinner()
    yield spinner.node("launch_probe")
    spinner.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("launch") / "m.pt")


def labels_from(probe, camera: str, labels: str, timeout: float = 90.0):
    """Publish frames on ``camera`` until a label image comes back on ``labels``; returns it (or None)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from hmseg_ros.image_conv import numpy_to_image

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    got: List = []
    sub = probe.create_subscription(Image, labels, got.append, qos)
    pub = probe.create_publisher(Image, camera, qos)
    msg = numpy_to_image(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8")
    try:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            pub.publish(msg)
            wait_for(lambda: bool(got), timeout=0.5)
        return got[0] if got else None
    finally:
        probe.destroy_subscription(sub)
        probe.destroy_publisher(pub)


def wait_for_node(probe, name: str, namespace: str = "/", timeout: float = 90.0) -> bool:
    return wait_for(lambda: (name, namespace) in probe.get_node_names_and_namespaces(), timeout=timeout, period=0.2)


@requires_launch
def test_segment_launch_brings_the_node_up(ros2_env, probe, ckpt, tmp_path):
    params = user_params(tmp_path / "params.yaml", tmp_path)
    with Launch(ros2_env, tmp_path / "launch.log", "segment.launch.py", f"params_file:={params}",
                f"model:={ckpt}", "input_topic:=/launch_test/image") as run:
        assert wait_for_node(probe, "hmseg_segment"), run.output()
        out = labels_from(probe, "/launch_test/image", "/hmseg_segment/labels")
        assert out is not None, run.output()
        assert (out.height, out.width, out.encoding) == (H, W, "mono8")
        code = run.stop()
    assert code == 0, run.output()
    assert "bad input" not in run.output() and "Traceback" not in run.output(), run.output()


@requires_launch
def test_command_line_arguments_win_over_the_params_file_and_the_file_over_the_defaults(ros2_env, probe, ckpt, tmp_path):
    # the file: another camera topic and a budget, the budget written as an integer
    params = user_params(tmp_path / "my.yaml", tmp_path, input_topic="/front/image_raw", latency_budget_ms=30, model=str(ckpt))
    with Launch(ros2_env, tmp_path / "file.log", "segment.launch.py", f"params_file:={params}") as run:
        assert wait_for_node(probe, "hmseg_segment"), run.output()
        assert param_get(ros2_env, "/hmseg_segment", "latency_budget_ms") == "Double value is: 30.0"
        assert params_of(probe, "/hmseg_segment", "input_topic")["input_topic"] == ("STRING", "/front/image_raw")
        assert labels_from(probe, "/front/image_raw", "/hmseg_segment/labels") is not None, run.output()
        # an integer at run time, as `ros2 param set` sends "5" (rclpy alone refuses it: expected '3' got '2')
        assert "Set parameter successful" in ros2(ros2_env, "param", "set", "--no-daemon", "--timeout", "20", "/hmseg_segment", "latency_budget_ms", "5")
        assert params_of(probe, "/hmseg_segment", "latency_budget_ms")["latency_budget_ms"] == ("DOUBLE", 5.0)
        refused = subprocess.run([_ros2(), "param", "set", "--no-daemon", "--timeout", "20", "/hmseg_segment", "latency_budget_ms", "fast"],
                                 env=ros2_env, capture_output=True, text=True, timeout=60)
        assert "expects a number" in refused.stdout + refused.stderr, refused
        assert run.stop() == 0, run.output()

    with Launch(ros2_env, tmp_path / "arg.log", "segment.launch.py", f"params_file:={params}", "latency_budget_ms:=12.5") as run:
        assert wait_for_node(probe, "hmseg_segment"), run.output()
        got = params_of(probe, "/hmseg_segment", "latency_budget_ms", "input_topic")
        assert got == {"latency_budget_ms": ("DOUBLE", 12.5), "input_topic": ("STRING", "/front/image_raw")}
        assert run.stop() == 0, run.output()


@requires_launch
def test_two_cameras_side_by_side_in_namespaces(ros2_env, probe, ckpt, tmp_path):
    params = user_params(tmp_path / "params.yaml", tmp_path, model=str(ckpt))
    # front: the default, relative input topic resolves in the namespace; rear: a topic of its own
    with Launch(ros2_env, tmp_path / "front.log", "segment.launch.py", f"params_file:={params}", "namespace:=front") as front, \
         Launch(ros2_env, tmp_path / "rear.log", "segment.launch.py", f"params_file:={params}", "namespace:=rear",
                "input_topic:=/rear_cam/image") as rear:
        assert wait_for_node(probe, "hmseg_segment", "/front"), front.output()
        assert wait_for_node(probe, "hmseg_segment", "/rear"), rear.output()
        assert labels_from(probe, "/front/camera/image_raw", "/front/hmseg_segment/labels") is not None, front.output()
        assert labels_from(probe, "/rear_cam/image", "/rear/hmseg_segment/labels") is not None, rear.output()
        assert front.stop() == 0 and rear.stop() == 0, front.output() + rear.output()


@requires_launch
def test_replay_eval_launch_writes_the_report_with_the_users_params(ros2_env, ckpt, tmp_path):
    pytest.importorskip("rosbags", reason="rosbag2 support needs the 'rosbags' package")
    from hmseg_core.bag import make_bag, synthetic_drive

    make_bag(tmp_path / "drive", synthetic_drive(3, (H, W)), rate_hz=20)
    params = user_params(tmp_path / "seg.yaml", tmp_path, latency_budget_ms=30)
    report = tmp_path / "report"
    # a DDS domain of its own: the pipeline's topics (/hmseg_segment/labels ...) must not meet nodes
    # that other tests of this session may still be shutting down
    env = {**ros2_env, "ROS_DOMAIN_ID": str((int(ros2_env.get("ROS_DOMAIN_ID", "0")) + 50) % 200 + 1)}
    with Launch(env, tmp_path / "replay.log", "replay_eval.launch.py", f"bag:={tmp_path / 'drive'}", f"model:={ckpt}",
                f"params_file:={params}", f"report_dir:={report}") as run:
        assert wait_for(lambda: run.proc.poll() is not None, timeout=240, period=0.5), run.output()
    assert run.proc.returncode == 0, run.output()
    rep = json.loads((report / "replay_eval.json").read_text())
    assert rep["frames_with_truth"] == rep["frames_evaluated"] == 3, rep
    assert "budget 30 ms" in run.output()  # the user's file reached the segment node
