"""rosbag2 drives with ground truth: write them from image sequences, read them back. No ROS needed.

A drive bag holds camera frames (``sensor_msgs/Image``, rgb8) on one topic and label maps
(``sensor_msgs/Image``, mono8, train ids, 255 = ignored) with the same header stamp on a
second topic, plus one ``std_msgs/String`` on :data:`INFO_TOPIC` describing the class list.
Both rosbag2 storage formats (mcap and sqlite3, metadata version 9) are written with the
pure-Python ``rosbags`` library, so Jazzy/Kilted ``ros2 bag`` read them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from . import image_codec
from .data.datasets import CAMVID, IGNORE_INDEX, DatasetSpec, SegmentationDataset

IMAGE_TOPIC = "/camera/image_raw"
LABEL_TOPIC = "/camera/labels"
INFO_TOPIC = "/hmseg/drive_info"
STORAGES = ("mcap", "sqlite3")
IMAGE_TYPE = "sensor_msgs/msg/Image"


class BagError(ValueError):
    """A bag is missing, unreadable (truncated, corrupt, not rosbag2) or lacks the expected topics;
    the message names the bag and says what to do, on one line."""


@dataclass
class Frame:
    """One drive frame: RGB uint8 (H, W, 3), train ids uint8 (H, W), and its stamp in ns."""

    image: np.ndarray
    labels: np.ndarray
    stamp_ns: int = 0
    name: str = ""


def _typestore():
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        raise BagError("rosbag2 support needs the 'rosbags' package: pip install 'hmseg_ros[ros]' (or pip install rosbags)") from None
    return get_typestore(Stores.ROS2_KILTED)


# ---------------------------------------------------------------------------- sources
def synthetic_drive(frames: int = 60, size: Tuple[int, int] = (360, 480), seed: int = 0, speed: float = 0.01) -> Iterator[Frame]:
    """The built-in drive: one generated street whose skyline slides by ``speed`` image widths a frame."""
    from .data.synthetic import VOID, render_street

    for i in range(frames):
        img, lbl = render_street(np.random.default_rng(seed), size[0], size[1], shift=i * speed)
        lbl = np.where(lbl == VOID, IGNORE_INDEX, lbl).astype(np.uint8)
        yield Frame(img, lbl, name=f"synthetic_{i:05d}")


def dataset_drive(root: str | os.PathLike, split: str = "val", layout: Optional[str] = None, limit: int = 0) -> Tuple[DatasetSpec, Iterator[Frame]]:
    """Frames of a CamVid- or Cityscapes-layout split in file order (labels mapped to train ids)."""
    ds = SegmentationDataset(root, split, layout)
    n = len(ds) if limit <= 0 else min(limit, len(ds))

    def frames() -> Iterator[Frame]:
        for i in range(n):
            img, lbl = ds[i]
            yield Frame(img, lbl, name=ds.name(i))

    return ds.spec, frames()


# ---------------------------------------------------------------------------- writing
def make_bag(
    out: str | os.PathLike,
    frames: Iterable[Frame],
    spec: DatasetSpec = CAMVID,
    storage: str = "mcap",
    rate_hz: float = 10.0,
    start_ns: int = 1_700_000_000_000_000_000,
    image_topic: str = IMAGE_TOPIC,
    label_topic: str = LABEL_TOPIC,
    frame_id: str = "camera",
) -> dict:
    """Write ``frames`` as a rosbag2 drive at ``rate_hz``; returns a summary (frames, size, path)."""
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r}: use one of {', '.join(STORAGES)}")
    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists (rosbag2 writes a new folder)")
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    Image, Header, Time, String = (ts.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time", "std_msgs/msg/String"))
    period = int(round(1e9 / rate_hz))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    count, size = 0, None
    names: List[str] = []
    try:
        with Writer(out, version=9, storage_plugin=plugin) as w:
            c_info = w.add_connection(INFO_TOPIC, String.__msgtype__, typestore=ts)
            c_img = w.add_connection(image_topic, Image.__msgtype__, typestore=ts)
            c_lbl = w.add_connection(label_topic, Image.__msgtype__, typestore=ts)
            for i, f in enumerate(frames):
                if f.image.shape[:2] != f.labels.shape:
                    raise ValueError(f"frame {i} ({f.name}): image {f.image.shape[:2]} and labels {f.labels.shape} differ in size")
                size = size or f.image.shape[:2]
                stamp = start_ns + i * period
                header = Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)
                for conn, arr, enc in ((c_img, f.image, "rgb8"), (c_lbl, f.labels, "mono8")):
                    h, wd, step, data = image_codec.encode(arr, enc)
                    msg = Image(header=header, height=h, width=wd, encoding=enc, is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))
                    w.write(conn, stamp, ts.serialize_cdr(msg, Image.__msgtype__))
                names.append(f.name)
                count += 1
            if count == 0:
                raise ValueError("no frames to write")
            info = {"dataset": spec.name, "class_names": list(spec.class_names), "palette": [list(c) for c in spec.palette],
                    "frames": count, "rate_hz": rate_hz, "frame_id": frame_id, "image_topic": image_topic, "label_topic": label_topic, "names": names}
            w.write(c_info, start_ns, ts.serialize_cdr(String(data=json.dumps(info)), String.__msgtype__))
    except BaseException:
        # rosbags leaves a half-written folder behind; a drive is all or nothing
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"path": str(out), "storage": storage, "frames": count, "size": list(size), "rate_hz": rate_hz,
            "image_topic": image_topic, "label_topic": label_topic}


# ---------------------------------------------------------------------------- reading
def _raw(msg) -> image_codec.RawImage:
    return image_codec.RawImage(int(msg.height), int(msg.width), str(msg.encoding), int(msg.step), msg.data, int(msg.is_bigendian))


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _unreadable(path: Path, e: BaseException) -> BagError:
    return BagError(
        f"{path}: not a readable rosbag2 bag ({_first_line(e)}); give the bag's folder (with metadata.yaml), "
        "or record it again ('hmseg-core bag make', 'ros2 bag record') if it is truncated"
    )


@contextmanager
def _open(path: Path):
    """An open ``AnyReader``; what rosbags raises for a truncated, corrupt or foreign bag (at
    opening or while reading) becomes a :class:`BagError`."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError

    broken = (AnyReaderError, ReaderError, SerdeError, sqlite3.Error, struct.error, EOFError)
    if not path.exists():
        raise BagError(f"{path}: bag not found")
    typestore = _typestore()
    try:
        reader = AnyReader([path], default_typestore=typestore)
        reader.open()
    except broken + (FileNotFoundError,) as e:  # a folder without metadata.yaml: FileNotFoundError
        raise _unreadable(path, e) from None
    try:
        yield reader
    except broken as e:
        raise _unreadable(path, e) from None
    finally:
        reader.close()


