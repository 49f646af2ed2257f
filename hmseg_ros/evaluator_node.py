"""``hmseg_evaluator``: mIoU and latency of live predictions against replayed ground truth.

Matches ``prediction_topic`` to ``gt_topic`` by header stamp (:class:`StreamEvaluator`),
publishes the running mIoU on ``~/running`` (JSON), and when the replay reports ``done``
on ``replay_status_topic`` waits ``grace_s`` for late predictions, then writes the report
(JSON, Markdown, plot) to ``report_dir`` and publishes the final figures on ``~/final``.
Frames that never got a prediction are counted, not guessed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Dict, List, Optional

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from hmseg_core.bag import LABEL_TOPIC
from hmseg_core.stream_eval import StreamEvaluator, write_report

from .image_conv import ImageDecodeError, image_to_mono
from .node_main import run_node, spin_until
from .params import declare_parameters, descriptor

NODE_NAME = "hmseg_evaluator"
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _d(text: str, lo: float | None = None, hi: float | None = None):
    return descriptor(text, True, lo, hi)


PARAMETERS = {
    "prediction_topic": ("/hmseg_segment/labels", _d("predicted labels (mono8 class ids)")),
    "gt_topic": (LABEL_TOPIC, _d("ground-truth labels (mono8 train ids, 255 = ignored)")),
    "classes_topic": ("/hmseg_segment/classes", _d("class names (JSON, transient-local) when 'class_names' is empty")),
    "class_names": ([""], _d("class names in id order; empty: taken from classes_topic")),
    "replay_status_topic": ("/hmseg_replay/status", _d("replay progress (JSON); 'done' ends the evaluation")),
    "grace_s": (2.0, _d("after the replay is done, wait this long for late predictions", 0.0, 3600.0)),
    "report_dir": ("", _d("write replay_eval.json/.md/.png here at the end; empty: no files")),
}


class EvaluatorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMETERS)
        self._lock = threading.Lock()
        self.evaluator: Optional[StreamEvaluator] = None
        self._early: List[tuple] = []  # messages that came before the class list
        self.bad: Dict[str, int] = {}
        self.report: Optional[Dict] = None
        self.finished = threading.Event()
        self._done_at: Optional[float] = None
        names = [n for n in self.p["class_names"] if n]
        if names:
            self.evaluator = StreamEvaluator(names)
        else:
            self.create_subscription(String, self.p["classes_topic"], self._on_classes, LATCHED)
        self.create_subscription(Image, self.p["gt_topic"], lambda m: self._on_labels(m, truth=True), RELIABLE)
        self.create_subscription(Image, self.p["prediction_topic"], lambda m: self._on_labels(m, truth=False), RELIABLE)
        self.create_subscription(String, self.p["replay_status_topic"], self._on_status, LATCHED)
        self.pub_running = self.create_publisher(String, "~/running", 10)
        self.pub_final = self.create_publisher(String, "~/final", LATCHED)
        self.create_timer(0.1, self._check_finish)

    def _on_classes(self, msg: String) -> None:
        with self._lock:
            if self.evaluator is not None:
                return
            self.evaluator = StreamEvaluator(json.loads(msg.data)["class_names"])
            early, self._early = self._early, []
        for item in early:
            self._feed(*item)

    def _on_labels(self, msg: Image, truth: bool) -> None:
        received = self.get_clock().now().nanoseconds
        try:
            labels = image_to_mono(msg)
        except ImageDecodeError as e:
            with self._lock:
                self.bad[e.kind] = self.bad.get(e.kind, 0) + 1
                first = self.bad[e.kind] == 1
            if first:
                self.get_logger().warning(f"bad {'ground truth' if truth else 'prediction'} ({e.kind}): {e}")
            return
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            if self.evaluator is None:
                self._early.append((truth, stamp, labels, received))
                return
        self._feed(truth, stamp, labels, received)

    def _feed(self, truth: bool, stamp: int, labels, received: int) -> None:
        with self._lock:
            ev = self.evaluator
            rec = ev.add_truth(stamp, labels) if truth else ev.add_prediction(stamp, labels, received)
            n = len(ev.records)
        if rec is not None:
            self.pub_running.publish(String(data=json.dumps({"frames": n, "miou": rec.running_miou, "latency_ms": rec.latency_ms})))

    def _on_status(self, msg: String) -> None:
        if json.loads(msg.data).get("done") and self._done_at is None:
            self._done_at = time.monotonic()

    def _check_finish(self) -> None:
        if self._done_at is not None and not self.finished.is_set() and time.monotonic() - self._done_at >= self.p["grace_s"]:
            self.finish()

    def finish(self, extra: Optional[Dict] = None) -> Dict:
        """Final report (written to ``report_dir`` when set); later calls return the same report."""
        with self._lock:
            if self.report is not None:  # already finished (e.g. on the replay's 'done'): add the extras
                self.report.update(extra or {})
                return self.report
            ev = self.evaluator or StreamEvaluator([])
            rep = ev.report()
            rep["bad_messages"] = dict(self.bad)
            rep.update(extra or {})
            self.report = rep
        if self.p["report_dir"]:
            paths = write_report(rep, self.p["report_dir"])
            self.get_logger().info(f"report: {paths['markdown']}")
        lat = rep["latency_ms"] or {}
        self.get_logger().info(
            f"evaluated {rep['frames_evaluated']}/{rep['frames_with_truth']} frames: mIoU {100 * rep['miou']:.2f} %, "
            f"latency p50 {lat.get('p50', float('nan')):.1f} ms, p95 {lat.get('p95', float('nan')):.1f} ms, "
            f"{rep['frames_without_prediction']} without prediction"
        )
        summary = {k: rep[k] for k in ("miou", "frames_evaluated", "frames_with_truth", "frames_without_prediction", "latency_ms")}
        self.pub_final.publish(String(data=json.dumps(summary)))
        self.finished.set()
        return rep


def main(args=None) -> int:
    return run_node(NODE_NAME, EvaluatorNode, spin_until(lambda node: node.finished.is_set()), args=args)


if __name__ == "__main__":
    sys.exit(main())
