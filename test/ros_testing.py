"""Helpers for the ROS 2 integration tests: tiny checkpoints, an isolated rclpy context, waiting.

Each test session uses its own ROS_DOMAIN_ID (from the pid) and loopback-only discovery,
so concurrent sessions on one machine never see each other's topics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

try:
    import rclpy  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the machine
    RCLPY_MISSING = f"rclpy is not importable ({e}); install the ROS 2 wheels: pip install 'hmseg_ros[ros]'"
else:
    RCLPY_MISSING = ""

requires_rclpy = pytest.mark.skipif(bool(RCLPY_MISSING), reason=RCLPY_MISSING or "rclpy present")


def tiny_checkpoint(path: Path, model: str = "mrms_tiny", seed: int = 0, miou: float | None = None) -> Path:
    """A random-weight 11-class CamVid checkpoint."""
    from hmseg_core.checkpoint import atomic_save, make_checkpoint
    from hmseg_core.data.datasets import CAMVID
    from hmseg_core.registry import create_model

    torch.manual_seed(seed)
    net = create_model(model, CAMVID.num_classes, boosting=False).eval()
    extra = {} if miou is None else {"best_miou": miou}
    atomic_save(make_checkpoint(net, CAMVID.class_names, CAMVID.palette, CAMVID.mean, CAMVID.std, **extra), path)
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


class Spinner:
    """An rclpy context and one executor spinning on a background thread."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from hmseg_ros.node_main import spin_in_background

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.nodes = []
        self._thread = spin_in_background(self.executor)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str):
        import rclpy

        return self.add(rclpy.create_node(name, context=self.context))

    def close(self) -> None:
        import rclpy

        for n in self.nodes:
            self.executor.remove_node(n)
            n.destroy_node()
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)
