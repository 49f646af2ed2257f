"""The backends on a package's ONNX exports: OpenVINO (the same labels as torch, the whole frame, clear
errors), and ONNX Runtime's per-node profile."""

import numpy as np
import pytest
import torch
from torch import nn

from hmseg_core.checkpoint import atomic_save, make_checkpoint
from hmseg_core.registry import create_model
from hmseg_core.runtime import BackendUnavailable, Segmenter

ov = pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'hmseg[openvino]')")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'hmseg[onnx]')")

from hmseg_core.deploy.export import ExportOptions, export_package  # noqa: E402
from hmseg_core.deploy.package import PackageError  # noqa: E402

SIZE = (64, 96)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mrms_tiny", 11).eval()
    for m in model.modules():  # a fresh network's logits are ~1e-5 apart: argmax would compare noise
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    names = [f"class{i}" for i in range(11)]
    palette = [[i * 20, 255 - i * 20, i * 7] for i in range(11)]
    path = tmp_path_factory.mktemp("ov") / "tiny.pt"
    atomic_save(make_checkpoint(model, names, palette, [0.4, 0.4, 0.4], [0.25, 0.25, 0.25], {}), path)
    return path


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    """An ONNX-only package: no TVM library is compiled."""
    out = tmp_path_factory.mktemp("ov") / "pkg"
    export_package(checkpoint, out, ExportOptions(input_size=SIZE, targets=()), log=lambda s: None)
    return out


def _images(n, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_fp32_labels_and_logits_equal_torch(package):
    ref = Segmenter(package, backend="torch")
    seg = Segmenter(package, backend="openvino", whole_frame=False)
    assert seg.backend_name == "openvino" and not seg.runs_whole_frame(SIZE)
    for rgb in _images(3):
        np.testing.assert_array_equal(seg(rgb), ref(rgb))
    other = _images(1, (48, 80), seed=5)[0]  # another size runs at the package's, labels come back at its own
    assert seg(other).shape == (48, 80)
    x = torch.rand(1, 3, *SIZE)
    torch.testing.assert_close(seg.backend.forward(x), ref.backend.forward(x), rtol=1e-3, atol=1e-4)


def test_the_whole_frame_runs_in_one_call_and_agrees(package):
    ref = Segmenter(package, backend="torch")
    seg = Segmenter(package, backend="openvino")
    assert seg.runs_whole_frame(SIZE)
    for rgb in _images(3, seed=1):
        labels, timings = seg.segment(rgb)
        assert timings.preprocess == 0.0 and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, ref(rgb))


def test_bf16_is_an_explicit_backend_of_its_own(package):
    ref = Segmenter(package, backend="torch")
    seg = Segmenter(package, backend="openvino-bf16")
    assert seg.backend.precision == "bf16"
    same = np.mean([np.mean(seg(rgb) == ref(rgb)) for rgb in _images(3, seed=2)])
    assert same > 0.9  # bf16 moves some labels (about 1 % on CamVid val), never most of them


def test_errors_name_the_fix(package, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="give the frame size, a fixed resize policy, or a package .*hmseg-core export"):
        Segmenter(checkpoint, backend="openvino")  # a checkpoint runs as its package, exported at a size it does not know
    with pytest.raises(BackendUnavailable, match="runs on the CPU"):
        Segmenter(package, backend="openvino", device="cuda")
    bare = tmp_path / "bare"
    export_package(checkpoint, bare, ExportOptions(input_size=SIZE, targets=(), onnx=False), log=lambda s: None)
    with pytest.raises(PackageError, match="no ONNX model"):
        Segmenter(bare, backend="openvino")


