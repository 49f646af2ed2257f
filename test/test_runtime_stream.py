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


def test_stage_timings_from_process_and_the_streams_own_wait_and_work(streams):
    release = threading.Event()

    def process(frame):
        if frame == "slow":
            release.wait(5.0)
        time.sleep(0.01)
        return {"decode": 1.0 + frame if isinstance(frame, int) else 1.0, "network": 5.0}

    stream = FrameStream(process).start()
    streams(stream)
    stream.submit("slow")
    assert wait_for(lambda: stream._slot is None)  # the worker holds "slow"
    stream.submit(0)  # waits in the mailbox until "slow" is done
    time.sleep(0.05)
    release.set()
    assert wait_for(lambda: stream.processed == 2)
    for i in (1, 2):
        stream.submit(i)
        assert wait_for(lambda: stream.processed == 2 + i)
    s = stream.stats(latency_span_s=60.0)
    assert list(s.stages) == ["wait", "decode", "network", "work"]  # reported in pipeline order
    assert {n: st.samples for n, st in s.stages.items()} == {"wait": 4, "decode": 4, "network": 4, "work": 4}
    assert s.stages["network"].p50_ms == s.stages["network"].p95_ms == 5.0
    assert s.stages["decode"].p50_ms == pytest.approx(1.5) and s.stages["decode"].p95_ms >= 2.5
    assert s.stages["work"].p50_ms >= 10.0  # the whole process call, timed by the stream
    assert s.stages["wait"].p95_ms >= 40.0  # frame 0 waited while "slow" ran
    assert s.latency_p95_ms >= s.stages["wait"].p95_ms


def test_frames_without_output_leave_no_stage_sample_and_true_still_counts(streams):
    results = iter([None, False, True, {"decode": 2.0}])
    stream = FrameStream(lambda f: next(results)).start()
    streams(stream)
    for i in range(4):
        stream.submit(i)
        assert wait_for(lambda: stream._slot is None)
        time.sleep(0.02)
    assert wait_for(lambda: stream.processed == 2)
    s = stream.stats(latency_span_s=60.0)
    assert s.stages["wait"].samples == s.stages["work"].samples == 2 and s.stages["decode"].samples == 1
    assert stream.stats(period_s=1.0).stages.keys() == s.stages.keys()


def test_stage_table_and_summary_order():
    from dataclasses import asdict

    from hmseg_core.runtime.stream import stage_table, summarize_stages

    stats = summarize_stages([{"zeta": 1.0, "network": 4.0, "wait": 2.0}, {"network": 6.0, "publish": 1.0}])
    assert list(stats) == ["wait", "network", "publish", "zeta"]
    assert stats["network"].p50_ms == 5.0 and stats["network"].samples == 2 and stats["publish"].samples == 1
    table = stage_table({k: asdict(v) for k, v in stats.items()})
    assert table.splitlines()[0] == "| stage | p50 ms | p95 ms | frames |"
    assert "| network | 5.00 | 5.90 | 2 |" in table and len(table.splitlines()) == 6
