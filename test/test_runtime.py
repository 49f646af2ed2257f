"""The ROS-free deployment runtime: Segmenter, image codec, model zoo, latency cache, budget selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ros_testing import tiny_checkpoint

from hmseg_core import image_codec
from hmseg_core.checkpoint import model_from_checkpoint
from hmseg_core.evaluate import predict
from hmseg_core.runtime import (
    LatencyCache,
    LatencyStats,
    Measurement,
    ModelZoo,
    ResizePolicy,
    Segmenter,
    Variant,
    ZooError,
    device_fingerprint,
    measure_zoo,
    overlay,
    select_variant,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("rt") / "tiny.pt", seed=3)


def rgb(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("policy", [ResizePolicy(), ResizePolicy("fixed", (64, 96))], ids=str)
def test_segmenter_equals_offline_predict(ckpt, policy):
    seg = Segmenter(ckpt, resize=policy)
    model, c = model_from_checkpoint(ckpt)
    img = rgb()
    labels, t = seg.segment(img)
    assert labels.dtype == np.uint8 and labels.shape == img.shape[:2]
    np.testing.assert_array_equal(labels, predict(model.eval(), img, c["mean"], c["std"], policy.size))
    assert t.total > 0 and min(t.preprocess, t.inference, t.postprocess) >= 0
    assert seg.colorize(labels).shape == img.shape


def test_postprocess_picks_the_first_maximum_like_argmax_and_resizes():
    import torch

    from hmseg_core.evaluate import postprocess

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (1, 11, 30, 40), generator=g).float()  # many ties between channels
    assert np.array_equal(postprocess(logits, (30, 40)), logits.argmax(1)[0].numpy().astype(np.uint8))
    smooth = torch.randn(1, 11, 30, 40, generator=g)
    labels = postprocess(smooth, (60, 80))
    assert labels.shape == (60, 80) and labels.dtype == np.uint8
    upsampled = torch.nn.functional.interpolate(smooth, size=(60, 80), mode="bilinear", align_corners=False)
    assert np.array_equal(labels, upsampled.argmax(1)[0].numpy().astype(np.uint8))


def test_auto_backend_of_a_checkpoint_is_torch_without_measuring(ckpt, tmp_path):
    from hmseg_core.runtime import AUTO, candidate_backends

    assert candidate_backends(ckpt) == ["torch"]
    assert Segmenter(ckpt, backend=AUTO, latency_cache=LatencyCache(tmp_path / "lat.json")).backend_name == "torch"
    assert not (tmp_path / "lat.json").exists()


def test_segmenter_rejects_bad_input_and_unknown_backend(ckpt):
    seg = Segmenter(ckpt)
    for bad in (rgb().astype(np.float32), rgb()[..., :2], np.zeros((4, 4), np.uint8)):
        with pytest.raises(ValueError, match="RGB uint8"):
            seg(bad)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; available: onnxruntime, openvino, openvino-bf16, torch, tvm"):
        Segmenter(ckpt, backend="tensorrt")


@pytest.mark.parametrize("mode,size", [("fixed", None), ("fixed", (8, 8)), ("stretch", None)])
def test_resize_policy_validation(mode, size):
    with pytest.raises(ValueError):
        ResizePolicy(mode, size)


def test_overlay_blends():
    a, b = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert (overlay(a, b, 0.25) == 50).all() and (overlay(a, b, 0.0) == 0).all()


# ---------------------------------------------------------------------------- image codec
@pytest.mark.parametrize("encoding", list(image_codec.ENCODINGS))
def test_codec_round_trip_every_encoding_with_row_padding(encoding):
    img = rgb(5, 7)
    if encoding == "mono8":
        img = np.repeat(image_codec.from_rgb(img, "mono8")[..., None], 3, axis=2)
    px = image_codec.from_rgb(img, encoding)
    h, w, step, data = image_codec.encode(px, encoding)
    # rows padded by 3 bytes, as some drivers do: the padding must be skipped
    padded = b"".join(data[r * step:(r + 1) * step] + b"\xff\xff\xff" for r in range(h))
    out = image_codec.to_rgb(image_codec.RawImage(h, w, encoding, step + 3, padded))
    np.testing.assert_array_equal(out, img)


def test_codec_channel_orders_by_hand():
    px = np.array([[[10, 20, 30, 40]]], np.uint8)
    assert image_codec.to_rgb(image_codec.RawImage(1, 1, "bgra8", 4, px.tobytes())).tolist() == [[[30, 20, 10]]]
    assert image_codec.to_rgb(image_codec.RawImage(1, 1, "rgba8", 4, px.tobytes())).tolist() == [[[10, 20, 30]]]
    assert image_codec.to_rgb(image_codec.RawImage(1, 1, "bgr8", 3, px[..., :3].tobytes())).tolist() == [[[30, 20, 10]]]
    assert image_codec.to_rgb(image_codec.RawImage(1, 1, "mono8", 1, b"\x07")).tolist() == [[[7, 7, 7]]]


@pytest.mark.parametrize(
    "raw,kind",
    [
        (image_codec.RawImage(2, 2, "16UC1", 4, bytes(8)), "encoding"),
        (image_codec.RawImage(0, 2, "rgb8", 6, b""), "empty"),
        (image_codec.RawImage(2, 2, "rgb8", 5, bytes(10)), "step"),
        (image_codec.RawImage(2, 2, "rgb8", 6, bytes(11)), "truncated"),
        (image_codec.RawImage(2, 2, "rgb8", 6, bytes(13)), "size"),
    ],
)
def test_codec_errors_name_their_kind(raw, kind):
    with pytest.raises(image_codec.ImageDecodeError) as e:
        image_codec.to_rgb(raw)
    assert e.value.kind == kind


# ---------------------------------------------------------------------------- zoo
def test_zoo_save_load_round_trip_and_errors(tmp_path, ckpt):
    z = ModelZoo([Variant("a", ckpt, 0.6), Variant("b", ckpt, 0.4)])
    loaded = ModelZoo.load(z.save(tmp_path / "zoo.yaml"))
    assert [(v.name, v.checkpoint.resolve(), v.miou) for v in loaded.variants] == [("a", ckpt.resolve(), 0.6), ("b", ckpt.resolve(), 0.4)]
    with pytest.raises(ZooError, match="unique"):
        ModelZoo([Variant("a", ckpt, 0.6), Variant("a", ckpt, 0.4)])
    (tmp_path / "bad.yaml").write_text(json.dumps({"variants": [{"name": "x", "checkpoint": "missing.pt", "miou": 0.5}]}))
    with pytest.raises(ZooError, match="missing.pt is neither a checkpoint file nor a model package"):
        ModelZoo.load(tmp_path / "bad.yaml")
    (tmp_path / "pct.yaml").write_text(json.dumps({"variants": [{"name": "x", "checkpoint": str(ckpt), "miou": 74.3}]}))
    with pytest.raises(ZooError, match="fraction"):
        ModelZoo.load(tmp_path / "pct.yaml")
    with pytest.raises(ZooError, match="no variant 'c'"):
        loaded.get("c")


# ---------------------------------------------------------------------------- selection
def m(name, miou, p95):
    return Measurement(Variant(name, None, miou), LatencyStats(p95 * 0.9, p95, p95 * 0.9, 10), False)


@pytest.mark.parametrize(
    "budget,expect,fits",
    [(0.0, "big", True), (100.0, "big", True), (30.0, "mid", True), (15.0, "mid_fast", True), (9.0, "small", True), (2.0, "small", False)],
)
def test_select_most_accurate_that_fits(budget, expect, fits):
    """At 15 ms tie_slow and mid_fast tie on mIoU: the faster wins."""
    ms = [m("big", 0.75, 80.0), m("mid", 0.72, 25.0), m("tie_slow", 0.70, 14.0), m("mid_fast", 0.70, 12.0), m("small", 0.60, 8.0)]
    sel = select_variant(ms, budget)
    assert (sel.variant.name, sel.fits) == (expect, fits)
    assert f"* {expect}:" in sel.describe()


ZOO_P95 = {"big": (0.75, 80.0), "mid": (0.72, 25.0), "tie_slow": (0.70, 14.0), "mid_fast": (0.70, 12.0), "small": (0.60, 8.0)}


@pytest.fixture
def lazy_zoo(monkeypatch):
    """ZooLatencies over ZOO_P95's variants, with measuring faked: (the object, the names measured in order)."""
    from hmseg_core.runtime import ZooLatencies

    measured = []

    def fake_measure_zoo(zoo, *args, **kwargs):
        (v,) = zoo.variants
        measured.append(v.name)
        return [m(v.name, v.miou, ZOO_P95[v.name][1])]

    monkeypatch.setattr("hmseg_core.runtime.budget.measure_zoo", fake_measure_zoo)
    zoo = ModelZoo([Variant(n, None, miou) for n, (miou, _) in ZOO_P95.items()])
    return ZooLatencies(zoo, (32, 48)), measured


