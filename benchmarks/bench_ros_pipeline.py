"""Camera -> ``hmseg_segment`` -> labels under the real ROS 2 tooling, next to the network alone.

Three processes, as on a robot: a camera publisher (its own process) sends ``--size`` rgb8 frames
at ``--rate`` Hz for ``--seconds``, stamped with the current time (CamVid val frames from
``--data-root``, else generated street scenes); the node runs as ``ros2 launch hmseg_ros
segment.launch.py`` (the package colcon-built into a temporary workspace, as the tests do), or
with ``--no-launch`` as the console script; this process subscribes to ``~/labels`` and
``/diagnostics``.

Before the camera starts, the network alone is timed here, in this process (``Segmenter.segment``
after a warm-up, same frames, the variant and backend the node announced on ``~/variant``, the
node's thread count), back to back and paced at the camera's rate. Then it reports network-only
and stamp -> labels p50/p95, the output rate, the node's counters (received, processed, dropped),
its per-stage p50/p95 from its last ``/diagnostics``, and the CPU each process and thread used
while frames flowed, with the CPU model, as a Markdown table (and ``--json OUT``).

    python benchmarks/bench_ros_pipeline.py --rate 30 --seconds 60 --threads 2 --json runs/ros_pipeline.json
    python benchmarks/bench_ros_pipeline.py --model runs/m.pt --data-root data/camvid --no-launch

Measure on a quiet machine: on a shared one the figures say more about the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = "/bench/camera/image_raw"
NODE = "hmseg_segment"
DIAG_NAME = f"{NODE}: segmentation"


# ---------------------------------------------------------------------------- frames
def load_frames(size: Tuple[int, int], data_root: Optional[str], count: int = 30) -> List[np.ndarray]:
    """RGB uint8 frames of ``size``: CamVid val images (resized when their size differs), else
    generated street scenes sliding sideways like a drive."""
    h, w = size
    if data_root:
        from PIL import Image as PILImage

        from hmseg_core.data.datasets import camvid_pairs

        out = []
        for img, _ in camvid_pairs(Path(data_root), "val")[:count]:
            im = PILImage.open(img).convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), PILImage.BILINEAR)
            out.append(np.asarray(im, dtype=np.uint8))
        return out
    from hmseg_core.data.synthetic import render_street

    rng = np.random.default_rng(0)
    return [render_street(rng, h, w, shift=i / count)[0] for i in range(count)]


# ---------------------------------------------------------------------------- the camera (its own process)
def camera_main(spec: Dict[str, Any]) -> int:
    """Publish frames at ``rate`` Hz for ``seconds`` once the node subscribes; print what was sent as JSON."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from hmseg_ros.image_conv import numpy_to_image

    frames = load_frames(tuple(spec["size"]), spec["data_root"])
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("bench_camera", context=ctx)
    qos = qos_profile_sensor_data if spec["qos"] == "sensor_data" else QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, spec["topic"], qos)
    msgs = [numpy_to_image(f, "rgb8") for f in frames]
    deadline = time.monotonic() + 120.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    period, sent = 1.0 / spec["rate"], 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < spec["seconds"]:
        msg = msgs[sent % len(msgs)]
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "bench_camera"
        pub.publish(msg)
        sent += 1
        pause = t0 + sent * period - time.monotonic()  # absolute schedule: no drift
        if pause > 0:
            time.sleep(pause)
    print(json.dumps({"published": sent, "seconds": time.monotonic() - t0}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)
    return 0


# ---------------------------------------------------------------------------- the node
def _path_env() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def ros_env(tmp: Path) -> Dict[str, str]:
    """This process's environment for the node and camera: ROS logs in ``tmp``, loopback discovery,
    a domain of this run's own unless one is set."""
    env = dict(os.environ, PATH=_path_env(), PYTHONUNBUFFERED="1", ROS_LOG_DIR=str(tmp / "ros_log"))
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return env


def colcon_env(tmp: Path, env: Dict[str, str]) -> Dict[str, str]:
    """``env`` after colcon-building this tree's hmseg_ros in a workspace under ``tmp`` and sourcing it
    (unchanged when there is no colcon: a distro with hmseg_ros built and sourced)."""
    colcon = shutil.which("colcon", path=env["PATH"])
    if colcon is None:
        return env
    ws = tmp / "colcon_ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "hmseg").symlink_to(ROOT, target_is_directory=True)
    env = dict(env, AMENT_PREFIX_PATH=os.pathsep.join(p for p in (env.get("AMENT_PREFIX_PATH", ""), sys.prefix) if p))
    res = subprocess.run([colcon, "build", "--packages-select", "hmseg_ros"], cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"colcon build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    out = subprocess.run(["bash", "-c", f'source "{ws / "install" / "setup.bash"}" >/dev/null && env -0'], env=env,
                         capture_output=True, timeout=60, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def node_params(args, tmp: Path) -> Path:
    p = dict(input_topic=CAMERA_TOPIC, expected_height=args.size[0], expected_width=args.size[1], threads=args.threads,
             latency_budget_ms=float(args.budget), measure_iterations=args.measure_iterations, qos=args.qos,
             latency_cache=args.latency_cache or "", diagnostics_period_s=1.0)
    import yaml

    p.update(args.node_param)
    path = tmp / "segment_params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": p}}))
    return path