def read_info(path: str | os.PathLike) -> dict:
    """The drive description written by :func:`make_bag` (empty dict for other bags)."""
    path = Path(path)
    with _open(path) as r:
        conns = [c for c in r.connections if c.topic == INFO_TOPIC]
        for conn, _, raw in r.messages(connections=conns):
            return json.loads(r.deserialize(raw, conn.msgtype).data)
    return {}


def read_drive(path: str | os.PathLike, image_topic: str = IMAGE_TOPIC, label_topic: Optional[str] = LABEL_TOPIC) -> Iterator[Frame]:
    """Frames of a bag in stamp order; labels paired by header stamp (frames without labels get
    an all-ignore map, so a bag without ground truth still replays)."""
    path = Path(path)
    with _open(path) as r:
        topics = {c.topic for c in r.connections}
        if image_topic not in topics:
            raise BagError(f"{path}: no topic {image_topic!r}; topics: {', '.join(sorted(topics))}")
        for topic in (image_topic, label_topic):
            types = {c.msgtype for c in r.connections if c.topic == topic}
            if topic in topics and types != {IMAGE_TYPE}:
                raise BagError(f"{path}: topic {topic!r} holds {', '.join(sorted(types))}, not {IMAGE_TYPE}")
        labels = {}
        if label_topic and label_topic in topics:
            for conn, _, raw in r.messages(connections=[c for c in r.connections if c.topic == label_topic]):
                msg = r.deserialize(raw, conn.msgtype)
                labels[_stamp(msg)] = _decode(path, label_topic, msg, image_codec.to_mono)
        for conn, _, raw in r.messages(connections=[c for c in r.connections if c.topic == image_topic]):
            msg = r.deserialize(raw, conn.msgtype)
            stamp = _stamp(msg)
            img = _decode(path, image_topic, msg, image_codec.to_rgb)
            lbl = labels.get(stamp)
            if lbl is None:
                lbl = np.full(img.shape[:2], IGNORE_INDEX, np.uint8)
            yield Frame(img, lbl, stamp)


def _decode(path: Path, topic: str, msg, convert):
    try:
        return convert(_raw(msg))
    except image_codec.ImageDecodeError as e:
        raise BagError(f"{path}: a message on {topic} at stamp {_stamp(msg)} ns is not a valid image ({e})") from None


def evaluate_frames(segmenter, frames: Iterable[Frame], num_classes: int):
    """Offline reference: the confusion matrix of ``segmenter`` over ``frames`` (no ROS in between)."""
    import torch

    from .metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes)
    for f in frames:
        cm.update(torch.from_numpy(segmenter(f.image)), torch.from_numpy(f.labels))
    return cm
