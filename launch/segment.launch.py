"""Segment a camera: ``ros2 launch hmseg_ros segment.launch.py input_topic:=/camera/image_raw zoo:=/path/zoo.yaml latency_budget_ms:=30``.

Parameters come from ``params_file`` (default: the packaged config/segment.yaml); each argument
below that is given on the command line overrides that file's value, and an argument left out
(empty) leaves it alone, so ``params_file:=my.yaml`` runs with my.yaml's values.

``namespace:=front`` runs the node as ``/front/hmseg_segment``: its outputs move to
``/front/hmseg_segment/...`` and the default (relative) ``input_topic`` becomes
``/front/camera/image_raw``, so one launch per camera runs several side by side.

Needs the package built with colcon (``ros2 launch`` runs the executables in
``<prefix>/lib/hmseg_ros/``, which a plain ``pip install`` does not create).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from hmseg_ros.launch_args import given_arguments

# launch argument -> parameter type; each is a key of config/segment.yaml
ARGUMENTS = {"input_topic": str, "zoo": str, "model": str, "latency_budget_ms": float, "backend": str}


def _node(context, *args, **kwargs):
    return [Node(
        package="hmseg_ros",
        executable="hmseg_segment",
        name="hmseg_segment",
        namespace=LaunchConfiguration("namespace").perform(context),
        output="screen",
        # later entries win: the params file, then only the arguments actually given
        parameters=[LaunchConfiguration("params_file").perform(context), given_arguments(context, ARGUMENTS)],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("hmseg_ros"), "config", "segment.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameters file (/**: ros__parameters:)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node, e.g. one per camera (front, rear)"),
    ]
    args += [
        DeclareLaunchArgument(name, default_value="", description=f"segment node parameter '{name}' (empty: the value in params_file)")
        for name in ARGUMENTS
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
