"""hmseg: an ament_python package (colcon on a ROS 2 distro) that also pip-installs on plain Python."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "hmseg_ros"

# Every pinned version lives here, and only here.
PINS = {
    "torch": "torch==2.13.0",
    "numpy": "numpy>=1.26",
    "pillow": "pillow>=10",
    "pyyaml": "pyyaml>=6",
    "tqdm": "tqdm>=4.66",
    "matplotlib": "matplotlib>=3.8",
    "pytest": "pytest>=8,<9",  # launch_testing does not support pytest 9
    "rosbags": "rosbags>=0.10",
    "apache-tvm": "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi": "apache-tvm-ffi==0.1.14.post0",  # 0.1.15.post2 segfaults in MetaSchedule
    "psutil": "psutil>=5.9",
    # MetaSchedule's cost model; the -cpu wheel leaves out the CUDA/NCCL libraries
    "xgboost": "xgboost-cpu>=3.0,<3.3",
    "cloudpickle": "cloudpickle>=3.0",  # MetaSchedule's builder ships work to its worker processes with it
    "onnx": "onnx>=1.17",
    "onnxruntime": "onnxruntime>=1.20",
    "onnxscript": "onnxscript>=0.7",  # torch.onnx.export(dynamo=True) needs it
    "openvino": "openvino>=2026.4",
}
# On a ROS 2 distro these come from the distro; on plain Python from the PyPI ROS wheels.
ROS_WHEELS = ["ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["hmseg_core", "hmseg_core.*", "hmseg_ros", "hmseg_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    package_data={"hmseg_core": ["zoo/*.yaml", "zoo/*.pt", "zoo/records/*.md", "zoo/records/*/*.json"]},
    python_requires=">=3.10",
    install_requires=[PINS[k] for k in ("torch", "numpy", "pillow", "pyyaml", "tqdm", "matplotlib")],
    extras_require={
        "ros": ROS_WHEELS + [PINS["rosbags"]],
        "tvm": [PINS["apache-tvm"], PINS["apache-tvm-ffi"], PINS["psutil"], PINS["xgboost"], PINS["cloudpickle"]],
        "onnx": [PINS["onnx"], PINS["onnxruntime"], PINS["onnxscript"]],
        "openvino": [PINS["openvino"]],
        "test": [PINS["pytest"]],
    },
    zip_safe=True,
    maintainer="hmseg developers",
    maintainer_email="hmseg@example.org",
    description="HMSeg real-time semantic segmentation: networks, search, training, TVM deployment, ROS 2 nodes",
    license="Apache-2.0",
    entry_points={
        # subcommands of `hmseg-core` that live outside hmseg_core (which imports no ROS)
        "hmseg_core.commands": ["replay-eval = hmseg_ros.cli:register"],
        "console_scripts": [
            "hmseg-core = hmseg_core.cli:main",
            "hmseg_segment = hmseg_ros.segment_node:main",
            "hmseg_replay = hmseg_ros.replay_node:main",
            "hmseg_evaluator = hmseg_ros.evaluator_node:main",
        ],
    },
)
