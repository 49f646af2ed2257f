"""``hmseg_segment``: camera images in, label masks out, within a latency budget.

Subscribes ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) on ``input_topic`` and
publishes, with the input's header:

* ``~/labels``  mono8 class ids at the input size,
* ``~/color``   rgb8 palette image (only while someone subscribes: a palette lookup and 0.5 MB a frame at 360x480),
* ``~/overlay`` rgb8 palette blended over the input (only while someone subscribes),
* ``~/confidence`` mono8, 0-255: each pixel's softmax probability of its class times 255
  (computed only while someone subscribes: it costs a softmax, and a backend that runs the
  whole frame in one call takes the slower network path for it; Nav2's semantic segmentation
  layer reads labels + confidence),
* ``~/label_info`` ``vision_msgs/LabelInfo``: class id -> name, 255 = unlabeled (the vision_msgs
  convention for mono8 class maps), once, transient-local (when vision_msgs is installed),
* ``~/classes`` class names and palette, JSON in ``std_msgs/String``, once, transient-local,
* ``~/variant`` the selected variant and the candidates, JSON, transient-local, on each choice,
* ``/diagnostics`` latency p50/p95, FPS, dropped and bad frames, selected variant, and p50/p95
  of every stage of a frame (``stage_<name>_p50_ms``, ``stage_<name>_p95_ms``; see :meth:`SegmentNode._process`).

Topic names are relative (``camera/image_raw``) or private (``~/labels``), so a ``namespace``
(``ros2 launch hmseg_ros segment.launch.py namespace:=front``) runs one node per camera.

At start the node's own per-frame work besides the network (decode, colour, message conversion;
``overhead_iterations`` runs on a synthetic frame of the expected size, not cached: it is cheap)
is timed; then the variants of the model zoo are timed on this machine (cached per device
fingerprint) from the most accurate down, each with that overhead added, until one's p95 fits
``latency_budget_ms``; that one runs (:class:`hmseg_core.runtime.ZooLatencies`: the choice a
measurement of every variant would give, at the cost of the variants it needs). Setting that
parameter at run time selects again on the worker, between two frames, measuring any variant the
new budget needs first, and swaps the model without a restart.

Only the newest frame is kept: inference runs on a worker thread, and a frame that arrives
while another is still waiting replaces it (counted as dropped), so a slow model never
builds a queue. A frame larger than ``max_input_pixels`` is scaled down for the network and its
outputs enlarged back to its size (:meth:`hmseg_core.runtime.Segmenter.segment`), so one huge
frame costs a bounded time and memory instead of stalling the node.

On shutdown the worker stops (after the frame in progress) before the ROS context goes, and
nothing that fails to publish once shutdown began is counted or logged as bad input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

from hmseg_core.runtime import (
    AUTO,
    FrameStream,
    LatencyCache,
    ModelZoo,
    ResizePolicy,
    Segmenter,
    Selection,
    ZooLatencies,
    backend_names,
    default_zoo_path,
    device_fingerprint,
    measure_overhead,
    overlay,
)
from hmseg_core.data.synthetic import render_street
from hmseg_core.deploy import library_cache
from hmseg_core.runtime.backends import backend_class
from hmseg_core.runtime.latency import LatencyStats
from hmseg_core.runtime.transforms import palette_lut

from .image_conv import ImageDecodeError, image_to_rgb, numpy_to_image
from .diagnostics import segmentation_status
from .node_main import run_node
from .params import declare_parameters
from .params import descriptor as _desc

try:  # vision_msgs: a distro package (ros-<distro>-vision-msgs), or ../shared/ros2-tooling here
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the machine
    LabelInfo = VisionClass = None

RCLError = rclpy_implementation.RCLError  # what rclpy raises when rcl fails (e.g. publishing after shutdown)
NODE_NAME = "hmseg_segment"
MAX_BUDGET_MS = 60_000.0
QOS_CHOICES = ("sensor_data", "reliable")
RESIZE_CHOICES = ("native", "fixed")
#: the vision_msgs class id of "unlabeled" in a mono8 class map
UNLABELED = 255
#: default max_input_pixels: DCI 4K (4096 x 2160). Every common camera up to 4K runs at its own size;
#: a bigger frame (a 12-24 MP still) is scaled down to this for the network, so it costs no more than
#: a 4K frame (measured here, mrms_tiny on torch: 8.4 MP 1.7 GiB peak RSS; 24 MP unguarded 3.8 GiB, 26 s).
MAX_INPUT_PIXELS = 4096 * 2160
#: a header stamp further than this from the node's clock is not on it (a bag's own times, another
#: machine's clock): no ``receive`` or ``stamp_to_publish`` sample for that frame
STAMP_ON_CLOCK_S = 60.0


# name -> (default, descriptor). config/segment.yaml lists the same keys; a test checks it.
PARAMETERS = {
    "zoo": ("", _desc("model zoo index (YAML/JSON: name, checkpoint, miou per variant); empty: use 'model', or the zoo shipped with hmseg when both are empty", True)),
    "model": ("", _desc("a single checkpoint, used when 'zoo' is empty", True)),
    "latency_budget_ms": (0.0, _desc("p95 latency budget per frame in ms; picks the most accurate variant that fits; 0: no budget (most accurate)", False, 0.0, MAX_BUDGET_MS)),
    "backend": (AUTO, _desc(f"inference backend: {AUTO} (the fastest backend measured here whose labels agree with torch; a checkpoint runs on the compiled backends as its package, exported once into ~/.cache/hmseg), {', '.join(backend_names())}", True)),
    "device": ("cpu", _desc("torch device for the torch backend (cpu, cuda, cuda:1)", True)),
    "threads": (0, _desc("intra-op CPU threads for inference; 0: library default", True, 0, 256)),
    "input_topic": ("camera/image_raw", _desc("sensor_msgs/Image topic to segment (relative names resolve in the node's namespace)", True)),
    "labels_topic": ("~/labels", _desc("output: mono8 class ids at the input size", True)),
    "color_topic": ("~/color", _desc("output: rgb8 palette image", True)),
    "overlay_topic": ("~/overlay", _desc("output: rgb8 palette blended over the input (published only while subscribed)", True)),
    "classes_topic": ("~/classes", _desc("output: class names and palette as JSON, transient-local", True)),
    "confidence_topic": ("~/confidence", _desc("output: mono8 confidence, 255 x the softmax probability of each pixel's class (published only while subscribed)", True)),
    "label_info_topic": ("~/label_info", _desc("output: vision_msgs/LabelInfo, class id -> name, 255 = unlabeled, transient-local", True)),
    "qos": ("sensor_data", _desc("input QoS: sensor_data (best effort, keep last 5) or reliable (keep last 5)", True)),
    "resize_policy": ("native", _desc("native: run the network at the image size; fixed: at network_height x network_width (labels return at image size)", True)),
    "network_height": (360, _desc("network input height for resize_policy fixed", True, 16, 8192)),
    "network_width": (480, _desc("network input width for resize_policy fixed", True, 16, 8192)),
    "expected_height": (360, _desc("camera image height the variants are timed at (resize_policy native)", True, 16, 8192)),
    "expected_width": (480, _desc("camera image width the variants are timed at (resize_policy native)", True, 16, 8192)),
    "measure_iterations": (20, _desc("timed runs per variant when measuring latency", True, 1, 1000)),
    "overhead_iterations": (10, _desc("timed runs of the node's own per-frame stages (decode, colour, message conversion) at start, added to every variant's latency before selecting; 0: rank by the network alone", True, 0, 1000)),
    "latency_cache": ("", _desc("latency cache file; empty: ~/.cache/hmseg/latency.json", True)),
    "publish_labels": (True, _desc("publish ~/labels")),
    "publish_color": (True, _desc("publish ~/color while it has subscribers")),
    "publish_overlay": (True, _desc("publish ~/overlay while it has subscribers")),
    "publish_confidence": (True, _desc("publish ~/confidence while it has subscribers (a softmax per frame; whole-frame backends then take the network path)")),
    "max_input_pixels": (MAX_INPUT_PIXELS, _desc("frames with more pixels are scaled down to this many for the network; labels and confidence still come at the frame's size", True, 4096, 1 << 28)),
    "overlay_alpha": (0.5, _desc("weight of the palette in ~/overlay", False, 0.0, 1.0)),
    "diagnostics_period_s": (1.0, _desc("period of /diagnostics and the latency window", True, 0.1, 60.0)),
}


class SegmentNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._closing = threading.Event()  # set by destroy_node: outputs from then on are not errors
        p = declare_parameters(self, PARAMETERS, _check)
        if p["backend"] != AUTO:
            backend_class(p["backend"])  # an unknown backend fails here, naming the choices
        self.backend, self.device = p["backend"], p["device"]
        if p["threads"]:
            import torch

            torch.set_num_threads(int(p["threads"]))
        self.resize = ResizePolicy(p["resize_policy"], (p["network_height"], p["network_width"]) if p["resize_policy"] == "fixed" else None)
        self.max_pixels = p["max_input_pixels"]
        self.frames_downscaled = 0

        # model zoo: the variants the budget needs are measured here (below), then one is chosen
        if p["zoo"]:
            self.zoo = ModelZoo.load(p["zoo"])
        elif p["model"]:
            self.zoo = ModelZoo.single(p["model"])
        else:
            self.zoo = ModelZoo.load(default_zoo_path())
        class_names = self.zoo.class_names()
        size = self.resize.size if self.resize.mode == "fixed" else (p["expected_height"], p["expected_width"])
        self.expected_size = size
        library_cache.set_compile_log(self.get_logger().info)  # first-use TVM compiles report through the node's log
        cache = LatencyCache(p["latency_cache"] or LatencyCache.default_path())
        self.overhead: Optional[LatencyStats] = None
        if p["overhead_iterations"] > 0:
            self.overhead = measure_overhead(self._overhead_stages(size, len(class_names)), p["overhead_iterations"])
            self.get_logger().info(
                f"node overhead per {size[0]}x{size[1]} frame besides the network (decode + colour + message conversion): "
                f"p50 {self.overhead.p50:.2f} ms, p95 {self.overhead.p95:.2f} ms; added to every variant's latency")
        # variants are measured as the budget needs them: from the most accurate down to the first that fits
        self.latencies = ZooLatencies(self.zoo, size, self.backend, self.resize, self.device, cache, p["measure_iterations"],
                                      log=self.get_logger().info, overhead=self.overhead)
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
        self.pub_confidence = self.create_publisher(Image, p["confidence_topic"], out_qos)
        self.pub_classes = self.create_publisher(String, p["classes_topic"], latched)
        self.pub_variant = self.create_publisher(String, "~/variant", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_classes.publish(String(data=json.dumps({"class_names": class_names, "palette": self.segmenter.palette})))
        self.pub_label_info = None
        if LabelInfo is not None:
            self.pub_label_info = self.create_publisher(LabelInfo, p["label_info_topic"], latched)
            self.pub_label_info.publish(self._label_info(class_names))
        else:
            self.get_logger().info(f"vision_msgs is not installed: no {p['label_info_topic']} (the class list is on {self.pub_classes.topic_name})")
        self._announce(self._selection)

        # the newest frame is processed on the stream's worker; a new budget (a request) is applied there between frames
        self.stream: FrameStream[Tuple[Image, int], float] = FrameStream(self._process, self._swap, self._on_stream_error).start()
        self.add_post_set_parameters_callback(self._apply)
        self.create_subscription(Image, p["input_topic"], self._on_image, in_qos)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(f"segmenting {self.resolve_topic_name(p['input_topic'])} -> {self.pub_labels.topic_name} ({self.backend}, {self.resize})")

    # ------------------------------------------------------------------ model choice
    @staticmethod
    def _overhead_stages(size, num_classes: int):
        """One frame's non-network work in this node, as a callable for :func:`measure_overhead`:
        decode an rgb8 message of ``size`` (a synthetic street scene), colour its labels, convert
        labels and colour into messages (what ``_process`` does besides segmenting and publishing)."""
        rgb, labels = render_street(np.random.default_rng(0), int(size[0]), int(size[1]))
        labels = np.ascontiguousarray(np.minimum(labels, num_classes - 1).astype(np.uint8))
        msg = numpy_to_image(rgb, "rgb8")
        lut = palette_lut([[i, 255 - i, (7 * i) % 256] for i in range(num_classes)])

        def stages() -> None:
            image_to_rgb(msg)
            color = lut[labels]
            numpy_to_image(labels, "mono8", msg.header)
            numpy_to_image(color, "rgb8", msg.header)

        return stages

    def _select(self, budget_ms: float) -> Selection:
        """The variant for ``budget_ms``, measuring the variants the choice needs and has not measured
        (at start, or on the worker between frames: none runs meanwhile)."""
        sel = self.latencies.select(budget_ms)
        log = self.get_logger()
        log.info(f"variant {sel.variant.name} selected\n{sel.describe()}")
        if not sel.fits:
            log.warning(
                f"no variant meets the {budget_ms:g} ms budget on this machine; running the fastest, "
                f"{sel.variant.name} (p95 {sel.measurement.latency.p95:.1f} ms)"
            )
        return sel

    def _load(self, sel: Selection) -> Segmenter:
        return Segmenter(sel.variant.checkpoint, sel.measurement.backend, self.resize, self.device, sel.variant.name,
                         max_pixels=self.max_pixels, size=self.expected_size, log=self.get_logger().info)

    def _announce(self, sel: Selection) -> None:
        self.pub_variant.publish(String(data=json.dumps(sel.to_dict())))

    def _label_info(self, class_names: List[str]) -> "LabelInfo":
        """vision_msgs/LabelInfo for the class ids of ~/labels (255: unlabeled; no confidence threshold)."""
        msg = LabelInfo(threshold=0.0)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(class_names)]
        msg.class_map.append(VisionClass(class_id=UNLABELED, class_name="unlabeled"))
        return msg

    @property
    def selection(self) -> Selection:
        """The variant running, for the budget applied last (a new budget is applied by the worker
        between two frames, after measuring any variant it needs)."""
        return self._selection

    def _apply(self, params: List[Parameter]) -> None:
        for prm in params:
            if prm.name == "latency_budget_ms":
                self.stream.request(float(prm.value))

    # ------------------------------------------------------------------ frames (on the stream's worker)
    def _swap(self, budget_ms: float) -> None:
        sel = self._select(budget_ms)
        if sel.variant.name != self._selection.variant.name:
            self.get_logger().info(f"swapping {self._selection.variant.name} -> {sel.variant.name}")
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

    def _shutdown_began(self, e: BaseException) -> bool:
        """Whether ``e`` is a publish failing because shutdown began ("publisher's context is
        invalid"): after destroy_node started, or an rcl error once the context is down (another
        process's signal handler may shut it down first). Only rcl errors ask the context, whose
        lock the shutdown holds while it waits for this worker."""
        return self._closing.is_set() or (isinstance(e, RCLError) and not self.context.ok())

    def _on_stream_error(self, stage: str, e: BaseException) -> None:
        if self._shutdown_began(e):  # not bad input: nothing to count or log
            return
        if stage == "frame":
            self._count_bad("inference", f"inference failed: {type(e).__name__}: {e}")
        else:
            self.get_logger().error(f"could not apply {stage}: {type(e).__name__}: {e}")

    def _on_image(self, msg: Image) -> None:
        """The subscription's callback: hand the frame to the worker with the time it got here."""
        self.stream.submit((msg, self.get_clock().now().nanoseconds))

    def _stamp_age_ms(self, msg: Image, ns: int) -> Optional[float]:
        """Milliseconds from ``msg``'s header stamp to ``ns`` on the node's clock; None for a stamp
        not on this clock (further than :data:`STAMP_ON_CLOCK_S` from it)."""
        age_ns = ns - (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        return age_ns / 1e6 if 0 <= age_ns <= STAMP_ON_CLOCK_S * 1e9 else None

    def _process(self, frame: Tuple[Image, int]) -> Optional[Dict[str, float]]:
        """Segment one frame and publish its outputs; returns its stage timings in ms (the stream
        adds ``wait`` and ``work``), or None when nothing was published:

        * ``decode``: :func:`image_to_rgb` (checks, channel order);
        * ``preprocess``, ``network``, ``postprocess``: :meth:`Segmenter.segment`'s :class:`Timings`
          (a frame over ``max_input_pixels`` is shrunk in ``preprocess`` and its labels enlarged in
          ``postprocess``; a whole-frame backend times all of it as ``network``); on a frame asked for
          its confidence the postprocess (argmax + softmax) is reported as ``confidence`` instead;
        * ``color``: palette lookup (when ``~/color`` or ``~/overlay`` is published); ``overlay``: the blend;
        * ``publish``: message conversion and ``publish()`` of every output of the frame;
        * ``receive``: header stamp -> the subscription's callback (the camera's send, the transport,
          the executor), and ``stamp_to_publish``: header stamp -> after the last publish, both on
          the node's clock (only when the stamp is within :data:`STAMP_ON_CLOCK_S` of it, i.e. on this clock)."""
        msg, received_ns = frame
        stages: Dict[str, float] = {}
        receive = self._stamp_age_ms(msg, received_ns)
        if receive is not None:
            stages["receive"] = receive
        t = time.perf_counter()
        try:
            rgb = image_to_rgb(msg)
        except ImageDecodeError as e:
            self._count_bad(e.kind, str(e))
            return None
        stages["decode"] = 1e3 * (time.perf_counter() - t)
        h, w = rgb.shape[:2]
        if h * w > self.max_pixels:
            self.frames_downscaled += 1
            if self.frames_downscaled == 1:
                self.get_logger().warning(
                    f"{w}x{h} frames ({h * w / 1e6:.1f} MP) exceed max_input_pixels ({self.max_pixels / 1e6:.1f} MP): "
                    "the network runs on them scaled down, labels are enlarged back to the frame's size; further ones are only counted")
        want_conf = self.get_parameter("publish_confidence").value and self.pub_confidence.get_subscription_count() > 0
        if want_conf:
            labels, timings, conf = self.segmenter.segment(rgb, confidence=True)
        else:
            labels, timings = self.segmenter.segment(rgb)
        stages.update(preprocess=timings.preprocess, network=timings.inference)
        stages["confidence" if want_conf else "postprocess"] = timings.postprocess
        if self._closing.is_set():
            return None
        publish = 0.0

        def send(pub, array: np.ndarray, encoding: str) -> None:
            nonlocal publish
            t = time.perf_counter()
            pub.publish(numpy_to_image(array, encoding, msg.header))
            publish += 1e3 * (time.perf_counter() - t)

        if want_conf:
            send(self.pub_confidence, conf, "mono8")
        if self.get_parameter("publish_labels").value:
            send(self.pub_labels, labels, "mono8")
        want_color = self.get_parameter("publish_color").value and self.pub_color.get_subscription_count() > 0
        want_overlay = self.get_parameter("publish_overlay").value and self.pub_overlay.get_subscription_count() > 0
        if want_color or want_overlay:
            t = time.perf_counter()
            color = self.segmenter.colorize(labels)
            stages["color"] = 1e3 * (time.perf_counter() - t)
            if want_color:
                send(self.pub_color, color, "rgb8")
            if want_overlay:
                alpha = self.get_parameter("overlay_alpha").value
                t = time.perf_counter()
                blended = overlay(rgb, color, alpha)
                stages["overlay"] = 1e3 * (time.perf_counter() - t)
                send(self.pub_overlay, blended, "rgb8")
        stages["publish"] = publish
        age = self._stamp_age_ms(msg, self.get_clock().now().nanoseconds)
        if age is not None:
            stages["stamp_to_publish"] = age
        return stages

    # ------------------------------------------------------------------ diagnostics
    def stats(self, latency_span_s: float = 5.0) -> Dict:
        """Counters, latency and per-stage p50/p95 (``stages``: name -> ``{p50_ms, p95_ms, samples}``)
        over the last ``latency_span_s`` seconds (at least the diagnostics period; at most the
        stream's window of frames): what /diagnostics reports. ``overhead_ms``: the node overhead
        added to the variants' latencies at start (None when not measured)."""
        out = dataclasses.asdict(self.stream.stats(self.get_parameter("diagnostics_period_s").value, latency_span_s))
        out["variant"] = self._selection.variant.name
        out["overhead_ms"] = None if self.overhead is None else {"p50": self.overhead.p50, "p95": self.overhead.p95}
        return out

    def _publish_diagnostics(self) -> None:
        values = {
            "backend": self.segmenter.backend_name,
            "backend_requested": self.backend,
            "frames_downscaled": str(self.frames_downscaled),
            "node_overhead_p95_ms": "n/a" if self.overhead is None else f"{self.overhead.p95:.2f}",
        }
        name = f"{self.get_fully_qualified_name().lstrip('/')}: segmentation"
        arr = DiagnosticArray(status=[segmentation_status(name, self.stats(), self._selection, str(self.fingerprint["cpu"]), values)])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        """Stop the worker (after the frame in progress, which publishes nothing more) while the
        context is still valid, then the node."""
        closing = getattr(self, "_closing", None)  # absent when start-up failed before it existed
        if closing is not None:
            closing.set()
        stream = getattr(self, "stream", None)  # absent when start-up failed before the stream existed
        if stream is not None:
            stream.close()
        super().destroy_node()


def _check(name: str, value: Any) -> Optional[str]:
    """The rules of :data:`PARAMETERS` beyond type and range (start-up and run time)."""
    if name == "latency_budget_ms" and not math.isfinite(value):
        return f"'latency_budget_ms' must be a finite number of ms, got {value}"
    if name == "qos" and value not in QOS_CHOICES:
        return f"'qos' must be one of {', '.join(QOS_CHOICES)}, got {value!r}"
    if name == "resize_policy" and value not in RESIZE_CHOICES:
        return f"'resize_policy' must be one of {', '.join(RESIZE_CHOICES)}, got {value!r}"
    return None


def main(args=None) -> int:
    return run_node(NODE_NAME, SegmentNode, args=args)


if __name__ == "__main__":
    sys.exit(main())