@pytest.mark.parametrize("budget", [0.0, 100.0, 30.0, 15.0, 13.0, 9.0, 2.0])
def test_lazy_selection_chooses_as_if_every_variant_were_measured(lazy_zoo, budget):
    latencies, measured = lazy_zoo
    everything = select_variant([m(n, miou, p95) for n, (miou, p95) in ZOO_P95.items()], budget)
    sel = latencies.select(budget)
    assert (sel.variant.name, sel.fits) == (everything.variant.name, everything.fits)
    assert sorted(measured + [v.name for v in sel.unmeasured]) == sorted(ZOO_P95)  # each variant measured or not, once


def test_lazy_selection_measures_only_what_the_budget_needs(lazy_zoo):
    latencies, measured = lazy_zoo
    assert latencies.select(0.0).variant.name == "big" and measured == ["big"]  # no budget: the most accurate alone
    sel = latencies.select(15.0)  # down the accuracy order; the tie at 0.70 needs both
    assert sel.variant.name == "mid_fast" and measured == ["big", "mid", "tie_slow", "mid_fast"]
    assert [v.name for v in sel.unmeasured] == ["small"]
    assert "small: mIoU 60.0 %, not measured (a more accurate variant fits)" in sel.describe()
    assert sel.to_dict()["unmeasured"] == [{"name": "small", "miou": 0.60}]
    assert latencies.select(30.0).variant.name == "mid" and len(measured) == 4  # nothing measured twice
    sel = latencies.select(2.0)  # nothing fits: every variant, then the fastest
    assert (sel.variant.name, sel.fits, sel.unmeasured) == ("small", False, ()) and measured[-1] == "small"


