"""hmseg_segment over real rclpy topics (Fast DDS on loopback): outputs, encodings, bad input,
parameters, budget swaps, and newest-frame-only behaviour under a burst."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from ros_testing import RCLPY_MISSING, Spinner, tiny_checkpoint, wait_for

if RCLPY_MISSING:
    pytest.skip(RCLPY_MISSING, allow_module_level=True)

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from hmseg_core import image_codec  # noqa: E402
from hmseg_core.runtime import BACKENDS, LatencyCache, LatencyStats, ModelZoo, ResizePolicy, Segmenter, TorchBackend, Variant, device_fingerprint  # noqa: E402
from hmseg_ros.image_conv import numpy_to_image  # noqa: E402
from hmseg_ros.segment_node import SegmentNode  # noqa: E402

H, W = 48, 64
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two variants with known latencies in a pre-filled cache: 'accurate' (p95 50 ms) and 'fast' (5 ms)."""
    root = tmp_path_factory.mktemp("zoo")
    acc = tiny_checkpoint(root / "accurate.pt", seed=1)
    fast = tiny_checkpoint(root / "fast.pt", seed=2)
    z = ModelZoo([Variant("accurate", acc, 0.7), Variant("fast", fast, 0.5)])
    path = z.save(root / "zoo.yaml")
    cache = LatencyCache(root / "latency.json")
    fp = device_fingerprint("torch", "cpu", 1)  # the node runs with threads=1
    for ckpt, p95 in ((acc, 50.0), (fast, 5.0)):
        cache.put(fp, LatencyCache.entry_key(ckpt, (H, W), ResizePolicy()), LatencyStats(p95 * 0.8, p95, p95 * 0.8, 20))
    return {"index": path, "cache": cache.path, "accurate": acc, "fast": fast}


def overrides(fixture, **extra):
    # torch: the budget tests rank the pre-filled latencies (auto would measure the compiled backends too)
    p = dict(zoo=str(fixture["index"]), latency_cache=str(fixture["cache"]), expected_height=H, expected_width=W,
             input_topic="/test_cam/image", diagnostics_period_s=0.2, threads=1, backend="torch")
    p.update(extra)
    return [Parameter(k, value=v) for k, v in p.items()]


@pytest.fixture(scope="module")
def ros(zoo):
    spinner = Spinner()
    node = spinner.add(SegmentNode(context=spinner.context, parameter_overrides=overrides(zoo)))
    probe = spinner.node("probe")
    outputs = {"labels": [], "color": [], "variant": [], "classes": []}
    probe.create_subscription(Image, "/hmseg_segment/labels", outputs["labels"].append, RELIABLE)
    probe.create_subscription(Image, "/hmseg_segment/color", outputs["color"].append, RELIABLE)
    probe.create_subscription(String, "/hmseg_segment/variant", lambda m: outputs["variant"].append(json.loads(m.data)), LATCHED)
    probe.create_subscription(String, "/hmseg_segment/classes", lambda m: outputs["classes"].append(json.loads(m.data)), LATCHED)
    pub = probe.create_publisher(Image, "/test_cam/image", RELIABLE)
    assert wait_for(lambda: pub.get_subscription_count() > 0 and node.pub_labels.get_subscription_count() > 0)
    yield {"spinner": spinner, "node": node, "probe": probe, "pub": pub, "out": outputs}
    spinner.close()