def start_node(args, env: Dict[str, str], params: Path, log: Path) -> subprocess.Popen:
    """``ros2 launch hmseg_ros segment.launch.py`` (or the console script with ``--no-launch``) in a session of its own."""
    if args.no_launch:
        exe = shutil.which("hmseg_segment", path=env["PATH"])
        cmd = [exe] if exe else [sys.executable, "-m", "hmseg_ros.segment_node"]
        cmd += ["--ros-args", "--params-file", str(params)]
        for name in ("zoo", "model", "backend"):
            if getattr(args, name):
                cmd += ["-p", f"{name}:={getattr(args, name)}"]
    else:
        ros2 = shutil.which("ros2", path=env["PATH"])
        if ros2 is None:
            raise RuntimeError("the `ros2` command is not on PATH (a ROS 2 distro, or ../shared/ros2-tooling/install.sh); or use --no-launch")
        cmd = [ros2, "launch", "hmseg_ros", "segment.launch.py", f"params_file:={params}"]
        cmd += [f"{name}:={getattr(args, name)}" for name in ("zoo", "model", "backend") if getattr(args, name)]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> Optional[int]:
    """End ``proc`` as Ctrl-C does, then kill what is left of its session."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------- this process: network alone, subscriber
def time_network(checkpoint: str, backend: str, frames: List[np.ndarray], threads: int, runs: int, rate: float, warmup: int = 5) -> Dict[str, Any]:
    """``Segmenter.segment`` over ``frames`` here after ``warmup`` calls, back to back and then paced
    at the camera's ``rate`` (a sleep until the next frame is due, as the node idles between frames:
    caches and cores go cold, so each frame takes longer): wall time and its network part."""
    import torch

    from hmseg_core.runtime import Segmenter

    if threads:
        torch.set_num_threads(threads)
    seg = Segmenter(checkpoint, backend, size=frames[0].shape[:2])  # a checkpoint on a compiled backend: its cached package
    for i in range(warmup):
        seg.segment(frames[i % len(frames)])
    out: Dict[str, Any] = {"backend": seg.backend_name, "runs": runs, "rate_hz": rate}
    for mode, period in (("", 0.0), ("paced_", 1.0 / rate)):
        total, net = [], []
        t0 = time.monotonic()
        for i in range(runs):
            t = time.perf_counter()
            _, timings = seg.segment(frames[i % len(frames)])
            total.append(1e3 * (time.perf_counter() - t))
            net.append(timings.inference)
            pause = t0 + (i + 1) * period - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        out[f"{mode}segment_ms"], out[f"{mode}inference_ms"] = percentiles(total), percentiles(net)
    return out


def percentiles(ms: List[float]) -> Optional[Dict[str, float]]:
    if not ms:
        return None
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


class Probe:
    """Subscribes to the node's labels (stamp -> arrival on this clock), ``~/variant`` and ``/diagnostics``."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from hmseg_ros.node_main import spin_in_background

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_probe", context=self.context)
        self.labels: List[Tuple[float, float]] = []  # (arrival, monotonic; stamp -> arrival ms)
        self.variant: Optional[Dict] = None
        self.diagnostics: Optional[Dict[str, str]] = None
        self.stage_diagnostics: Optional[Dict[str, str]] = None  # the last one with stage timings (frames within its window)
        self.diagnostics_log: List[Tuple[float, Dict[str, str]]] = []  # (arrival, monotonic; values) of each one with stages
        self._lock = threading.Lock()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Image, f"/{NODE}/labels", self._on_labels, reliable)
        self.node.create_subscription(String, f"/{NODE}/variant", lambda m: setattr(self, "variant", json.loads(m.data)), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = spin_in_background(self.executor)

    def _on_labels(self, msg) -> None:
        now = self.node.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.labels.append((time.monotonic(), (now - stamp) / 1e6))

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            if s.name.endswith(DIAG_NAME):
                self.diagnostics = {kv.key: kv.value for kv in s.values}
                if stages_from(self.diagnostics):
                    self.stage_diagnostics = self.diagnostics
                    with self._lock:
                        self.diagnostics_log.append((time.monotonic(), self.diagnostics))

    def close(self) -> None:
        import rclpy

        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def stages_from(diag: Optional[Dict[str, str]]) -> Dict[str, Dict[str, Optional[float]]]:
    """``stage_<name>_p50_ms`` / ``_p95_ms`` of a /diagnostics status -> name -> {p50_ms, p95_ms}."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for key, value in (diag or {}).items():
        if key.startswith("stage_") and key.endswith(("_p50_ms", "_p95_ms")):
            name, q = key[len("stage_"):-len("_p50_ms")], key[-6:-3]
            out.setdefault(name, {})[f"{q}_ms"] = None if value == "n/a" else float(value)
    return out


def windowed_p95(labels: List[Tuple[float, float]], diagnostics: List[Tuple[float, Dict[str, str]]], start: float,
                 span_s: float = 5.0) -> Dict[str, Optional[float]]:
    """The tail, stage by stage, over the same frames: for every /diagnostics status after ``start``
    (each covers the node's last ``span_s`` seconds), the p95 of stamp -> labels of the labels that
    arrived here in those seconds beside the node's own p95 of each stage; the median over the
    windows of each. The node's stages cover its last window only in its final status; this puts
    the whole run's tail where it arose: before or in the node (``stamp_to_publish``), or after it."""
    rows: Dict[str, List[float]] = {"stamp_to_labels": []}
    for t, diag in diagnostics:
        if t - span_s < start:
            continue
        here = [ms for at, ms in labels if t - span_s <= at <= t]
        if len(here) < 20:
            continue
        rows["stamp_to_labels"].append(float(np.percentile(here, 95)))
        for name, st in stages_from(diag).items():
            if st.get("p95_ms") is not None:
                rows.setdefault(name, []).append(st["p95_ms"])
    return {name: (float(np.median(v)) if v else None) for name, v in rows.items()} | {"windows": len(rows["stamp_to_labels"])}


def _wait(pred, timeout: float, proc: Optional[subprocess.Popen] = None, period: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(pred())
        time.sleep(period)
    return bool(pred())


# ---------------------------------------------------------------------------- where the CPU goes
def _stat(path: Path) -> Optional[Tuple[str, List[str]]]:
    """A /proc ``stat`` file: (the name, the fields after it, from the state on); None when it has gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def cpu_snapshot(pids: Dict[str, List[int]]) -> Dict[Tuple[str, str], int]:
    """CPU ticks so far (utime + stime) of every thread of the processes in ``pids`` (role -> pids),
    keyed by (role, "thread name/thread id")."""
    out: Dict[Tuple[str, str], int] = {}
    for role, group in pids.items():
        for pid in group:
            for task in Path(f"/proc/{pid}/task").glob("*"):
                got = _stat(task / "stat")
                if got is not None:
                    name, fields = got
                    out[(role, f"{name}/{task.name}")] = int(fields[11]) + int(fields[12])
    return out


def session_pids(leader: int) -> List[int]:
    """The processes of the session ``leader`` started (``ros2 launch`` and the node it runs)."""
    out = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        got = _stat(path)
        if got is not None and int(got[1][3]) == leader:  # the session id
            out.append(int(path.parent.name))
    return out


def cpu_use(before: Dict[Tuple[str, str], int], after: Dict[Tuple[str, str], int], seconds: float) -> Dict[str, Any]:
    """Per role and per thread: the share of one core used between two snapshots, in %."""
    hz = os.sysconf("SC_CLK_TCK")
    pct = {key: 100.0 * (ticks - before.get(key, 0)) / hz / seconds for key, ticks in after.items()}
    roles: Dict[str, float] = {}
    for (role, _), v in pct.items():
        roles[role] = roles.get(role, 0.0) + v
    threads = {f"{role}: {name}": v for (role, name), v in sorted(pct.items(), key=lambda kv: -kv[1])}
    return {"seconds": seconds, "roles_pct": roles, "threads_pct": threads}


# ---------------------------------------------------------------------------- the run
def run(args) -> Dict[str, Any]:
    from hmseg_core.machine import cpu_model, usable_cores

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started as a background job: the node must still hear Ctrl-C
        signal.signal(signal.SIGINT, signal.default_int_handler)

    tmp = Path(tempfile.mkdtemp(prefix="bench_ros_pipeline_"))
    env = ros_env(tmp)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})  # the probe in this process too
    if not args.no_launch:
        env = colcon_env(tmp, env)
    if args.fresh_cache:  # a new machine: no exported packages, compiled libraries, latency measurements or user records
        env["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    frames = load_frames(args.size, args.data_root)
    node_log = tmp / "node.log"
    probe = Probe()
    launched = time.monotonic()
    node = start_node(args, env, node_params(args, tmp), node_log)
    camera: Optional[subprocess.Popen] = None
    try:
        if not _wait(lambda: probe.variant is not None, args.start_timeout, node):
            raise RuntimeError(f"the node announced no variant within {args.start_timeout:.0f} s:\n{node_log.read_text()[-4000:]}")
        ready_s = time.monotonic() - launched
        variant = probe.variant
        if args.model:
            checkpoint = args.model
        else:
            from hmseg_core.runtime import ModelZoo, default_zoo_path

            checkpoint = str(ModelZoo.load(args.zoo or default_zoo_path()).get(variant["variant"]).checkpoint)
        network = time_network(checkpoint, variant["backend"], frames, args.threads, args.network_runs, args.rate)

        spec = dict(topic=CAMERA_TOPIC, rate=args.rate, seconds=args.seconds, size=list(args.size), data_root=args.data_root, qos=args.qos)
        cam_env = dict(env, OMP_NUM_THREADS="1")
        camera = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--camera-child", json.dumps(spec)], env=cam_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        roles = lambda: {"node": session_pids(node.pid), "camera": [camera.pid], "this process": [os.getpid()]}  # noqa: E731
        _wait(lambda: bool(probe.labels), 120.0, camera)  # frames flow: the camera's start-up (loading frames) is not counted
        cpu_from, cpu_t0 = cpu_snapshot(roles()), time.monotonic()
        _wait(lambda: camera.poll() is not None, max(1.0, args.seconds - 2.0))  # ... nor its exit
        cpu = cpu_use(cpu_from, cpu_snapshot(roles()), time.monotonic() - cpu_t0)
        out, err = camera.communicate(timeout=args.seconds + 180)
        if camera.returncode != 0:
            raise RuntimeError(f"the camera failed ({camera.returncode}):\n{err[-3000:]}")
        sent = json.loads(out.strip().splitlines()[-1])
        ended = time.monotonic()
        time.sleep(1.5)  # labels still in flight, and one more diagnostics period: the counters after the last frame
    finally:
        if camera is not None and camera.poll() is None:
            stop(camera)
        code = stop(node)
        probe.close()
    labels = list(probe.labels)
    diag = probe.diagnostics or {}
    first = labels[0][0] if labels else ended
    start = first + min(args.warmup_s, max(0.0, (ended - first) / 2))
    window = [ms for t, ms in labels if t >= start]
    span = (max(t for t, _ in labels) - start) if window else 0.0
    count = lambda k: int(diag[k]) if k in diag else None  # noqa: E731
    report = {
        "cpu": cpu_model(), "cores": usable_cores(), "threads": args.threads, "rate_hz": args.rate, "seconds": args.seconds,
        "size": f"{args.size[0]}x{args.size[1]}", "frames": "camvid val" if args.data_root else "generated street scenes",
        "launch": "console script" if args.no_launch else "ros2 launch", "variant": variant["variant"], "backend": variant["backend"],
        "network_only": network,
        "ready_s": ready_s, "fresh_cache": bool(args.fresh_cache),
        "stamp_to_labels_ms": percentiles(window),
        "output_hz": (len(window) - 1) / span if span > 0 and len(window) > 1 else 0.0,
        "labels_received": len(labels), "camera_published": sent["published"],
        "node": {"received": count("frames_received"), "processed": count("frames_processed"), "dropped": count("frames_dropped"),
                 "node_overhead_p95_ms": None if diag.get("node_overhead_p95_ms", "n/a") == "n/a" else float(diag["node_overhead_p95_ms"])},
        "stages_ms": stages_from(probe.stage_diagnostics),  # the camera process may take longer to exit than the window
        "windowed_p95_ms": windowed_p95(labels, list(probe.diagnostics_log), start),
        "cpu_use": cpu,
        "node_exit": code,
        "node_log": str(node_log),
    }
    rec = report["node"]["received"]
    report["node"]["dropped_pct"] = 100.0 * report["node"]["dropped"] / rec if rec else None
    return report


def markdown(rep: Dict[str, Any]) -> str:
    f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    net, e2e, node = rep["network_only"], rep["stamp_to_labels_ms"] or {}, rep["node"]
    row = lambda name, d: f"| {name} | " + " | ".join(f(d.get(q)) for q in ("p50", "p95", "p99", "max")) + " |"  # noqa: E731
    lines = [
        f"# ROS pipeline: {rep['variant']} on {rep['backend']}, {rep['size']} at {rep['rate_hz']:g} Hz for {rep['seconds']:g} s ({rep['launch']})",
        "", f"CPU: {rep['cpu']} ({rep['cores']} cores usable, {rep['threads']} inference threads); frames: {rep['frames']}", "",
        "| measure | p50 ms | p95 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: | ---: |",
        row("network alone (Segmenter.segment, this process)", net["segment_ms"]),
        row("of which the network call", net["inference_ms"]),
        row(f"network alone, paced at {rep['rate_hz']:g} Hz (idle between frames, as in the node)", net["paced_segment_ms"]),
        row("stamp -> labels (camera process -> node -> here)", e2e),
        "",
        f"Start: {rep['ready_s']:.1f} s from launch to the node's variant announcement (ready for the first frame)"
        + (", on a fresh cache (nothing exported, compiled or measured before)." if rep["fresh_cache"] else "."),
        "",
        f"Output {rep['output_hz']:.1f} Hz; camera published {rep['camera_published']}, node received {node['received']}, "
        f"processed {node['processed']}, dropped {node['dropped']}"
        + (f" ({node['dropped_pct']:.1f} %)" if node.get("dropped_pct") is not None else "")
        + f"; labels received here {rep['labels_received']}; node overhead added to budgets: p95 {f(node['node_overhead_p95_ms'])} ms.",
        "", "Node stages (its last /diagnostics with frames in its 5 s window):", "",
        "| stage | p50 ms | p95 ms |", "| --- | ---: | ---: |",
    ]
    from hmseg_core.runtime.stream import stage_order

    for name in stage_order(rep["stages_ms"]):
        s = rep["stages_ms"][name]
        lines.append(f"| {name} | {f(s.get('p50_ms'))} | {f(s.get('p95_ms'))} |")
    win = rep["windowed_p95_ms"]
    if win.get("windows"):
        lines += ["", f"The tail per 5 s window, over the same frames (median over {win['windows']} windows of each window's p95):", "",
                  "| measure | p95 ms |", "| --- | ---: |", f"| stamp -> labels (here) | {f(win['stamp_to_labels'])} |"]
        lines += [f"| node: {name} | {f(win[name])} |" for name in stage_order([k for k in win if k not in ("windows", "stamp_to_labels")])]
    use = rep["cpu_use"]
    lines += ["", f"CPU use while frames flowed ({use['seconds']:.0f} s; 100 % = one core of {rep['cores']}): "
              + ", ".join(f"{r} {v:.0f} %" for r, v in use["roles_pct"].items()), "",
              "| process: thread | CPU % |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in use["threads_pct"].items() if v >= 0.5]
    return "\n".join(lines)


def _size(text: str) -> Tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _node_param(text: str) -> Tuple[str, Any]:
    """``--node-param NAME=VALUE``: the parameter's name and its value read as YAML."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    import yaml

    return name.strip(), yaml.safe_load(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the camera publishes")
    p.add_argument("--data-root", default=None, help="CamVid root: publish its val frames (default: generated street scenes)")
    p.add_argument("--size", type=_size, default=(360, 480), help="frame size HxW")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--zoo", default="", help="model zoo index (default: the zoo shipped with hmseg)")
    g.add_argument("--model", default="", help="one checkpoint or package instead of a zoo")
    p.add_argument("--backend", default="auto")
    p.add_argument("--budget", type=float, default=0.0, help="latency_budget_ms for the node (0: most accurate)")
    p.add_argument("--threads", type=int, default=2, help="inference threads, in the node and for the network-only timing")
    p.add_argument("--qos", choices=("sensor_data", "reliable"), default="sensor_data", help="camera and node input QoS")
    p.add_argument("--no-launch", action="store_true", help="run the node's console script instead of ros2 launch (no colcon build)")
    p.add_argument("--network-runs", type=int, default=100, help="timed Segmenter.segment calls for each network-only figure")
    p.add_argument("--measure-iterations", type=int, default=20, help="the node's measure_iterations")
    p.add_argument("--latency-cache", default="", help="the node's latency cache (default: its own)")
    p.add_argument("--fresh-cache", action="store_true",
                   help="start as on a new machine: an empty ~/.cache/hmseg (no exported packages, libraries, measurements)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="labels in the first seconds are not counted")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the node to select its variant")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--node-param", type=_node_param, action="append", default=[], metavar="NAME=VALUE",
                   help="another parameter of the node (repeatable), e.g. overhead_iterations=0")
    p.add_argument("--camera-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.camera_child:
        return camera_main(json.loads(args.camera_child))
    if args.model:
        args.model = str(Path(args.model).resolve())
    if args.zoo:
        args.zoo = str(Path(args.zoo).resolve())
    rep = run(args)
    print(markdown(rep))
    if args.json:
        from hmseg_core.io import atomic_write_json

        atomic_write_json(args.json, rep, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