def test_lazy_selection_adds_the_node_overhead_to_what_it_measures(lazy_zoo):
    from hmseg_core.runtime import ZooLatencies

    latencies, _ = lazy_zoo
    over = LatencyStats(2.0, 4.0, 2.5, 10)
    with_overhead = ZooLatencies(latencies.zoo, (32, 48), overhead=over)
    sel = with_overhead.select(15.0)  # mid_fast's 12 ms + 4 no longer fits; small's 8 + 4 does
    assert sel.variant.name == "small" and sel.measurement.overhead == over and sel.measurement.latency.p95 == 12.0
    with pytest.raises(ValueError, match="finite"):
        with_overhead.select(float("inf"))


def test_select_rejects_nonfinite_budget():
    with pytest.raises(ValueError, match="finite"):
        select_variant([m("a", 0.5, 1.0)], float("nan"))


def test_node_overhead_is_measured_by_a_callable_and_added_before_selection():
    """A variant whose network fits the budget but not with the node's own per-frame stages added
    must not be chosen: the budget is what the node achieves."""
    import time

    from hmseg_core.runtime import add_overhead, measure_overhead

    calls = []
    overhead = measure_overhead(lambda: (calls.append(1), time.sleep(0.002)), iterations=4, warmup=1)
    assert len(calls) == 5 and overhead.samples == 4 and overhead.p95 >= overhead.p50 >= 2.0

    ms = [m("accurate", 0.75, 28.0), m("fast", 0.60, 12.0)]
    assert select_variant(ms, 30.0).variant.name == "accurate"  # the network alone fits
    fixed = LatencyStats(4.0, 5.0, 4.0, 10)
    total = add_overhead(ms, fixed)
    assert [t.latency.p95 for t in total] == [33.0, 17.0] and total[0].network == ms[0].latency
    assert total[0].overhead == fixed and ms[0].overhead is None  # the inputs are left alone
    sel = select_variant(total, 30.0)
    assert sel.variant.name == "fast" and sel.fits
    assert "node's own stages: p50 4.0 ms, p95 5.0 ms" in sel.describe() and "network p95 28.0 ms" in sel.describe()
    d = sel.to_dict()
    assert d["overhead_p95_ms"] == 5.0 and d["candidates"][0]["network_p95_ms"] == 28.0 and d["candidates"][0]["p95_ms"] == 33.0
    assert add_overhead(ms, None) == ms
    with pytest.raises(ValueError, match="already added"):
        add_overhead(total, fixed)


