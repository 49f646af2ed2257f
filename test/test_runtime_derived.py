"""A checkpoint on the compiled backends: its package exported once into the user's cache, the same
labels as torch, and ``auto`` weighing ONNX Runtime and OpenVINO for it (and TVM only when the records cover it)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ros_testing import tiny_checkpoint

from hmseg_core.runtime import LatencyCache, ResizePolicy, Segmenter, candidate_backends, choose_backend
from hmseg_core.runtime.derived import derived_package, derived_path, packages_root

pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'hmseg[onnx]')")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install 'hmseg[onnx]')")

SIZE = (48, 64)


@pytest.fixture()
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path / "tiny.pt", seed=4)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _frames(n, size=SIZE):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_a_checkpoint_on_onnxruntime_runs_its_cached_package_with_torchs_labels(ckpt, tmp_path):
    logs = []
    seg = Segmenter(ckpt, "onnxruntime", size=SIZE, log=logs.append)
    package = derived_path(ckpt, SIZE)
    assert seg.source == str(package) and package.parent == packages_root() and str(tmp_path / "cache") in str(package)
    assert len(logs) == 1 and "exporting its ONNX graphs at 48x64" in logs[0] and str(package) in logs[0]
    assert seg.runs_whole_frame(SIZE)
    ref = Segmenter(ckpt, "torch")
    for rgb in _frames(3):
        np.testing.assert_array_equal(seg(rgb), ref(rgb))
    # no temporary folder is left beside it, and the next start reuses it without exporting
    assert [p.name for p in packages_root().iterdir()] == [package.name]
    stamp = os.stat(package / "metadata.json").st_mtime_ns
    logs.clear()
    Segmenter(ckpt, "onnxruntime", size=SIZE, log=logs.append)
    assert logs == [] and os.stat(package / "metadata.json").st_mtime_ns == stamp


def test_the_network_size_follows_the_resize_policy_and_a_native_one_needs_the_frame_size(ckpt):
    fixed = Segmenter(ckpt, "onnxruntime", ResizePolicy("fixed", (32, 48)))
    assert fixed.source == str(derived_path(ckpt, (32, 48)))
    assert fixed(_frames(1)[0]).shape == SIZE  # labels at the frame's size
    with pytest.raises(ValueError, match="give the frame size, a fixed resize policy, or a package"):
        Segmenter(ckpt, "onnxruntime")


def test_a_damaged_cached_package_is_exported_again(ckpt):
    path = derived_package(ckpt, SIZE)
    (path / "labels.onnx").unlink()
    again = derived_package(ckpt, SIZE)
    assert again == path and (path / "labels.onnx").is_file()
    np.testing.assert_array_equal(Segmenter(ckpt, "onnxruntime", size=SIZE)(_frames(1)[0]), Segmenter(ckpt, "torch")(_frames(1)[0]))


def test_auto_weighs_the_compiled_backends_for_a_checkpoint_given_the_frame_size(ckpt, tmp_path):
    assert candidate_backends(ckpt) == ["torch"]  # no frame size: nothing to export at
    names = candidate_backends(ckpt, SIZE)
    assert names[0] == "torch" and "onnxruntime" in names
    assert "tvm" not in names  # no records cover this network: an untuned compile is never started for auto
    cache = LatencyCache(tmp_path / "lat.json")
    choice = choose_backend(ckpt, SIZE, cache=cache, iterations=3, warmup=1)
    assert [t.backend for t in choice.candidates] == names
    assert all(t.agreement == 1.0 for t in choice.candidates)
    assert choice.chosen.latency.p50 == min(t.latency.p50 for t in choice.candidates)
    seg = Segmenter(ckpt, latency_cache=cache, size=SIZE)  # auto with a frame size: the same measured choice
    assert seg.backend_name == choice.backend


def test_tvm_joins_auto_when_the_records_cover_every_kernel(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("tvm", reason="TVM not installed (pip install 'hmseg[tvm]')")
    from hmseg_core.checkpoint import load_checkpoint
    from hmseg_core.deploy import records
    from hmseg_core.deploy.targets import host_target, isa_family
    from hmseg_core.tensor_layouts import DEFAULT_LAYOUT

    genotype = load_checkpoint(ckpt)["genotype"]
    user = records.default_tuning_db() / isa_family(host_target())
    user.mkdir(parents=True)
    (user / records.WORKLOADS).write_text("")  # a folder with records (their content is not read here)
    (user / records.RECORDS).write_text("")
    assert "tvm" not in candidate_backends(ckpt, SIZE)
    records.add_coverage(user, [records.network_id(genotype, (32, 48), DEFAULT_LAYOUT)])  # another size: still not
    assert "tvm" not in candidate_backends(ckpt, SIZE)
    records.add_coverage(user, [records.network_id(genotype, SIZE, DEFAULT_LAYOUT)])
    assert records.covered([user]) == {records.network_id(genotype, s, DEFAULT_LAYOUT) for s in ((32, 48), SIZE)}
    assert "tvm" in candidate_backends(ckpt, SIZE)
    monkeypatch.setenv("HMSEG_COMPILE_ON_FIRST_USE", "0")
    assert "tvm" not in candidate_backends(ckpt, SIZE)