def test_auto_measures_every_backend_once_and_runs_the_fastest_that_agrees(package, tmp_path, monkeypatch):
    from hmseg_core.runtime import LatencyCache, candidate_backends, choose_backend
    from hmseg_core.runtime.backends.openvino_backend import OpenVINOBackend

    names = candidate_backends(package)
    assert names[0] == "torch" and "openvino" in names and "openvino-bf16" not in names  # bf16 only by name
    cache = LatencyCache(tmp_path / "lat.json")
    choice = choose_backend(package, SIZE, cache=cache, iterations=3, warmup=1)
    assert [t.backend for t in choice.candidates] == names and not any(t.cached for t in choice.candidates)
    assert all(t.agreement == 1.0 for t in choice.candidates)  # FP32 backends give torch's labels exactly
    assert choice.chosen.latency.p50 == min(t.latency.p50 for t in choice.candidates)
    assert Segmenter(package, latency_cache=cache).backend_name == choice.backend  # auto reads the same cache

    def no_segmenter(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr("hmseg_core.runtime.segmenter.Segmenter", no_segmenter)
    again = choose_backend(package, SIZE, cache=cache, iterations=3)
    assert again.backend == choice.backend and all(t.cached for t in again.candidates)
    monkeypatch.undo()

    # a backend whose labels differ from torch's is never chosen, however fast
    monkeypatch.setattr(OpenVINOBackend, "labels", lambda self, rgb: np.zeros(rgb.shape[:2], np.uint8))
    fresh = choose_backend(package, SIZE, cache=LatencyCache(tmp_path / "other.json"), iterations=3, warmup=1)
    ov_row = next(t for t in fresh.candidates if t.backend == "openvino")
    assert not ov_row.agrees and fresh.backend != "openvino" and "disagrees" in fresh.describe()


def test_eval_on_a_backend_gives_the_mIoU_of_the_deployed_path(package, camvid_fixture, tmp_path):
    import json

    from hmseg_core.cli import main

    reports = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}.json"
        assert main(["eval", "--checkpoint", str(package), "--data-root", str(camvid_fixture), "--backend", backend,
                     "--report", str(out)]) == 0
        reports[backend] = json.loads(out.read_text())
    assert reports["openvino"]["backend"] == "openvino" and reports["torch"]["images"] == 3
    assert reports["openvino"]["confusion_matrix"] == reports["torch"]["confusion_matrix"]
    assert main(["eval", "--checkpoint", str(package), "--data-root", str(camvid_fixture), "--backend", "openvino",
                 "--input-size", "32x48"]) == 2


def test_the_frame_graph_normalises_nchw_and_takes_the_argmax_over_nhwc(package):
    import onnx

    graph = onnx.load(str(package / "labels.onnx")).graph
    first = next(n for n in graph.node if graph.input[0].name in n.input)
    assert first.op_type == "Transpose"  # ORT broadcasts over a last axis of 3 element by element (FramePath)
    (argmax,) = [n for n in graph.node if n.op_type == "ArgMax"]
    axis = next(a.i for a in argmax.attribute if a.name == "axis")
    assert axis in (-1, 3)  # OpenVINO's TopK over NCHW channels cost half the frame


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_profile_lists_every_node_of_the_frame_graph(package, backend, capsys):
    from hmseg_core.cli import main
    from hmseg_core.deploy.bench import profile_onnxruntime, profile_openvino

    profile = {"onnxruntime": profile_onnxruntime, "openvino": profile_openvino}[backend]
    frame_ms, nodes = profile(package, runs=4, warmup=1, threads=1)
    ops = [n.name.rsplit(" (", 1)[1] for n in nodes]
    assert any(op.startswith("Conv") for op in ops) and any("ArgM" in op or "TopK" in op for op in ops)
    assert all(n.calls == 1 for n in nodes)  # the frame graph has no loops: every node runs once a frame
    assert [n.ms for n in nodes] == sorted((n.ms for n in nodes), reverse=True) and frame_ms > 0
    assert 0 < sum(n.ms for n in nodes) <= frame_ms * 1.05
    assert main(["profile", str(package), "--backend", backend, "--runs", "2", "--threads", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(") | 1 |") == 3 and "more |" in out