def frame(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


_stamp_counter = iter(range(1, 10**9))


def send_and_wait(ros, msg: Image, timeout: float = 10.0) -> Image:
    """Publish ``msg`` with a fresh stamp until its labels come back."""
    n = next(_stamp_counter)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + n, 123
    msg.header.frame_id = f"cam_{n}"
    match = lambda m: m.header.stamp.sec == 1000 + n  # noqa: E731
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ros["pub"].publish(msg)
        if wait_for(lambda: any(match(m) for m in ros["out"]["labels"]), timeout=0.5):
            return next(m for m in ros["out"]["labels"] if match(m))
    raise AssertionError(f"no labels for stamp {1000 + n} within {timeout} s")


@pytest.mark.parametrize("encoding", list(image_codec.ENCODINGS))
def test_labels_keep_header_and_size_for_every_encoding(ros, zoo, encoding):
    rgb = frame(3, 37, 53)  # odd size: the network runs at it, labels come back at it
    if encoding == "mono8":
        rgb = np.repeat(image_codec.from_rgb(rgb, "mono8")[..., None], 3, axis=2)
    out = send_and_wait(ros, numpy_to_image(image_codec.from_rgb(rgb, encoding), encoding))
    assert out.encoding == "mono8" and (out.height, out.width) == rgb.shape[:2] and out.step == rgb.shape[1]
    assert out.header.frame_id.startswith("cam_") and out.header.stamp.nanosec == 123
    expected = Segmenter(zoo["accurate"])(rgb)  # no budget: the most accurate variant runs
    np.testing.assert_array_equal(image_codec.to_mono(image_codec.RawImage(out.height, out.width, out.encoding, out.step, out.data)), expected)
    color = wait_for(lambda: any(m.header.stamp == out.header.stamp for m in ros["out"]["color"]), 5.0)
    assert color


def test_classes_published_once_latched_and_as_read_only_parameters(ros):
    from hmseg_core.data.datasets import CAMVID

    assert wait_for(lambda: ros["out"]["classes"], 5.0)
    assert ros["out"]["classes"][0]["class_names"] == list(CAMVID.class_names)
    assert ros["out"]["classes"][0]["palette"] == [list(c) for c in CAMVID.palette]
    node = ros["node"]
    assert list(node.get_parameter("class_names").value) == list(CAMVID.class_names)
    res = node.set_parameters([Parameter("class_names", value=["a"])])[0]
    assert not res.successful


@pytest.mark.parametrize(
    "kind,fields",
    [
        ("encoding", dict(encoding="yuv422", height=4, width=4, step=8, data=bytes(32))),
        ("empty", dict(encoding="rgb8", height=0, width=0, step=0, data=b"")),
        ("step", dict(encoding="rgb8", height=4, width=4, step=6, data=bytes(24))),
        ("truncated", dict(encoding="rgb8", height=4, width=4, step=12, data=bytes(40))),
        ("size", dict(encoding="mono8", height=4, width=4, step=4, data=bytes(20))),
    ],
)
def test_bad_messages_are_counted_and_the_node_keeps_running(ros, kind, fields):
    node = ros["node"]
    before = node.stats()["bad"].get(kind, 0)
    msg = Image(**{k: v for k, v in fields.items() if k != "data"})
    msg.data = fields["data"]
    ros["pub"].publish(msg)
    assert wait_for(lambda: node.stats()["bad"].get(kind, 0) > before, 5.0), node.stats()
    send_and_wait(ros, numpy_to_image(frame(), "rgb8"))  # still serving


@pytest.mark.parametrize(
    "param",
    [
        Parameter("latency_budget_ms", value=-1.0),
        Parameter("latency_budget_ms", value=1e9),
        Parameter("latency_budget_ms", value=float("nan")),
        Parameter("latency_budget_ms", value="fast"),
        Parameter("backend", value="tvm"),
        Parameter("overlay_alpha", value=2.0),
    ],
    ids=["negative", "too-large", "nan", "wrong-type", "read-only", "alpha-range"],
)
def test_invalid_parameters_are_rejected_with_a_reason(ros, param):
    node = ros["node"]
    before = node.get_parameter(param.name).value
    res = node.set_parameters([param])[0]
    assert not res.successful and res.reason
    assert node.get_parameter(param.name).value == before


def test_budget_change_swaps_the_variant_without_restart(ros):
    node, variants = ros["node"], ros["out"]["variant"]
    assert wait_for(lambda: variants and variants[-1]["variant"] == "accurate", 5.0)
    try:
        assert node.set_parameters([Parameter("latency_budget_ms", value=10.0)])[0].successful
        assert wait_for(lambda: variants[-1]["variant"] == "fast" and node.stats()["variant"] == "fast", 5.0)
        rgb = frame(7)
        out = send_and_wait(ros, numpy_to_image(rgb, "rgb8"))
        np.testing.assert_array_equal(np.frombuffer(out.data, np.uint8).reshape(H, W), Segmenter(node.zoo.get("fast").checkpoint)(rgb))

        # impossible budget: the fastest runs, flagged as not fitting
        assert node.set_parameters([Parameter("latency_budget_ms", value=1.0)])[0].successful
        assert wait_for(lambda: variants[-1]["budget_ms"] == 1.0, 5.0)
        assert variants[-1]["variant"] == "fast" and variants[-1]["fits"] is False
    finally:
        node.set_parameters([Parameter("latency_budget_ms", value=0.0)])
    assert wait_for(lambda: variants[-1]["variant"] == "accurate", 5.0)


def test_a_node_measures_only_the_variants_its_budget_needs(zoo, tmp_path):
    """On a new machine (an empty latency cache) the node measures the most accurate variant and
    starts; the faster one is measured only when a budget asks for it, on the worker."""
    spinner = Spinner()
    try:
        cache = tmp_path / "empty_latency.json"
        node = spinner.add(SegmentNode(context=spinner.context, parameter_overrides=overrides(
            zoo, latency_cache=str(cache), measure_iterations=3, overhead_iterations=0, input_topic="/lazy_cam/image")))
        assert [m.variant.name for m in node.latencies.measurements] == ["accurate"]
        assert [v.name for v in node.selection.unmeasured] == ["fast"] and node.selection.variant.name == "accurate"
        assert node.set_parameters([Parameter("latency_budget_ms", value=1e-3)])[0].successful  # nothing fits
        assert wait_for(lambda: node.selection.budget_ms == 1e-3, 30.0)
        assert sorted(m.variant.name for m in node.latencies.measurements) == ["accurate", "fast"]
        assert node.selection.unmeasured == () and not node.selection.fits
    finally:
        spinner.close()


class SlowBackend(TorchBackend):
    """The torch backend plus a fixed delay: a model slower than the camera."""

    name = "slow_torch"
    delay_s = 0.05

    def forward(self, x):
        time.sleep(self.delay_s)
        return super().forward(x)


def test_burst_to_a_slow_model_drops_stale_frames_instead_of_queueing(zoo, monkeypatch):
    monkeypatch.setitem(BACKENDS, "slow_torch", SlowBackend)
    spinner = Spinner()
    try:
        node = spinner.add(SegmentNode(context=spinner.context, parameter_overrides=overrides(
            zoo, backend="slow_torch", model=str(zoo["fast"]), zoo="", qos="reliable", measure_iterations=2,
            # topics of its own: the module's shared node also listens on /test_cam/image
            input_topic="/burst_cam/image", labels_topic="/burst_cam/labels")))
        probe = spinner.node("burst_probe")
        got = []
        probe.create_subscription(Image, "/burst_cam/labels", lambda m: got.append((m.header.stamp, time.time())), RELIABLE)
        pub = probe.create_publisher(Image, "/burst_cam/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() > 0 and node.pub_labels.get_subscription_count() > 0)
        msg = numpy_to_image(frame(), "rgb8")
        for _ in range(100):  # 100 frames at 100 Hz, stamped with wall time at publication
            t = time.time()
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
            pub.publish(msg)
            last_stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            time.sleep(max(0.0, 0.01 - (time.time() - t)))
        # Drained: every frame the node received was either processed or dropped. On a loaded
        # machine the subscription's keep-last history may already overwrite frames before the
        # callback sees them; those are stale frames too, just discarded one layer lower.
        seen = {"received": -1, "since": time.monotonic()}

        def settled() -> bool:  # every received frame processed or dropped, and none still arriving
            s = node.stats()
            if s["received"] != seen["received"]:
                seen.update(received=s["received"], since=time.monotonic())
                return False
            quiet = s["received"] == 100 or time.monotonic() - seen["since"] > 1.0
            return s["processed"] + s["dropped"] == s["received"] > 0 and quiet

        assert wait_for(settled, 60.0), node.stats()
        assert wait_for(lambda: len(got) == node.stats()["processed"], 10.0), (len(got), node.stats())  # last outputs in flight
        s = node.stats()
        assert s["received"] <= 100
        skipped = s["dropped"] + (100 - s["received"])
        assert skipped >= 50 and s["processed"] + skipped == 100, s
        assert len(got) == s["processed"] < 50
        # Newest-frame-only: no queue builds up, so the outputs are in stamp order and the last
        # output is one of the last frames published (a queue would still be working through
        # early frames). Wall-clock latency figures belong to `hmseg-core replay-eval`, not here.
        stamps = [st.sec + st.nanosec * 1e-9 for st, _ in got]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert stamps[-1] >= last_stamp - 0.1, (stamps[-1], last_stamp)
    finally:
        spinner.close()


@pytest.mark.parametrize("params,names", [
    (["model:=/nonexistent/model.pt"], "model.pt"),
    (["zoo:=/nonexistent/zoo.yaml"], "zoo.yaml"),
    (["qos:=weird"], "qos"),
    (["backend:=bogus"], "backend"),
    (["network_height:=0"], "network_height"),  # rclpy alone refuses it in declare_parameter, with a traceback
    (["latency_budget_ms:=fast"], "latency_budget_ms"),  # the wrong type: said in words
])
def test_a_node_that_cannot_start_says_why_in_one_line(params, names, tmp_path):
    import subprocess
    import sys

    from conftest import subprocess_env

    args = [sys.executable, "-m", "hmseg_ros.segment_node", "--ros-args"] + [a for p in params for a in ("-p", p)]
    res = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("hmseg_segment: error:") and names in errors[0], res.stderr
    assert "Traceback" not in res.stderr and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- what consumers read
def test_diagnostics_report_the_backend_actually_running(ros):
    from diagnostic_msgs.msg import DiagnosticArray

    node, statuses = ros["node"], []
    sub = ros["probe"].create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
    try:
        mine = lambda: [s for s in statuses if s.name == "hmseg_segment: segmentation"]  # noqa: E731
        assert wait_for(lambda: bool(mine()), 5.0)
        values = {kv.key: kv.value for kv in mine()[-1].values}
        assert values["backend"] == node.segmenter.backend_name == "torch"
        assert values["variant"] == node.selection.variant.name and "frames_downscaled" in values
    finally:
        ros["probe"].destroy_subscription(sub)


def test_per_stage_timings_in_stats_and_diagnostics(ros):
    """Every processed frame leaves its stage timings; /diagnostics and stats() give p50/p95 of each,
    and the node overhead measured at start (added to the variants' latencies) is reported."""
    from diagnostic_msgs.msg import DiagnosticArray

    node, statuses = ros["node"], []
    msg = numpy_to_image(frame(5), "rgb8")
    for _ in range(3):
        send_and_wait(ros, msg)
    stages = node.stats()["stages"]
    for name in ("wait", "decode", "preprocess", "network", "postprocess", "color", "publish", "work"):
        assert name in stages and stages[name]["p95_ms"] >= stages[name]["p50_ms"] >= 0, (name, stages)
    for name in ("stamp_to_publish", "receive"):  # stamps 1000 + n s: not this clock
        assert name not in stages or stages[name]["samples"] < stages["work"]["samples"]
    assert stages["network"]["p50_ms"] > 0 and stages["work"]["p50_ms"] >= stages["network"]["p50_ms"]
    assert node.overhead is not None and node.stats()["overhead_ms"]["p95"] == node.overhead.p95 > 0
    assert node.selection.measurement.overhead == node.overhead
    assert node.selection.measurement.latency.p95 == pytest.approx(50.0 + node.overhead.p95)  # the cache's 50 ms plus overhead

    sub = ros["probe"].create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
    try:
        def values():
            mine = [s for s in statuses if s.name == "hmseg_segment: segmentation"]
            return {kv.key: kv.value for kv in mine[-1].values} if mine else {}

        send_and_wait(ros, msg)
        assert wait_for(lambda: "stage_network_p50_ms" in values(), 5.0), values()
        v = values()
        for name in ("wait", "decode", "network", "publish", "work"):
            assert float(v[f"stage_{name}_p95_ms"]) >= float(v[f"stage_{name}_p50_ms"]) >= 0
        assert float(v["node_overhead_p95_ms"]) > 0
    finally:
        ros["probe"].destroy_subscription(sub)


def test_stamp_to_publish_is_timed_when_the_stamp_is_on_the_nodes_clock(ros):
    node = ros["node"]
    got = ros["out"]["labels"]
    before = node.stats(latency_span_s=60.0)["stages"].get("stamp_to_publish", {}).get("samples", 0)
    msg = numpy_to_image(frame(6), "rgb8")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        msg.header.stamp = node.get_clock().now().to_msg()
        n = len(got)
        ros["pub"].publish(msg)
        if wait_for(lambda: len(got) > n, 0.5):
            break
    # the labels are published inside the frame's processing; its stage times are recorded just after
    samples = lambda: node.stats(latency_span_s=60.0)["stages"].get("stamp_to_publish", {}).get("samples", 0)  # noqa: E731
    assert wait_for(lambda: samples() > before, 5.0)
    stages = node.stats(latency_span_s=60.0)["stages"]
    st, rx = stages["stamp_to_publish"], stages["receive"]
    assert 0 < st["p50_ms"] < 10_000 and 0 <= rx["p50_ms"] <= st["p95_ms"]  # received before it was published


def test_label_info_is_latched_vision_msgs_with_255_unlabeled(ros):
    vision_msgs = pytest.importorskip("vision_msgs.msg", reason="vision_msgs comes with a distro or ../shared/ros2-tooling")
    from hmseg_core.data.datasets import CAMVID

    got = []
    sub = ros["probe"].create_subscription(vision_msgs.LabelInfo, "/hmseg_segment/label_info", got.append, LATCHED)  # joins late
    try:
        assert wait_for(lambda: bool(got), 5.0)
        class_map = {c.class_id: c.class_name for c in got[0].class_map}
        assert class_map == {**dict(enumerate(CAMVID.class_names)), 255: "unlabeled"}
        assert got[0].threshold == 0.0
    finally:
        ros["probe"].destroy_subscription(sub)


def test_confidence_is_published_only_while_subscribed(ros, zoo, monkeypatch):
    node, asked = ros["node"], []
    real = node.segmenter.segment
    monkeypatch.setattr(node.segmenter, "segment", lambda rgb, confidence=False: asked.append(confidence) or real(rgb, confidence))
    send_and_wait(ros, numpy_to_image(frame(11), "rgb8"))
    assert asked and not any(asked)  # nobody listens: no softmax

    conf = []
    sub = ros["probe"].create_subscription(Image, "/hmseg_segment/confidence", conf.append, RELIABLE)
    try:
        assert wait_for(lambda: node.pub_confidence.get_subscription_count() > 0)
        rgb = frame(12)
        out = send_and_wait(ros, numpy_to_image(rgb, "rgb8"))
        assert wait_for(lambda: any(m.header.stamp == out.header.stamp for m in conf), 5.0)
        msg = next(m for m in conf if m.header.stamp == out.header.stamp)
        assert msg.encoding == "mono8" and (msg.height, msg.width) == (H, W) and msg.header.frame_id == out.header.frame_id
        labels, _, expected = Segmenter(zoo["accurate"]).segment(rgb, confidence=True)
        np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(H, W), expected)
        np.testing.assert_array_equal(np.frombuffer(out.data, np.uint8).reshape(H, W), labels)
    finally:
        ros["probe"].destroy_subscription(sub)


# ---------------------------------------------------------------------------- parameters: integers for floats
def test_integers_are_taken_for_float_parameters_at_run_time(ros):
    node = ros["node"]
    try:
        for name, value in (("latency_budget_ms", 7), ("overlay_alpha", 1)):
            assert node.set_parameters([Parameter(name, value=value)])[0].successful
            got = node.get_parameter(name)
            assert got.type_ == Parameter.Type.DOUBLE and got.value == float(value) and isinstance(got.value, float)
        assert wait_for(lambda: node.selection.budget_ms == 7.0, 5.0)
        for name, value in (("overlay_alpha", 3), ("latency_budget_ms", -2)):  # ranges still hold
            assert not node.set_parameters([Parameter(name, value=value)])[0].successful
        res = node.set_parameters([Parameter("overlay_alpha", value="half")])[0]
        assert not res.successful and "expects a number" in res.reason  # said in words, not "expected '3' got '4'"
        assert node.describe_parameter("overlay_alpha").type == Parameter.Type.DOUBLE.value
    finally:
        node.set_parameters([Parameter("latency_budget_ms", value=0.0), Parameter("overlay_alpha", value=0.5)])


def test_integers_are_taken_for_float_parameters_at_start_up(zoo, tmp_path):
    import rclpy
    import yaml

    params = tmp_path / "my.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"latency_budget_ms": 30, "diagnostics_period_s": 2}}}))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = SegmentNode(context=ctx, cli_args=[
            "--ros-args", "--params-file", str(params), "-p", "overlay_alpha:=1", "-p", f"zoo:={zoo['index']}",
            "-p", f"latency_cache:={zoo['cache']}", "-p", f"expected_height:={H}", "-p", f"expected_width:={W}",
            "-p", "threads:=1", "-p", "input_topic:=/startup_cam/image"])
        for name, value in (("latency_budget_ms", 30.0), ("diagnostics_period_s", 2.0), ("overlay_alpha", 1.0)):
            got = node.get_parameter(name)
            assert got.type_ == Parameter.Type.DOUBLE and got.value == value, name
        assert node.selection.budget_ms == 30.0
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