# ---------------------------------------------------------------------------- latency cache
def test_latency_cache_keys_on_device_and_checkpoint(tmp_path, ckpt):
    cache = LatencyCache(tmp_path / "lat.json")
    fp = device_fingerprint("torch", "cpu", 1)
    key = LatencyCache.entry_key(ckpt, (48, 64), ResizePolicy())
    stats = LatencyStats(1.0, 2.0, 1.5, 5)
    cache.put(fp, key, stats)
    assert cache.get(fp, key) == stats
    assert cache.get(dict(fp, cpu="another cpu"), key) is None
    assert cache.get(fp, LatencyCache.entry_key(ckpt, (48, 64), ResizePolicy("fixed", (32, 32)))) is None
    (tmp_path / "lat.json").write_text("{not json")
    assert cache.get(fp, key) is None  # a damaged cache means: measure again


def test_measure_zoo_measures_once_then_uses_the_cache(tmp_path, ckpt, monkeypatch):
    zoo = ModelZoo([Variant("tiny", ckpt, 0.5)])
    cache = LatencyCache(tmp_path / "lat.json")
    first = measure_zoo(zoo, (32, 48), cache=cache, iterations=3, warmup=1)
    assert not first[0].cached and first[0].latency.samples == 3 and first[0].latency.p95 > 0

    def no_segmenter(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr("hmseg_core.runtime.segmenter.Segmenter", no_segmenter)
    second = measure_zoo(zoo, (32, 48), cache=cache, iterations=3)
    assert second[0].cached and second[0].latency == first[0].latency


def test_shipped_zoo_loads_and_segments():
    from hmseg_core.runtime import default_zoo_path

    zoo = ModelZoo.load(default_zoo_path())
    assert [v.name for v in zoo.variants] == ["mrms_tiny", "search_0.5x", "search_1x"]
    assert 0.6 <= zoo.get("mrms_tiny").miou <= 1.0
    for variant in zoo.variants:
        assert 0.55 <= variant.miou <= 1.0 and variant.extra["genotype"] and variant.extra["latency_ms"] > 0
        seg = Segmenter(variant.checkpoint)
        labels = seg(np.zeros((60, 80, 3), np.uint8))
        assert labels.shape == (60, 80) and int(labels.max()) < 11


# ---------------------------------------------------------------------------- confidence and huge frames
def test_confidence_is_the_softmax_probability_of_the_label(ckpt):
    import torch

    from hmseg_core.data.synthetic import render_street
    from hmseg_core.evaluate import preprocess
    from hmseg_core.runtime import default_zoo_path

    trained = ModelZoo.load(default_zoo_path()).get("mrms_tiny").checkpoint  # confident somewhere, unsure elsewhere
    for path in (ckpt, trained):
        seg = Segmenter(path)
        img, _ = render_street(np.random.default_rng(2), 45, 61)
        labels, t, conf = seg.segment(img, confidence=True)
        np.testing.assert_array_equal(labels, seg(img))  # the same labels as without confidence
        assert conf.dtype == np.uint8 and conf.shape == img.shape[:2] and t.total > 0
        model, c = model_from_checkpoint(path)
        with torch.no_grad():
            logits = model.eval()(preprocess(img, c["mean"], c["std"]))
        p = torch.softmax(logits, 1).max(1).values[0].numpy()
        assert np.abs(conf.astype(int) - np.rint(255 * p)).max() <= 1
        assert conf.min() >= int(255 / seg.num_classes) - 1  # the top class is never below a uniform guess
    assert conf.max() > 200 and conf.min() < conf.max()  # the trained model: a real spread


def test_confidence_takes_the_network_path_on_a_whole_frame_backend(ckpt, monkeypatch):
    from hmseg_core.runtime import BACKENDS, TorchBackend

    calls = []

    class WholeFrame(TorchBackend):
        name = "whole_frame_torch"
        frame_size = (50, 70)

        def labels(self, rgb):
            calls.append("labels")
            return Segmenter(ckpt, whole_frame=False)(rgb)

        def forward(self, x):
            calls.append("forward")
            return super().forward(x)

    monkeypatch.setitem(BACKENDS, "whole_frame_torch", WholeFrame)
    seg, img = Segmenter(ckpt, "whole_frame_torch"), rgb()
    labels, t = seg.segment(img)
    assert calls == ["labels"] and t.preprocess == t.postprocess == 0.0
    calls.clear()
    labels2, _, conf = seg.segment(img, confidence=True)
    assert calls == ["forward"] and conf.shape == img.shape[:2]
    np.testing.assert_array_equal(labels, labels2)


def test_fit_pixels_and_nearest_enlargement():
    from hmseg_core.runtime.transforms import enlarge_nearest, fit_pixels

    assert fit_pixels((4000, 6000), 0) == (4000, 6000) and fit_pixels((360, 480), 360 * 480) == (360, 480)
    for size, limit in (((4000, 6000), 4096 * 2160), ((4000, 6000), 4096), ((1, 10**8), 10**6), ((7, 3), 5)):
        h, w = fit_pixels(size, limit)
        assert 1 <= h <= size[0] and 1 <= w <= size[1] and h * w <= limit
    h, w = fit_pixels((4000, 6000), 4096 * 2160)
    assert abs(w / h - 1.5) < 0.01 and h * w > 0.99 * 4096 * 2160  # aspect kept, the budget used
    small = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = enlarge_nearest(small, (4, 6))
    np.testing.assert_array_equal(big, np.repeat(np.repeat(small, 2, 0), 2, 1))


def test_frames_over_max_pixels_are_scaled_down_and_labels_come_back_at_their_size(ckpt):
    from hmseg_core.runtime.transforms import enlarge_nearest, fit_pixels, shrink

    img = rgb(120, 160)
    seg = Segmenter(ckpt, max_pixels=3000)
    labels, _, conf = seg.segment(img, confidence=True)
    assert labels.shape == conf.shape == img.shape[:2]
    fit = fit_pixels(img.shape[:2], 3000)
    small_labels, _, small_conf = Segmenter(ckpt).segment(shrink(img, fit), confidence=True)
    np.testing.assert_array_equal(labels, enlarge_nearest(small_labels, img.shape[:2]))
    np.testing.assert_array_equal(conf, enlarge_nearest(small_conf, img.shape[:2]))
    # frames within the limit are untouched: bit for bit the offline prediction
    model, c = model_from_checkpoint(ckpt)
    np.testing.assert_array_equal(Segmenter(ckpt, max_pixels=120 * 160)(img), predict(model.eval(), img, c["mean"], c["std"]))
    with pytest.raises(ValueError, match="max_pixels"):
        Segmenter(ckpt, max_pixels=-1)


def test_a_header_claiming_a_huge_image_allocates_nothing():
    import tracemalloc

    tracemalloc.start()
    try:
        for raw in (image_codec.RawImage(100_000, 100_000, "rgb8", 300_000, bytes(12)),
                    image_codec.RawImage(2**31, 2**31, "bgra8", 2**33, bytes(64))):
            with pytest.raises(image_codec.ImageDecodeError) as e:
                image_codec.to_rgb(raw)
            assert e.value.kind == "truncated"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_a_slow_spell_moves_one_block_of_a_measurement_not_its_p95():
    steady = [10.0] * 21
    spell = steady[:7] + [40.0, 45.0] + steady[9:]  # two stalls in a row, as when another process wakes up
    assert LatencyStats.from_samples(spell).p95 > 39.0  # the plain p95 of 21 samples: the stalls decide it
    robust = LatencyStats.from_samples(spell, blocks=3)
    assert robust.p95 == 10.0 and robust.p50 == 10.0 and robust.samples == 21
    periodic = [40.0 if i % 4 == 0 else 10.0 for i in range(21)]  # a real cost every 4th frame is kept
    assert LatencyStats.from_samples(periodic, blocks=3).p95 == 40.0
    assert LatencyStats.from_samples([5.0, 7.0], blocks=3).p95 == LatencyStats.from_samples([5.0, 7.0]).p95  # too few to split


@pytest.mark.slow
def test_two_budgets_select_two_variants_of_the_shipped_zoo():
    """On this machine, the shipped zoo's variants measured as the node measures them (torch): a budget
    of the fastest's p95 runs the fastest, no budget the most accurate, and they are not the same variant."""
    from hmseg_core.runtime import ZooLatencies, default_zoo_path

    zoo = ModelZoo.load(default_zoo_path())
    assert len(zoo.variants) >= 2, f"{default_zoo_path()} ships {len(zoo.variants)} variant(s)"
    latencies = ZooLatencies(zoo, (360, 480), "torch", iterations=10, warmup=2)
    loose = latencies.select(0.0)
    fastest = min((latencies.measure(v) for v in zoo.variants), key=lambda m: m.latency.p95)
    tight = latencies.select(fastest.latency.p95)
    assert tight.fits and tight.variant.name == fastest.variant.name
    assert loose.variant.name != tight.variant.name, tight.describe()
    assert loose.variant.miou > tight.variant.miou
