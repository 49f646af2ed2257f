"""hmseg_segment running a model package on the TVM backend, over real rclpy topics, in one process."""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import RCLPY_MISSING, Spinner, tiny_checkpoint, wait_for

pytestmark = pytest.mark.tvm
if RCLPY_MISSING:
    pytest.skip(RCLPY_MISSING, allow_module_level=True)
pytest.importorskip("tvm", reason="TVM not installed (pip install 'hmseg[tvm]')")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from hmseg_core import image_codec  # noqa: E402
from hmseg_core.deploy.export import ExportOptions, export_package  # noqa: E402
from hmseg_core.runtime import Segmenter  # noqa: E402
from hmseg_ros.image_conv import numpy_to_image  # noqa: E402
from hmseg_ros.segment_node import SegmentNode  # noqa: E402

H, W = 48, 64
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("tvm_pkg")
    ckpt = tiny_checkpoint(root / "tiny.pt", seed=3, miou=0.4)
    return export_package(ckpt, root / "pkg", ExportOptions(input_size=(H, W), onnx=False), log=lambda s: None).root


def test_node_segments_with_a_tvm_package_after_tvm_ran_in_this_process(package, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    expected = Segmenter(package, backend="tvm")(rgb)  # TVM compiled (fixture) and ran here before rclpy starts
    spinner = Spinner()
    try:
        params = dict(model=str(package), backend="tvm", input_topic="/tvm_cam/image", threads=1,
                      latency_cache=str(tmp_path / "latency.json"), measure_iterations=2)
        node = spinner.add(SegmentNode(context=spinner.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
        probe = spinner.node("tvm_probe")
        labels = []
        probe.create_subscription(Image, "/hmseg_segment/labels", labels.append, RELIABLE)
        pub = probe.create_publisher(Image, "/tvm_cam/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() > 0 and node.pub_labels.get_subscription_count() > 0, 20.0), \
            "discovery did not complete"
        msg = numpy_to_image(image_codec.from_rgb(rgb, "rgb8"), "rgb8")
        assert wait_for(lambda: pub.publish(msg) or bool(labels), 20.0, period=0.2), "no labels"
        out = labels[0]
        got = image_codec.to_mono(image_codec.RawImage(out.height, out.width, out.encoding, out.step, out.data))
        np.testing.assert_array_equal(got, expected)
        assert node.segmenter.backend_name == "tvm"
    finally:
        spinner.close()
