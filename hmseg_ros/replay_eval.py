"""Replay -> segmentation -> evaluation as ROS 2 nodes in one process, on one executor.

:func:`run_replay_eval` is what ``hmseg-core replay-eval`` runs: the three real nodes
talk over real topics; afterwards the same frames go through the selected variant
offline (no ROS in between) and the report states whether both confusion matrices are
identical, which they must be in lockstep mode. ``stages_ms`` in the report holds the segment
node's per-stage p50/p95 over the run (:meth:`SegmentNode._process` says what each measures).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Optional

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from hmseg_core.bag import IMAGE_TOPIC, LABEL_TOPIC, evaluate_frames, read_drive, read_info
from hmseg_core.runtime import Segmenter
from hmseg_core.stream_eval import write_report

from .evaluator_node import EvaluatorNode
from .replay_node import ReplayNode
from .segment_node import SegmentNode


REPLAY_IMAGE, REPLAY_LABELS = "/hmseg/replay/image", "/hmseg/replay/labels"
SEGMENT_LABELS = "/hmseg_segment/labels"


def _params(d: Dict) -> list:
    return [Parameter(k, value=v) for k, v in d.items()]


def _spin_until_finished(executor, evaluator: EvaluatorNode, timeout_s: float, log) -> float:
    """Spin until the evaluator has seen the whole drive (or ``timeout_s``); returns the wall time."""
    t0 = time.monotonic()
    while not evaluator.finished.is_set():
        if time.monotonic() - t0 > timeout_s:
            log(f"replay-eval: timed out after {timeout_s:.0f} s; reporting what was evaluated")
            break
        executor.spin_once(timeout_sec=0.1)
    return time.monotonic() - t0


def _offline_check(seg: Segmenter, bag: Path, image_topic: str, label_topic: str, confusion: list) -> Dict:
    """The same model over the same frames without ROS: mIoU, and whether it equals the pipeline's."""
    cm = evaluate_frames(seg, read_drive(bag, image_topic, label_topic), seg.num_classes)
    return {"offline_miou": cm.miou(), "matches_offline": bool(cm.matrix.tolist() == confusion)}


def run_replay_eval(
    bag: str | Path,
    out_dir: str | Path,
    zoo: str = "",
    model: str = "",
    budget_ms: float = 0.0,
    backend: str = "auto",
    mode: str = "lockstep",
    rate_scale: float = 1.0,
    resize_policy: str = "native",
    network_size: Optional[tuple] = None,
    threads: int = 0,
    latency_cache: str = "",
    measure_iterations: int = 20,
    offline_check: bool = True,
    timeout_s: float = 3600.0,
    log=print,
) -> Dict:
    """Run the pipeline over ``bag``; returns the report (also written to ``out_dir``)."""
    bag = Path(bag)
    info = read_info(bag)
    image_topic, label_topic = info.get("image_topic", IMAGE_TOPIC), info.get("label_topic", LABEL_TOPIC)
    first = next(iter(read_drive(bag, image_topic, None)), None)
    if first is None:
        raise ValueError(f"{bag}: no frames on {image_topic}")
    seg_params = dict(
        zoo=str(zoo), model=str(model), latency_budget_ms=float(budget_ms), backend=backend, threads=int(threads),
        input_topic=REPLAY_IMAGE, qos="reliable", expected_height=first.image.shape[0], expected_width=first.image.shape[1],
        resize_policy=resize_policy, latency_cache=str(latency_cache), measure_iterations=int(measure_iterations),
        publish_color=False, publish_overlay=False,
    )
    if network_size:
        seg_params.update(network_height=int(network_size[0]), network_width=int(network_size[1]))
    replay_params = dict(
        bag=str(bag), bag_image_topic=image_topic, bag_label_topic=label_topic, image_topic=REPLAY_IMAGE,
        label_topic=REPLAY_LABELS, mode=mode, rate_scale=float(rate_scale), pace_topic=SEGMENT_LABELS,
        wait_for_label_subscribers=1,
    )

    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes = []
    try:
        segment = SegmentNode(context=context, parameter_overrides=_params(seg_params))
        nodes.append(segment)
        evaluator = EvaluatorNode(context=context, parameter_overrides=_params(dict(
            prediction_topic=SEGMENT_LABELS, gt_topic=REPLAY_LABELS, class_names=segment.segmenter.class_names,
            grace_s=1.0 if mode == "lockstep" else 3.0,
        )))
        nodes.append(evaluator)
        replay = ReplayNode(context=context, parameter_overrides=_params(replay_params))
        nodes.append(replay)
        for n in nodes:
            executor.add_node(n)
        wall = _spin_until_finished(executor, evaluator, timeout_s, log)
        variant = segment.selection.variant
        stats = segment.stats(latency_span_s=math.inf)  # the whole run (up to the stream's window of frames)
        rep = evaluator.finish({
            "bag": str(bag), "variant": variant.name, "checkpoint": str(variant.checkpoint), "backend": segment.segmenter.backend_name,
            "mode": mode, "budget_ms": float(budget_ms), "wall_s": wall, "frames_published": replay.published,
            "lockstep_timeouts": replay.timeouts, "segmenter": stats, "selection": segment.selection.describe(),
            "stages_ms": stats["stages"],
        })
    finally:
        for n in nodes:
            executor.remove_node(n)
            n.destroy_node()
        executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=context)

    if offline_check:
        seg = Segmenter(variant.checkpoint, segment.segmenter.backend_name, segment.resize, segment.device, variant.name,
                        size=segment.expected_size)
        rep.update(_offline_check(seg, bag, image_topic, label_topic, rep["confusion_matrix"]))
    paths = write_report(rep, out_dir)
    rep["report_files"] = {k: str(v) for k, v in paths.items()}
    return rep
