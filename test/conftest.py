import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# latency caches and the like go to a folder of this test session (children inherit it), never ~/.cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="hmseg-test-cache-")
# A shell starts a background job (`pytest ... &`) with SIGINT ignored, and children inherit that:
# `ros2 launch` would then ignore the Ctrl-C the launch tests send it. Restore the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def camvid_fixture(tmp_path_factory):
    """A tiny generated data set in the CamVid layout (64x96 frames)."""
    from hmseg_core.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("camvid"), "camvid", {"train": 8, "val": 3}, size=(64, 96), seed=1)


@pytest.fixture(scope="session")
def cityscapes_fixture(tmp_path_factory):
    from hmseg_core.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("cityscapes"), "cityscapes", {"train": 4, "val": 2}, size=(64, 128), seed=2)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def cli_overrides(overrides: dict) -> list:
    """``{"crop": (48, 64), "epochs": 2}`` as ``-ocrop=48,64 -oepochs=2``."""
    return [f"-o{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in overrides.items()]


def kill_when_logged(args: list, log: Path, lines: int, err: Path, timeout: float = 300) -> None:
    """Run ``args`` (stderr to the file ``err``: a pipe could fill with progress bars and block it) and
    SIGKILL it once ``log`` has ``lines`` lines; fails if it exits first or the lines do not come in time."""
    with open(err, "wb") as f:
        proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.time() + timeout
        while not (log.is_file() and len(log.read_text().splitlines()) >= lines):
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(map(str, args[3:5]))} exited early: {err.read_text()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"{log} had not {lines} lines after {timeout:.0f} s")
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run_cli_under_torchrun(cli_args, overrides: dict, nproc: int = 2, timeout: float = 300) -> None:
    """``python -m hmseg_core.cli CLI_ARGS -oKEY=VALUE...`` as ``nproc`` processes on loopback (gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "-m", "hmseg_core.cli", *cli_args]
    args += cli_overrides(overrides)
    res = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
