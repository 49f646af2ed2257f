"""The ``main()`` every hmseg node shares: init, build the node, spin, clean up, and one-line errors.

A node that cannot start (a bad parameter, a missing or damaged model, zoo or bag) prints one
line that names the problem and its fix and exits with status 2, instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from hmseg_core.checkpoint import CheckpointError
from hmseg_core.deploy.package import PackageError
from hmseg_core.runtime import BackendUnavailable

#: what a node's start-up raises for bad input (ZooError, ConfigError and the bag errors are ValueErrors)
STARTUP_ERRORS = (BackendUnavailable, CheckpointError, PackageError, ValueError, FileNotFoundError)


def spin_until(done: Callable[[Node], bool], drain: int = 0) -> Callable[[Node], None]:
    """A spin function for :func:`run_node` that returns once ``done(node)``; then ``drain`` short
    spins let the last messages go out."""

    def spin(node: Node) -> None:
        while rclpy.ok() and not done(node):
            rclpy.spin_once(node, timeout_sec=0.1)
        for _ in range(drain):
            rclpy.spin_once(node, timeout_sec=0.05)

    return spin


def run_node(name: str, make: Callable[[], Node], spin: Callable[[Node], None] = rclpy.spin,
             args: Optional[Sequence[str]] = None) -> int:
    """Run one node until shutdown (Ctrl-C, ``spin`` returning); the process's exit status."""
    try:
        with rclpy.init(args=args):
            try:
                node = make()
            except STARTUP_ERRORS as e:
                print(f"{name}: error: {e}", file=sys.stderr)
                return 2
            try:
                spin(node)
            finally:
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0
