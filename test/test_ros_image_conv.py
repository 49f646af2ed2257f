"""sensor_msgs/Image <-> NumPy: the package's converter, and the distro's cv_bridge on the same encodings."""

from __future__ import annotations

import numpy as np
import pytest
from ros_testing import RCLPY_MISSING

if RCLPY_MISSING:
    pytest.skip(RCLPY_MISSING, allow_module_level=True)

from hmseg_core import image_codec  # noqa: E402
from hmseg_ros.image_conv import ImageDecodeError, cv_bridge, image_to_mono, image_to_rgb, numpy_to_image  # noqa: E402

ENCODINGS = list(image_codec.ENCODINGS)


def sample(encoding):
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    if encoding == "mono8":
        rgb = np.repeat(image_codec.from_rgb(rgb, "mono8")[..., None], 3, axis=2)
    return rgb, image_codec.from_rgb(rgb, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_own_conversion_round_trip(encoding):
    rgb, px = sample(encoding)
    msg = numpy_to_image(px, encoding, use_cv_bridge=False)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (6, 9, encoding, 9 * px.reshape(6, 9, -1).shape[2])
    np.testing.assert_array_equal(image_to_rgb(msg, use_cv_bridge=False), rgb)


@pytest.mark.skipif(cv_bridge() is None, reason="cv_bridge is not importable here (it comes with a ROS 2 distro; the PyPI port breaks on NumPy 2)")
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cv_bridge_agrees_with_own_conversion(encoding):
    rgb, px = sample(encoding)
    ours, theirs = numpy_to_image(px, encoding, use_cv_bridge=False), numpy_to_image(px, encoding, use_cv_bridge=True)
    assert bytes(ours.data) == bytes(theirs.data) and ours.step == theirs.step
    np.testing.assert_array_equal(image_to_rgb(ours, use_cv_bridge=True), image_to_rgb(ours, use_cv_bridge=False))


def test_labels_and_bad_messages():
    lbl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(image_to_mono(numpy_to_image(lbl, "mono8")), lbl)
    with pytest.raises(ImageDecodeError) as e:
        image_to_mono(numpy_to_image(np.zeros((3, 4, 3), np.uint8), "rgb8"))
    assert e.value.kind == "encoding"
    msg = numpy_to_image(np.zeros((3, 4, 3), np.uint8), "rgb8", use_cv_bridge=False)
    msg.data = bytes(35)
    with pytest.raises(ImageDecodeError) as e:
        image_to_rgb(msg)
    assert e.value.kind == "truncated"


@pytest.mark.parametrize("use_cv_bridge", [False, None])
def test_a_message_claiming_a_huge_size_is_refused_before_any_allocation(use_cv_bridge):
    import tracemalloc

    from sensor_msgs.msg import Image

    msg = Image(encoding="rgb8", height=100_000, width=100_000, step=300_000)  # 30 GB claimed
    msg.data = bytes(12)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError) as e:
            image_to_rgb(msg, use_cv_bridge=use_cv_bridge)  # the check runs before cv_bridge sees it
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.kind == "truncated" and "step*height" in str(e.value)
    assert peak < 1 << 20, peak
