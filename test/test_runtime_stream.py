"""The newest-frame worker the ROS node runs on, tested without ROS."""

import threading
import time

import pytest

from hmseg_core.runtime import FrameStream


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def streams():
    made = []
    yield made.append
    for s in made:
        s.close()


def test_a_burst_to_a_slow_consumer_keeps_only_the_newest_frame(streams):
    seen, release = [], threading.Event()

    def process(frame):
        release.wait(5.0)
        seen.append(frame)
        return True

    stream = FrameStream(process).start()
    streams(stream)
    stream.submit(0)
    assert wait_for(lambda: stream._slot is None)  # the worker took frame 0 and blocks in process
    for i in range(1, 11):
        stream.submit(i)
    release.set()
    assert wait_for(lambda: stream.processed == 2)
    assert seen == [0, 10]  # 1..9 were replaced while they waited
    s = stream.stats()
    assert (s.received, s.processed, s.dropped) == (11, 2, 9)
    assert s.latency_p50_ms is not None and s.latency_p95_ms >= s.latency_p50_ms > 0


def test_requests_apply_between_frames_and_the_newest_wins(streams):
    order, gate = [], threading.Event()

    def process(frame):
        gate.wait(5.0)
        order.append(("frame", frame))
        return True

    stream = FrameStream(process, apply=lambda r: order.append(("apply", r))).start()
    streams(stream)
    stream.submit("a")
    assert wait_for(lambda: stream._slot is None)
    stream.request("small")
    stream.request("large")  # replaces "small" before the worker sees it
    assert stream.pending == "large"
    stream.submit("b")
    gate.set()
    assert wait_for(lambda: len(order) == 3)
    assert order == [("frame", "a"), ("apply", "large"), ("frame", "b")]
    assert stream.pending is None


def test_a_failing_frame_is_reported_and_the_worker_goes_on(streams):
    errors = []

    def process(frame):
        if frame == "bad":
            raise RuntimeError("boom")
        return frame != "skip"  # False: nothing published, so no latency sample

    stream = FrameStream(process, on_error=lambda stage, e: errors.append((stage, str(e)))).start()
    streams(stream)
    for frame in ("bad", "skip", "good"):
        stream.submit(frame)
        assert wait_for(lambda: stream._slot is None)
        time.sleep(0.02)
    assert wait_for(lambda: stream.processed == 1)
    assert errors == [("frame", "boom")]
    assert stream.count_bad("decode") and not stream.count_bad("decode")  # True only the first time
    assert stream.stats().bad == {"decode": 2}


def test_stats_before_any_frame_and_rate_over_the_period(streams):
    stream = FrameStream(lambda f: True).start()
    streams(stream)
    s = stream.stats(period_s=1.0)
    assert (s.received, s.processed, s.fps, s.latency_p50_ms) == (0, 0, 0.0, None)
    for i in range(5):
        stream.submit(i)
        assert wait_for(lambda: stream.processed == i + 1)
    assert stream.stats(period_s=1.0).fps == pytest.approx(5.0)


def test_close_stops_the_worker(streams):
    stream = FrameStream(lambda f: True).start()
    stream.close()
    assert not stream._thread.is_alive()
    stream.close()  # twice is harmless
