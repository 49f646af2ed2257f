"""Replay a drive through the segmenter and evaluate it, as three processes:
``ros2 launch hmseg_ros replay_eval.launch.py bag:=drive zoo:=zoo.yaml report_dir:=report``.

The segment node reads config/segment.yaml, replay and evaluator config/replay_eval.yaml;
the arguments override both. Everything shuts down when the evaluator has written its report.
(``hmseg-core replay-eval`` runs the same nodes in one process.)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("hmseg_ros")
    cfg = lambda name: LaunchConfiguration(name)  # noqa: E731
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 drive (hmseg-core bag make)"),
        DeclareLaunchArgument("zoo", default_value="", description="model zoo index"),
        DeclareLaunchArgument("model", default_value="", description="single checkpoint when zoo is empty"),
        DeclareLaunchArgument("latency_budget_ms", default_value="0.0", description="p95 budget in ms (0: none)"),
        DeclareLaunchArgument("backend", default_value="auto", description="inference backend (auto: packages on their fastest recorded backend, else tvm; checkpoints on torch)"),
        DeclareLaunchArgument("mode", default_value="lockstep", description="lockstep or recorded"),
        DeclareLaunchArgument("report_dir", default_value="replay_eval_report", description="report folder"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment.yaml"), description="segment node parameters"),
        DeclareLaunchArgument("replay_params_file", default_value=os.path.join(share, "config", "replay_eval.yaml"), description="replay and evaluator parameters"),
    ]
    segment = Node(
        package="hmseg_ros", executable="hmseg_segment", name="hmseg_segment", output="screen",
        parameters=[cfg("params_file"), {
            "zoo": cfg("zoo"), "model": cfg("model"), "backend": cfg("backend"),
            "latency_budget_ms": ParameterValue(cfg("latency_budget_ms"), value_type=float),
            "input_topic": "/hmseg/replay/image", "qos": "reliable",
        }],
    )
    replay = Node(
        package="hmseg_ros", executable="hmseg_replay", name="hmseg_replay", output="screen",
        parameters=[cfg("replay_params_file"), {"bag": cfg("bag"), "mode": cfg("mode")}],
    )
    evaluator = Node(
        package="hmseg_ros", executable="hmseg_evaluator", name="hmseg_evaluator", output="screen",
        parameters=[cfg("replay_params_file"), {"report_dir": cfg("report_dir")}],
    )
    done = RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[EmitEvent(event=Shutdown(reason="evaluation written"))]))
    return LaunchDescription(args + [segment, replay, evaluator, done])
