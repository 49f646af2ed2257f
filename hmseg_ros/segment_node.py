"""``hmseg_segment``: camera images in, label masks out, within a latency budget.

Subscribes ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) on ``input_topic`` and
publishes, with the input's header:

* ``~/labels``  mono8 class ids at the input size,
* ``~/color``   rgb8 palette image,
* ``~/overlay`` rgb8 palette blended over the input (only while someone subscribes),
* ``~/classes`` class names and palette, JSON in ``std_msgs/String``, once, transient-local,
* ``~/variant`` the selected variant and the candidates, JSON, transient-local, on each choice,
* ``/diagnostics`` latency p50/p95, FPS, dropped and bad frames, selected variant.

At start every variant of the model zoo is timed on this machine (cached per device
fingerprint) and the most accurate one whose p95 fits ``latency_budget_ms`` runs;
setting that parameter at run time selects again and swaps the model without a restart.

Only the newest frame is kept: inference runs on a worker thread, and a frame that arrives
while another is still waiting replaces it (counted as dropped), so a slow model never
builds a queue.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Dict, List

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

from hmseg_core.runtime import (
    AUTO,
    FrameStream,
    LatencyCache,
    Measurement,
    ModelZoo,
    ResizePolicy,
    Segmenter,
    Selection,
    backend_names,
    default_zoo_path,
    device_fingerprint,
    measure_zoo,
    overlay,
    select_variant,
)
from hmseg_core.runtime.backends import backend_class

from .image_conv import ImageDecodeError, image_to_rgb, numpy_to_image
from .node_main import run_node

NODE_NAME = "hmseg_segment"
MAX_BUDGET_MS = 60_000.0
QOS_CHOICES = ("sensor_data", "reliable")


def _desc(text: str, read_only: bool = False, lo=None, hi=None, step=None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=read_only)
    if isinstance(lo, float):
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    elif isinstance(lo, int):
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step or 1)]
    return d


# name -> (default, descriptor). config/segment.yaml lists the same keys; a test checks it.
PARAMETERS = {
    "zoo": ("", _desc("model zoo index (YAML/JSON: name, checkpoint, miou per variant); empty: use 'model', or the zoo shipped with hmseg when both are empty", True)),
    "model": ("", _desc("a single checkpoint, used when 'zoo' is empty", True)),
    "latency_budget_ms": (0.0, _desc("p95 latency budget per frame in ms; picks the most accurate variant that fits; 0: no budget (most accurate)", False, 0.0, MAX_BUDGET_MS)),
    "backend": (AUTO, _desc(f"inference backend: {AUTO} (a package on its fastest backend recorded here by `hmseg-core bench --record`, else tvm; checkpoints on torch), {', '.join(backend_names())}", True)),
    "device": ("cpu", _desc("torch device for the torch backend (cpu, cuda, cuda:1)", True)),
    "threads": (0, _desc("intra-op CPU threads for inference; 0: library default", True, 0, 256)),
    "input_topic": ("/camera/image_raw", _desc("sensor_msgs/Image topic to segment", True)),
    "labels_topic": ("~/labels", _desc("output: mono8 class ids at the input size", True)),
    "color_topic": ("~/color", _desc("output: rgb8 palette image", True)),
    "overlay_topic": ("~/overlay", _desc("output: rgb8 palette blended over the input (published only while subscribed)", True)),
    "classes_topic": ("~/classes", _desc("output: class names and palette as JSON, transient-local", True)),
    "qos": ("sensor_data", _desc("input QoS: sensor_data (best effort, keep last 5) or reliable (keep last 5)", True)),
    "resize_policy": ("native", _desc("native: run the network at the image size; fixed: at network_height x network_width (labels return at image size)", True)),
    "network_height": (360, _desc("network input height for resize_policy fixed", True, 16, 8192)),
    "network_width": (480, _desc("network input width for resize_policy fixed", True, 16, 8192)),
    "expected_height": (360, _desc("camera image height the variants are timed at (resize_policy native)", True, 16, 8192)),
    "expected_width": (480, _desc("camera image width the variants are timed at (resize_policy native)", True, 16, 8192)),
    "measure_iterations": (20, _desc("timed runs per variant when measuring latency", True, 1, 1000)),
    "latency_cache": ("", _desc("latency cache file; empty: ~/.cache/hmseg/latency.json", True)),
    "publish_labels": (True, _desc("publish ~/labels")),
    "publish_color": (True, _desc("publish ~/color")),
    "publish_overlay": (True, _desc("publish ~/overlay while it has subscribers")),
    "overlay_alpha": (0.5, _desc("weight of the palette in ~/overlay", False, 0.0, 1.0)),
    "diagnostics_period_s": (1.0, _desc("period of /diagnostics and the latency window", True, 0.1, 60.0)),
}


class SegmentNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        if p["qos"] not in QOS_CHOICES:
            raise ValueError(f"qos {p['qos']!r}: use one of {', '.join(QOS_CHOICES)}")
        if p["backend"] != AUTO:
            backend_class(p["backend"])  # an unknown backend fails here, naming the choices
        self.backend, self.device = p["backend"], p["device"]
        if p["threads"]:
            import torch

            torch.set_num_threads(int(p["threads"]))
        self.resize = ResizePolicy(p["resize_policy"], (p["network_height"], p["network_width"]) if p["resize_policy"] == "fixed" else None)

        # model zoo: measure each variant here, then choose for the budget
        if p["zoo"]:
            self.zoo = ModelZoo.load(p["zoo"])
        elif p["model"]:
            self.zoo = ModelZoo.single(p["model"])
        else:
            self.zoo = ModelZoo.load(default_zoo_path())
        class_names = self.zoo.class_names()
        size = self.resize.size if self.resize.mode == "fixed" else (p["expected_height"], p["expected_width"])
        cache = LatencyCache(p["latency_cache"] or LatencyCache.default_path())
        self.measurements: List[Measurement] = measure_zoo(
            self.zoo, size, self.backend, self.resize, self.device, cache, p["measure_iterations"], log=self.get_logger().info
        )
        self.fingerprint = device_fingerprint(self.backend, self.device)
        self._selection = self._select(p["latency_budget_ms"])
        self.segmenter = self._load(self._selection)

        self.declare_parameter("class_names", class_names, _desc("class names of the running model, in id order", True))
        self.declare_parameter("palette", [int(v) for c in self.segmenter.palette for v in c], _desc("palette, r,g,b per class id, flattened", True))

        # topics
        in_qos = qos_profile_sensor_data if p["qos"] == "sensor_data" else QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)  # reliable publishers match every subscriber
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_labels = self.create_publisher(Image, p["labels_topic"], out_qos)
        self.pub_color = self.create_publisher(Image, p["color_topic"], out_qos)
        self.pub_overlay = self.create_publisher(Image, p["overlay_topic"], out_qos)
        self.pub_classes = self.create_publisher(String, p["classes_topic"], latched)
        self.pub_variant = self.create_publisher(String, "~/variant", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_classes.publish(String(data=json.dumps({"class_names": class_names, "palette": self.segmenter.palette})))
        self._announce(self._selection)

        # the newest frame is processed on the stream's worker; model swaps happen there between frames
        self.stream: FrameStream[Image, Selection] = FrameStream(self._process, self._swap, self._on_stream_error).start()
        self.add_on_set_parameters_callback(self._validate)
        self.add_post_set_parameters_callback(self._apply)
        self.create_subscription(Image, p["input_topic"], self.stream.submit, in_qos)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(f"segmenting {self.resolve_topic_name(p['input_topic'])} -> {self.pub_labels.topic_name} ({self.backend}, {self.resize})")

    # ------------------------------------------------------------------ model choice
    def _select(self, budget_ms: float) -> Selection:
        sel = select_variant(self.measurements, budget_ms)
        log = self.get_logger()
        log.info(f"variant {sel.variant.name} selected\n{sel.describe()}")
        if not sel.fits:
            log.warning(
                f"no variant meets the {budget_ms:g} ms budget on this machine; running the fastest, "
                f"{sel.variant.name} (p95 {sel.measurement.latency.p95:.1f} ms)"
            )
        return sel

    def _load(self, sel: Selection) -> Segmenter:
        return Segmenter(sel.variant.checkpoint, self.backend, self.resize, self.device, sel.variant.name)

    def _announce(self, sel: Selection) -> None:
        self.pub_variant.publish(String(data=json.dumps(sel.to_dict())))

    @property
    def selection(self) -> Selection:
        """The variant chosen last (the worker may not have loaded it yet)."""
        return self.stream.pending or self._selection

    def _validate(self, params: List[Parameter]) -> SetParametersResult:
        for prm in params:
            if prm.name == "latency_budget_ms" and not math.isfinite(prm.value):
                return SetParametersResult(successful=False, reason=f"latency_budget_ms must be a finite number of ms, got {prm.value}")
        return SetParametersResult(successful=True)

    def _apply(self, params: List[Parameter]) -> None:
        for prm in params:
            if prm.name == "latency_budget_ms":
                sel = self._select(prm.value)
                if sel.variant.name != self.selection.variant.name:
                    self.get_logger().info(f"swapping {self.selection.variant.name} -> {sel.variant.name}")
                self.stream.request(sel)

    # ------------------------------------------------------------------ frames (on the stream's worker)
    def _swap(self, sel: Selection) -> None:
        if sel.variant.name != self._selection.variant.name:
            try:
                self.segmenter = self._load(sel)
            except Exception as e:
                self.get_logger().error(f"could not load {sel.variant.name}: {e}; keeping {self._selection.variant.name}")
                return
        self._selection = sel
        self._announce(sel)

    def _count_bad(self, kind: str, message: str) -> None:
        if self.stream.count_bad(kind):
            self.get_logger().warning(f"bad input ({kind}): {message}; further '{kind}' problems are only counted")

    def _on_stream_error(self, stage: str, e: BaseException) -> None:
        if stage == "frame":
            self._count_bad("inference", f"inference failed: {type(e).__name__}: {e}")
        else:
            self.get_logger().error(f"could not apply {stage}: {type(e).__name__}: {e}")

    def _process(self, msg: Image) -> bool:
        try:
            rgb = image_to_rgb(msg)
        except ImageDecodeError as e:
            self._count_bad(e.kind, str(e))
            return False
        labels, _ = self.segmenter.segment(rgb)
        if self.get_parameter("publish_labels").value:
            self.pub_labels.publish(numpy_to_image(labels, "mono8", msg.header))
        want_color = self.get_parameter("publish_color").value
        want_overlay = self.get_parameter("publish_overlay").value and self.pub_overlay.get_subscription_count() > 0
        if want_color or want_overlay:
            color = self.segmenter.colorize(labels)
            if want_color:
                self.pub_color.publish(numpy_to_image(color, "rgb8", msg.header))
            if want_overlay:
                alpha = self.get_parameter("overlay_alpha").value
                self.pub_overlay.publish(numpy_to_image(overlay(rgb, color, alpha), "rgb8", msg.header))
        return True

    # ------------------------------------------------------------------ diagnostics
    def stats(self) -> Dict:
        """Counters and latency over the last diagnostics window (what /diagnostics reports)."""
        out = dataclasses.asdict(self.stream.stats(self.get_parameter("diagnostics_period_s").value))
        out["variant"] = self._selection.variant.name
        return out

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        sel = self._selection
        budget = sel.budget_ms
        level, message = DiagnosticStatus.OK, "ok"
        if not sel.fits:
            level, message = DiagnosticStatus.WARN, f"no variant fits the {budget:g} ms budget; running the fastest"
        elif budget > 0 and s["latency_p95_ms"] is not None and s["latency_p95_ms"] > budget:
            level, message = DiagnosticStatus.WARN, f"p95 latency {s['latency_p95_ms']:.1f} ms exceeds the {budget:g} ms budget"
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        values = {
            "variant": sel.variant.name,
            "backend": self.segmenter.backend_name,
            "latency_budget_ms": f"{budget:g}",
            "latency_p50_ms": fmt(s["latency_p50_ms"]),
            "latency_p95_ms": fmt(s["latency_p95_ms"]),
            "fps": f"{s['fps']:.2f}",
            "frames_received": str(s["received"]),
            "frames_processed": str(s["processed"]),
            "frames_dropped": str(s["dropped"]),
            "bad_messages": str(sum(s["bad"].values())),
            **{f"bad_{k}": str(v) for k, v in sorted(s["bad"].items())},
        }
        status = DiagnosticStatus(
            level=level, name=f"{self.get_name()}: segmentation", message=message, hardware_id=str(self.fingerprint["cpu"]),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        stream = getattr(self, "stream", None)  # absent when start-up failed before the stream existed
        if stream is not None:
            stream.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node(NODE_NAME, SegmentNode, args=args)


if __name__ == "__main__":
    sys.exit(main())