# ---------------------------------------------------------------------------- huge frames
def test_a_header_claiming_a_huge_frame_is_refused_without_allocating(ros):
    import resource

    node = ros["node"]
    before, peak = node.stats()["bad"].get("truncated", 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = Image(encoding="rgb8", height=100_000, width=100_000, step=300_000)  # 30 GB claimed, 12 bytes sent
    msg.data = bytes(12)
    t0 = time.monotonic()
    ros["pub"].publish(msg)
    assert wait_for(lambda: node.stats()["bad"].get("truncated", 0) > before, 5.0), node.stats()
    assert time.monotonic() - t0 < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024  # KiB: nothing near the claimed size
    send_and_wait(ros, numpy_to_image(frame(), "rgb8"))  # still serving


def test_a_huge_frame_is_scaled_down_for_the_network_not_a_stall(zoo):
    """The issue's frame: 4000x6000 rgb8 over reliable QoS. With max_input_pixels the network runs on
    it scaled down; labels still come at 4000x6000, within a bounded time."""
    spinner = Spinner()
    try:
        node = spinner.add(SegmentNode(context=spinner.context, parameter_overrides=overrides(
            zoo, model=str(zoo["fast"]), zoo="", qos="reliable", max_input_pixels=4096, publish_color=False,
            input_topic="/huge_cam/image", labels_topic="/huge_cam/labels")))
        probe = spinner.node("huge_probe")
        got = []
        probe.create_subscription(Image, "/huge_cam/labels", got.append, RELIABLE)
        pub = probe.create_publisher(Image, "/huge_cam/image", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() > 0 and node.pub_labels.get_subscription_count() > 0)
        big = np.random.default_rng(5).integers(0, 256, size=(4000, 6000, 3), dtype=np.uint8)
        t0 = time.monotonic()
        pub.publish(numpy_to_image(big, "rgb8"))
        assert wait_for(lambda: bool(got), 60.0), node.stats()
        elapsed = time.monotonic() - t0
        out = got[0]
        assert (out.height, out.width, out.encoding) == (4000, 6000, "mono8")
        expected = Segmenter(zoo["fast"], max_pixels=4096)(big)
        np.testing.assert_array_equal(np.frombuffer(out.data, np.uint8).reshape(4000, 6000), expected)
        assert node.frames_downscaled == 1 and node.stats()["bad"] == {}
        assert elapsed < 60.0
    finally:
        spinner.close()


# ---------------------------------------------------------------------------- shutdown
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_with_frames_flowing_is_quiet(zoo, tmp_path, signame):
    """SIGINT (Ctrl-C) or SIGTERM (a supervisor's stop) while the worker is busy: exit 0, and no
    'bad input' / 'context is invalid' on stderr; it works when the node inherited an ignored
    SIGINT (as a shell's background job does), since the node installs its own handler."""
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from conftest import subprocess_env

    script = shutil.which("hmseg_segment", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "hmseg_ros.segment_node"]
    h, w = 180, 240  # slow enough on the tiny model that frames are in flight at the signal
    args = [f"model:={zoo['fast']}", "input_topic:=/sigint_cam/image", "labels_topic:=/sigint_cam/labels", "qos:=reliable",
            f"expected_height:={h}", f"expected_width:={w}", "measure_iterations:=1", f"latency_cache:={tmp_path / 'lat.json'}"]
    env = dict(subprocess_env(), ROS_LOG_DIR=str(tmp_path / "ros_log"))  # its log files stay out of ~/.ros
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731  (a background job's start)
    proc = subprocess.Popen(cmd + ["--ros-args"] + [a for p in args for a in ("-p", p)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=ignore_sigint)
    spinner = Spinner()
    try:
        probe = spinner.node("sigint_probe")
        got = []
        probe.create_subscription(Image, "/sigint_cam/labels", got.append, RELIABLE)
        pub = probe.create_publisher(Image, "/sigint_cam/image", RELIABLE)
        msg = numpy_to_image(frame(1, h, w), "rgb8")
        deadline = time.monotonic() + 120.0
        while len(got) < 2 and time.monotonic() < deadline and proc.poll() is None:
            pub.publish(msg)
            time.sleep(0.03)
        assert len(got) >= 2, proc.stderr.read() if proc.poll() is not None else "no labels"
        for _ in range(5):
            pub.publish(msg)
            time.sleep(0.03)
        proc.send_signal(getattr(signal, signame))
        for _ in range(20):  # frames keep coming during shutdown
            pub.publish(msg)
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        spinner.close()
    assert proc.returncode == 0, err[-3000:]
    for bad in ("bad input", "context is invalid", "Failed to publish", "Traceback", "RCLError"):
        assert bad not in err, err[-3000:]
