"""The ``main()`` every hmseg node shares: init, build the node, spin, clean up, and one-line errors.

A node that cannot start (a bad parameter, a missing or damaged model, zoo or bag) prints one
line that names the problem and its fix and exits with status 2, instead of a traceback.

Ctrl-C (SIGINT) and SIGTERM stop the node in order: rclpy's own signal handlers would shut the
context down at once, under the feet of a worker thread still publishing a frame ("publisher's
context is invalid"); here the signal only sets a flag, the spin (which wakes every 0.1 s) sees it
and returns, then the node is destroyed (its worker stopped) and only then the context shut down.
The handler raises nothing: a KeyboardInterrupt raised wherever the main thread happens to be
can land inside rclpy's executor and leave its bookkeeping half done, so that the shutdown waits
for ever (seen with the compiled backends' faster frames). A second signal exits at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable, Optional, Sequence

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from hmseg_core.checkpoint import CheckpointError
from hmseg_core.deploy.package import PackageError
from hmseg_core.runtime import BackendUnavailable

#: what a node's start-up raises for bad input (ZooError, ConfigError, ParameterError and the bag
#: errors are ValueErrors; ParameterException: a value rclpy itself refuses in declare_parameter)
STARTUP_ERRORS = (BackendUnavailable, CheckpointError, PackageError, ValueError, FileNotFoundError, ParameterException)


def one_line(e: BaseException) -> str:
    """An error's message as one line: its first non-empty line (some libraries' messages run on
    for a page, e.g. torch.load's, embedded in CheckpointError)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


#: set by SIGINT/SIGTERM while :func:`run_node` runs: every spin returns when it sees it
stop_requested = threading.Event()


def spin_until(done: Callable[[Node], bool], drain: int = 0) -> Callable[[Node], None]:
    """A spin function for :func:`run_node` that returns once ``done(node)`` or a stop is requested
    (a signal); then ``drain`` short spins let the last messages go out."""

    def spin(node: Node) -> None:
        while rclpy.ok(context=node.context) and not done(node) and not stop_requested.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        for _ in range(drain if not stop_requested.is_set() else 0):
            rclpy.spin_once(node, timeout_sec=0.05)

    return spin


#: spin until shutdown, waking every 0.1 s so that a signal is noticed
spin_forever = spin_until(lambda node: False)


def spin_in_background(executor, name: str = "hmseg_spin") -> threading.Thread:
    """Spin ``executor`` in a daemon thread until its context shuts down (a client of the nodes, e.g. a
    test harness or a benchmark, that keeps its own main thread); join the thread after the shutdown."""

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    thread = threading.Thread(target=spin, name=name, daemon=True)
    thread.start()
    return thread


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _request_stop(signum, frame) -> None:
    if stop_requested.is_set():  # a second Ctrl-C: the orderly stop is taking too long for the user
        raise KeyboardInterrupt
    stop_requested.set()


def run_node(name: str, make: Callable[[], Node], spin: Callable[[Node], None] = spin_forever,
             args: Optional[Sequence[str]] = None) -> int:
    """Run one node until shutdown (Ctrl-C, SIGTERM, ``spin`` returning); the process's exit status."""
    main_thread = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    stop_requested.clear()
    signals = (signal.SIGINT, signal.SIGTERM)
    # while the node starts (it may measure its zoo for a minute) a signal interrupts at once
    previous = {s: signal.signal(s, _interrupt) for s in signals} if main_thread else {}
    try:
        with rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO):
            try:
                node = make()
            except STARTUP_ERRORS as e:
                print(f"{name}: error: {one_line(e)}", file=sys.stderr)
                return 2
            for sig in previous:
                signal.signal(sig, _request_stop)
            try:
                spin(node)
            finally:
                node.destroy_node()  # stops the node's threads while the context is still valid
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
