"""Segment a camera: ``ros2 launch hmseg_ros segment.launch.py input_topic:=/camera/image_raw zoo:=/path/zoo.yaml latency_budget_ms:=30``.

Every argument is a key of config/segment.yaml and defaults to that file's value; the
params file is applied first and the arguments override it.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

# launch argument -> parameter type
ARGUMENTS = {"input_topic": str, "zoo": str, "model": str, "latency_budget_ms": float, "backend": str}


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("hmseg_ros"), "config", "segment.yaml")
    with open(default_params) as f:
        defaults = yaml.safe_load(f)["/**"]["ros__parameters"]
    args = [DeclareLaunchArgument("params_file", default_value=default_params, description="parameters file (/**: ros__parameters:)")]
    args += [
        DeclareLaunchArgument(name, default_value=str(defaults[name]), description=f"segment node parameter '{name}'")
        for name in ARGUMENTS
    ]
    node = Node(
        package="hmseg_ros",
        executable="hmseg_segment",
        name="hmseg_segment",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {name: ParameterValue(LaunchConfiguration(name), value_type=t) for name, t in ARGUMENTS.items()},
        ],
    )
    return LaunchDescription(args + [node])
