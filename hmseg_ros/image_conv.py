"""``sensor_msgs/msg/Image`` <-> NumPy.

Every message is first checked by :mod:`hmseg_core.image_codec` (encoding, size, step,
length), so a bad message fails with the same :class:`ImageDecodeError` kind whichever
converter runs. The pixels are then converted by the distro's ``cv_bridge`` where it can
be imported (a ROS 2 install), else by ``image_codec`` (a pip install with the PyPI ROS
wheels, which have no working cv_bridge). Tests run both against the same encodings.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
from sensor_msgs.msg import Image

from hmseg_core import image_codec
from hmseg_core.image_codec import ENCODINGS, ImageDecodeError

__all__ = ["ENCODINGS", "ImageDecodeError", "cv_bridge", "image_to_rgb", "image_to_mono", "numpy_to_image", "raw"]


@lru_cache(maxsize=1)
def cv_bridge():
    """The distro's ``CvBridge`` or None when it cannot be imported here."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


def raw(msg: Image) -> image_codec.RawImage:
    return image_codec.RawImage(msg.height, msg.width, msg.encoding, msg.step, msg.data, msg.is_bigendian)


def image_to_rgb(msg: Image, use_cv_bridge: Optional[bool] = None) -> np.ndarray:
    """Any supported encoding -> RGB uint8 (H, W, 3); raises :class:`ImageDecodeError`."""
    rgb = image_codec.to_rgb(raw(msg))  # validates; cheap next to inference
    bridge = cv_bridge() if use_cv_bridge in (None, True) else None
    if use_cv_bridge and bridge is None:
        raise RuntimeError("cv_bridge was requested but cannot be imported")
    if bridge is not None:
        return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    return rgb


def image_to_mono(msg: Image) -> np.ndarray:
    """A mono8 label image -> uint8 (H, W); raises :class:`ImageDecodeError`."""
    return image_codec.to_mono(raw(msg))


def numpy_to_image(array: np.ndarray, encoding: str, header=None, use_cv_bridge: Optional[bool] = None) -> Image:
    """uint8 pixels already in ``encoding``'s channel order -> ``Image`` (header copied when given)."""
    bridge = cv_bridge() if use_cv_bridge in (None, True) else None
    if use_cv_bridge and bridge is None:
        raise RuntimeError("cv_bridge was requested but cannot be imported")
    if bridge is not None:
        msg = bridge.cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    else:
        h, w, step, data = image_codec.encode(array, encoding)
        msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=step)
        msg.data = data
    if header is not None:
        msg.header = header
    return msg
