"""Replay a drive through the segmenter and evaluate it, as three processes:
``ros2 launch hmseg_ros replay_eval.launch.py bag:=drive zoo:=zoo.yaml report_dir:=report``.

The segment node reads ``params_file`` (default config/segment.yaml), replay and evaluator
``replay_params_file`` (default config/replay_eval.yaml); an argument given on the command line
overrides the file's value, one left out (empty) leaves it alone. The segment node always
listens to the replay (reliable QoS). Everything shuts down when the evaluator has written its
report. (``hmseg-core replay-eval`` runs the same nodes in one process.)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from hmseg_ros.launch_args import given_arguments

# launch argument -> parameter type, per node; each is a key of that node's config file
SEGMENT_ARGUMENTS = {"zoo": str, "model": str, "latency_budget_ms": float, "backend": str}
REPLAY_ARGUMENTS = {"bag": str, "mode": str}
EVALUATOR_ARGUMENTS = {"report_dir": str}


def _nodes(context, *args, **kwargs):
    segment_file = LaunchConfiguration("params_file").perform(context)
    replay_file = LaunchConfiguration("replay_params_file").perform(context)
    segment = Node(
        package="hmseg_ros", executable="hmseg_segment", name="hmseg_segment", output="screen",
        parameters=[segment_file, given_arguments(context, SEGMENT_ARGUMENTS), {"input_topic": "/hmseg/replay/image", "qos": "reliable"}],
    )
    replay = Node(
        package="hmseg_ros", executable="hmseg_replay", name="hmseg_replay", output="screen",
        parameters=[replay_file, given_arguments(context, REPLAY_ARGUMENTS)],
    )
    evaluator = Node(
        package="hmseg_ros", executable="hmseg_evaluator", name="hmseg_evaluator", output="screen",
        parameters=[replay_file, given_arguments(context, EVALUATOR_ARGUMENTS)],
    )
    done = RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[EmitEvent(event=Shutdown(reason="evaluation written"))]))
    return [segment, replay, evaluator, done]


def generate_launch_description():
    share = get_package_share_directory("hmseg_ros")
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 drive (hmseg-core bag make)"),
        DeclareLaunchArgument("zoo", default_value="", description="model zoo index (empty: params_file's; both zoo and model empty: the shipped zoo)"),
        DeclareLaunchArgument("model", default_value="", description="single checkpoint when zoo is empty (empty: params_file's)"),
        DeclareLaunchArgument("latency_budget_ms", default_value="", description="p95 budget in ms, 0: none (empty: params_file's)"),
        DeclareLaunchArgument("backend", default_value="", description="inference backend (empty: params_file's)"),
        DeclareLaunchArgument("mode", default_value="", description="lockstep or recorded (empty: replay_params_file's)"),
        DeclareLaunchArgument("report_dir", default_value="", description="report folder (empty: replay_params_file's)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment.yaml"), description="segment node parameters"),
        DeclareLaunchArgument("replay_params_file", default_value=os.path.join(share, "config", "replay_eval.yaml"), description="replay and evaluator parameters"),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
