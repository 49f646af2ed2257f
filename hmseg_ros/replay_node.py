"""``hmseg_replay``: publishes a rosbag2 drive (camera frames + ground-truth labels).

Modes:

* ``recorded``: at the bag's own rate (times ``rate_scale``), like ``ros2 bag play``;
* ``lockstep``: as fast as the segmenter keeps up; each frame waits for its prediction
  on ``pace_topic`` (or ``lockstep_timeout_s``) before the next is sent, so no frame is
  dropped and the evaluation covers every frame.

With ``restamp`` (default) each frame and its labels get the current time as stamp, so
the evaluator measures latency from stamp to prediction on one clock. ``~/status``
(transient-local JSON) reports progress and ``done``.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from hmseg_core.bag import IMAGE_TOPIC, LABEL_TOPIC, read_drive, read_info

from .image_conv import numpy_to_image
from .node_main import run_node, spin_until
from .params import declare_parameters, descriptor

NODE_NAME = "hmseg_replay"
MODES = ("recorded", "lockstep")


def _d(text: str, lo: float | None = None, hi: float | None = None):
    return descriptor(text, True, lo, hi)


PARAMETERS = {
    "bag": ("", _d("rosbag2 drive to publish (folder written by 'hmseg-core bag make' or ros2 bag record)")),
    "bag_image_topic": (IMAGE_TOPIC, _d("camera topic inside the bag")),
    "bag_label_topic": (LABEL_TOPIC, _d("ground-truth label topic inside the bag")),
    "image_topic": (IMAGE_TOPIC, _d("where the frames are published")),
    "label_topic": (LABEL_TOPIC, _d("where the ground-truth labels are published")),
    "mode": ("recorded", _d("recorded: the bag's rate; lockstep: wait for each prediction on pace_topic")),
    "rate_scale": (1.0, _d("recorded mode: playback speed factor", 0.01, 100.0)),
    "pace_topic": ("/hmseg_segment/labels", _d("lockstep mode: predictions to wait for (matched by stamp)")),
    "lockstep_timeout_s": (5.0, _d("lockstep mode: give up waiting for a prediction after this long", 0.01, 600.0)),
    "restamp": (True, _d("stamp frames with the current time (latency on one clock)")),
    "wait_for_subscribers": (1, descriptor("start once the image topic has this many subscribers", True, 0, 1000)),
    "wait_for_label_subscribers": (0, descriptor("start once the label topic has this many subscribers (an evaluator)", True, 0, 1000)),
    "start_timeout_s": (30.0, _d("give up waiting for subscribers after this long and publish anyway", 0.0, 3600.0)),
}

RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


class ReplayNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._stop = threading.Event()
        p = declare_parameters(self, PARAMETERS, _check)
        if not p["bag"]:
            raise ValueError("parameter 'bag' is required (a rosbag2 folder)")
        self.p = p
        self.info = read_info(p["bag"])
        self.pub_image = self.create_publisher(Image, p["image_topic"], RELIABLE)
        self.pub_labels = self.create_publisher(Image, p["label_topic"], RELIABLE)
        self.pub_status = self.create_publisher(
            String, "~/status", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        self._paced = threading.Event()
        self._waiting_for = None
        if p["mode"] == "lockstep":
            self.create_subscription(Image, p["pace_topic"], self._on_prediction, RELIABLE)
        self.published = self.timeouts = 0
        self.done = threading.Event()
        self._status()
        self._thread = threading.Thread(target=self._play, name="hmseg_replay", daemon=True)
        self._thread.start()

    def _status(self) -> None:
        self.pub_status.publish(String(data=json.dumps(
            {"published": self.published, "frames": self.info.get("frames"), "lockstep_timeouts": self.timeouts, "done": self.done.is_set()}
        )))

    def _on_prediction(self, msg: Image) -> None:
        if self._waiting_for is not None and (msg.header.stamp.sec, msg.header.stamp.nanosec) == self._waiting_for:
            self._paced.set()

    def _listeners(self) -> str:
        p = self.p
        text = (f"{self.pub_image.get_subscription_count()}/{p['wait_for_subscribers']} subscribers on {p['image_topic']}, "
                f"{self.pub_labels.get_subscription_count()}/{p['wait_for_label_subscribers']} on {p['label_topic']}")
        if p["mode"] == "lockstep":
            text += f", {self.count_publishers(p['pace_topic'])}/1 publishers on {p['pace_topic']}"
        return text

    def _listeners_ready(self) -> bool:
        """The frames' consumers are there: segmenters on the image topic, evaluators on the label
        topic, and in lockstep the predictions' publisher (else every frame waits its full timeout)."""
        p = self.p
        return (self.pub_image.get_subscription_count() >= p["wait_for_subscribers"]
                and self.pub_labels.get_subscription_count() >= p["wait_for_label_subscribers"]
                and (p["mode"] != "lockstep" or self.count_publishers(p["pace_topic"]) >= 1))

    def _play(self) -> None:
        p, log = self.p, self.get_logger()
        try:
            deadline = time.monotonic() + p["start_timeout_s"]
            while not self._listeners_ready():
                if time.monotonic() >= deadline:
                    log.warning(f"{self._listeners()} after {p['start_timeout_s']} s (start_timeout_s); publishing anyway")
                    break
                if self._stop.wait(0.05):
                    return
            log.info(f"replaying {p['bag']} ({p['mode']}) on {self.pub_image.topic_name}")
            t_start, bag_start = time.monotonic(), None
            for frame in read_drive(p["bag"], p["bag_image_topic"], p["bag_label_topic"]):
                if self._stop.is_set():
                    return
                if p["mode"] == "recorded":
                    bag_start = frame.stamp_ns if bag_start is None else bag_start
                    due = t_start + (frame.stamp_ns - bag_start) / 1e9 / p["rate_scale"]
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                header = Header(frame_id=self.info.get("frame_id", "camera"))
                if p["restamp"]:
                    header.stamp = self.get_clock().now().to_msg()
                else:
                    header.stamp.sec, header.stamp.nanosec = divmod(frame.stamp_ns, 1_000_000_000)
                self._paced.clear()
                self._waiting_for = (header.stamp.sec, header.stamp.nanosec)
                # ground truth first: the evaluator then always holds it when the prediction comes
                self.pub_labels.publish(numpy_to_image(frame.labels, "mono8", header))
                self.pub_image.publish(numpy_to_image(frame.image, "rgb8", header))
                self.published += 1
                if p["mode"] == "lockstep" and not self._paced.wait(p["lockstep_timeout_s"]):
                    self.timeouts += 1
                    log.warning(f"no prediction for frame {self.published} within {p['lockstep_timeout_s']} s; going on")
                if self.published % 20 == 0:
                    self._status()
        except Exception as e:  # a broken bag ends the replay, reported, not a dead thread
            log.error(f"replay stopped: {type(e).__name__}: {e}")
        finally:
            self.done.set()
            self._status()
            log.info(f"replay finished: {self.published} frames, {self.timeouts} lockstep timeouts")

    def destroy_node(self) -> None:
        # the events and the thread are absent when start-up failed before they existed
        stop, paced, thread = (getattr(self, a, None) for a in ("_stop", "_paced", "_thread"))
        for event in (stop, paced):
            if event is not None:
                event.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=5.0)
        super().destroy_node()


def _check(name: str, value) -> str | None:
    if name == "mode" and value not in MODES:
        return f"'mode' must be one of {', '.join(MODES)}, got {value!r}"
    return None


def main(args=None) -> int:
    # the drain spins let the final status and last messages go out
    return run_node(NODE_NAME, ReplayNode, spin_until(lambda node: node.done.is_set(), drain=10), args=args)


if __name__ == "__main__":
    sys.exit(main())
