"""Export -> compile -> run on a tiny network, the package format, and every bad-package error path."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_testing import TwoConvs
from torch import nn

from hmseg_core.checkpoint import atomic_save, make_checkpoint
from hmseg_core.deploy.fold import fold_batchnorm
from hmseg_core.registry import create_model
from hmseg_core.runtime import Segmenter

SIZE = (64, 96)
CLASSES = [f"class{i}" for i in range(11)]
PALETTE = [[i * 20, 255 - i * 20, i * 7] for i in range(11)]


def _random_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)


def test_fold_batchnorm_keeps_outputs_and_removes_every_bn():
    torch.manual_seed(0)
    net = create_model("mrms_tiny", 11, boosting=False).eval()
    _random_bn(net)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "folding must not touch the source model"
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_refuses_a_lone_batchnorm():
    with pytest.raises(ValueError, match="cannot fold"):
        fold_batchnorm(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))


# ---------------------------------------------------------------------------- with TVM
pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install 'hmseg[tvm]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'hmseg[onnx]')")

from hmseg_core.deploy.export import ExportOptions, export_package  # noqa: E402
from hmseg_core.deploy.package import FORMAT_VERSION, ModelPackage, PackageError  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = create_model("mrms_tiny", 11)
    _random_bn(net)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    atomic_save(make_checkpoint(net, CLASSES, PALETTE, [0.4, 0.45, 0.5], [0.25, 0.25, 0.25], best_miou=0.5), path)
    return path


@pytest.fixture(scope="module")
def package_dir(checkpoint, tmp_path_factory):
    """One export (zero tuning trials, host LLVM, ONNX) shared by the tests; copies get damaged."""
    out = tmp_path_factory.mktemp("pkg") / "tiny"
    export_package(checkpoint, out, ExportOptions(input_size=SIZE), log=lambda s: None)
    return out


@pytest.fixture
def package_copy(package_dir, tmp_path):
    return shutil.copytree(package_dir, tmp_path / "copy")


def _images(n=3, size=SIZE):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def _edit_metadata(root, edit):
    path = root / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_backend_labels_equal_torch(package_dir, backend):
    ref = Segmenter(package_dir, backend="torch")
    seg = Segmenter(package_dir, backend=backend)
    network_only = Segmenter(package_dir, backend=backend, whole_frame=False)
    assert seg.runs_whole_frame(SIZE) and not network_only.runs_whole_frame(SIZE) and not ref.runs_whole_frame(SIZE)
    max_diff = 0.0
    for rgb in _images():
        labels, timings = seg.segment(rgb)  # the whole frame in one call of the library / ONNX model
        expected = ref(rgb)
        assert labels.shape == rgb.shape[:2] and labels.dtype == np.uint8
        assert (labels == expected).mean() >= 0.999
        assert timings.inference > 0 and timings.preprocess == timings.postprocess == 0.0
        whole = labels
        labels, timings = network_only.segment(rgb)
        assert (labels == expected).mean() >= 0.999 and timings.preprocess > 0 and timings.postprocess > 0
        assert np.array_equal(whole, labels)  # the same arithmetic, in the graph or around it
        x = torch.randn(1, 3, *SIZE)
        max_diff = max(max_diff, (seg.backend.forward(x) - ref.backend.forward(x)).abs().max().item())
    assert max_diff < 1e-3, f"max logit difference {max_diff}"


def test_channels_last_library_labels_equal_torch_and_leaves_the_exported_module_alone(checkpoint, tmp_path):
    from hmseg_core.deploy.export import deploy_network, export_program, to_relax
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import TuningOptions, lower, per_frame_module

    mod = to_relax(export_program(deploy_network(torch.load(checkpoint, weights_only=True)), SIZE))
    before = mod["main"].script()
    nhwc = lower(mod, host_target(), "NHWC")
    assert mod["main"].script() == before  # other targets of the same export still see NCHW
    kernels = [gv.name_hint for gv in per_frame_module(nhwc).functions]  # main's kernels; weight transposes run once at load
    # ReLU6 rewritten for the layout pass: no clip kernel, and no transpose between the convolutions
    assert not any("clip" in k for k in kernels)
    assert sum("transpose" in k for k in kernels) <= 2, kernels

    out = tmp_path / "nhwc"
    export_package(checkpoint, out, ExportOptions(input_size=SIZE, onnx=False, tuning=TuningOptions(layout="NHWC")), log=lambda s: None)
    assert ModelPackage.load(out).libraries[0]["layout"] == "NHWC"
    ref, seg = Segmenter(out, backend="torch"), Segmenter(out, backend="tvm")
    for rgb in _images():
        assert (seg(rgb) == ref(rgb)).mean() >= 0.999
    x = torch.randn(1, 3, *SIZE)
    assert (seg.backend.forward(x) - ref.backend.forward(x)).abs().max().item() < 1e-3


def test_whole_frame_upsamples_inside_the_argmax(checkpoint):
    from hmseg_core.deploy.export import FramePath, deploy_network, export_frame_program, export_program, parameter_names, to_relax, with_frame_function
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import lower, per_frame_module

    ckpt = torch.load(checkpoint, weights_only=True)
    net = deploy_network(ckpt)
    program = export_program(net, SIZE)
    frame = export_frame_program(FramePath(net, ckpt["mean"], ckpt["std"]).eval(), SIZE)
    lowered = per_frame_module(lower(with_frame_function(to_relax(program), frame, parameter_names(program)), host_target()))
    kernels = {gv.name_hint for gv in lowered.functions}
    # the width pass at the logits' height, then one kernel blends rows and reduces: no full-size class scores
    assert {"upsample_rows", "upsample_argmax"} <= kernels and not any("argmax" in k and k != "upsample_argmax" for k in kernels)
    assert "upsample_argmax" in lowered["labels"].script() and "upsample_argmax" not in lowered["main"].script()


@pytest.mark.parametrize("mode, align_corners, kernels", [
    ("bilinear", False, {"upsample_rows", "upsample_argmax"}),  # half_pixel: separable
    ("bilinear", True, {"upsample_rows", "upsample_argmax"}),  # align_corners: separable
    ("nearest", None, {"upsample_argmax"}),  # TOPI's interpolation inlined into the argmax
])
def test_upsampling_into_argmax_gives_the_labels_of_the_two_operators(mode, align_corners, kernels):
    import tvm
    from tvm import relax

    from hmseg_core.deploy.export import to_relax
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import lower, per_frame_module

    class Head(nn.Module):
        def forward(self, logits):
            up = nn.functional.interpolate(logits, size=(24, 40), mode=mode, align_corners=align_corners)
            return up.argmax(1).to(torch.uint8)

    logits = torch.randn(1, 5, 6, 10)
    with torch.no_grad():
        program = torch.export.export(Head(), (logits,))
    lowered = lower(to_relax(program), host_target())
    assert kernels <= {gv.name_hint for gv in per_frame_module(lowered).functions}
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm.target.Target(host_target())), tvm.cpu(0))
    labels = vm["main"](tvm.runtime.tensor(logits.numpy())).numpy()
    expected = Head()(logits).numpy()
    assert labels.dtype == np.uint8 and (labels == expected).mean() >= 0.999


def test_unknown_layout_is_refused():
    from hmseg_core.deploy.tuning import TuningOptions

    with pytest.raises(ValueError, match="NCHW, NHWC"):
        TuningOptions(layout="NCHWc")


def test_default_backend_of_a_package_is_the_fastest_measured_and_labels_come_back_at_input_size(package_dir):
    from hmseg_core.runtime import LatencyCache, choose_backend

    choice = choose_backend(package_dir, SIZE, cache=LatencyCache(LatencyCache.default_path()))
    assert {"torch", "tvm", "onnxruntime"} <= {t.backend for t in choice.candidates}
    assert all(t.agrees for t in choice.candidates)
    seg = Segmenter(package_dir)
    assert seg.backend_name == choice.backend
    rgb = _images(1, (50, 70))[0]  # another size: the backend resizes to the compiled size and back
    assert seg(rgb).shape == (50, 70)


def test_metadata_round_trip(package_dir, checkpoint):
    pkg = ModelPackage.load(package_dir)
    meta = pkg.metadata
    ckpt = torch.load(checkpoint, weights_only=True)
    assert meta["format"] == "hmseg-package" and meta["format_version"] == FORMAT_VERSION
    assert meta["genotype"] == ckpt["genotype"]
    assert meta["class_names"] == CLASSES and meta["palette"] == PALETTE
    assert meta["mean"] == pytest.approx([0.4, 0.45, 0.5]) and meta["std"] == pytest.approx([0.25] * 3)
    assert pkg.input_size == SIZE and meta["accuracy"] == {"miou": 0.5}
    (lib,) = pkg.libraries
    assert lib["tvm"] == tvm.__version__ and lib["target"]["kind"] == "llvm" and lib["tuning"]["trials"] == 0
    assert lib["frame"] == "labels" and meta["onnx"]["frame_file"] == "labels.onnx"
    assert set(meta["files"]) == {"checkpoint.pt", "params.npz", "model.onnx", "labels.onnx", lib["file"]}
    seg = Segmenter(package_dir, backend="torch")
    assert seg.class_names == CLASSES and seg.palette == PALETTE and seg.genotype == ckpt["genotype"]
    assert not any(k.startswith("boost.") for k in torch.load(package_dir / "checkpoint.pt", weights_only=True)["model"])


def test_latency_record_round_trip(package_copy):
    from hmseg_core.machine import fingerprint_key
    from hmseg_core.runtime import device_fingerprint

    pkg = ModelPackage.load(package_copy)
    fp = device_fingerprint("tvm", threads=2)
    pkg.record_latency(fp, "64x96", {"median_ms": 1.5, "p95_ms": 2.0})
    pkg.save_metadata()
    again = ModelPackage.load(package_copy).metadata["latency"][fingerprint_key(fp)]
    assert again["fingerprint"] == fp and again["entries"]["64x96"]["median_ms"] == 1.5


# ---------------------------------------------------------------------------- error paths
def test_missing_file(package_copy):
    (package_copy / "params.npz").unlink()
    with pytest.raises(PackageError, match="params.npz: missing"):
        Segmenter(package_copy, backend="tvm")


def test_missing_metadata(package_copy):
    (package_copy / "metadata.json").unlink()
    with pytest.raises(PackageError, match="metadata.json: missing.*hmseg-core export"):
        Segmenter(package_copy)


def test_truncated_library(package_copy):
    (lib,) = ModelPackage.load(package_copy).libraries
    path = package_copy / lib["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PackageError, match="truncated or corrupt"):
        Segmenter(package_copy, backend="tvm")


def test_corrupt_library_that_matches_its_digest_fails_to_load(package_copy):
    pkg = ModelPackage.load(package_copy)
    (lib,) = pkg.libraries
    (package_copy / lib["file"]).write_bytes(b"\x7fELF not really a shared object")
    pkg.add_file(lib["file"])
    pkg.save_metadata()
    with pytest.raises(PackageError, match="cannot be loaded.*export the package again"):
        Segmenter(package_copy, backend="tvm")


def test_tvm_version_mismatch(package_copy):
    _edit_metadata(package_copy, lambda m: m["libraries"][0].update(tvm="0.1.0"))
    with pytest.raises(PackageError, match="built with TVM 0.1.0.*install apache-tvm==0.1.0"):
        Segmenter(package_copy, backend="tvm")


def test_package_format_version_mismatch(package_copy):
    _edit_metadata(package_copy, lambda m: m.update(format_version=99))
    with pytest.raises(PackageError, match="format version 99"):
        Segmenter(package_copy)


def test_compiled_for_another_architecture(package_copy, monkeypatch):
    monkeypatch.setenv("HMSEG_COMPILE_ON_FIRST_USE", "0")  # else the backend compiles a library for this CPU
    _edit_metadata(package_copy, lambda m: m["libraries"][0]["target"].update(mtriple="riscv64-linux-gnu"))
    with pytest.raises(PackageError, match="another CPU architecture.*--target host.*compiling on first use is off"):
        Segmenter(package_copy, backend="tvm")


def _isa_extension_this_cpu_lacks():
    from hmseg_core.deploy.targets import cpu_features, host_target

    have = set(cpu_features(host_target()))
    return next(f for f in ("avx512fp16", "avx512vp2intersect", "sse4a", "amx-fp16", "avx10.2-512", "sve2", "sme") if f not in have)


def test_compiled_for_a_cpu_with_more_features(package_copy, monkeypatch):
    from hmseg_core.runtime.backends.tvm_backend import select_library

    missing = _isa_extension_this_cpu_lacks()
    _edit_metadata(package_copy, lambda m: m["libraries"][0]["cpu_features"].append(missing))
    with pytest.raises(PackageError, match=f"features this one lacks.*{missing}"):
        select_library(ModelPackage.load(package_copy), "cpu")
    monkeypatch.setenv("HMSEG_COMPILE_ON_FIRST_USE", "0")
    with pytest.raises(PackageError, match=f"features this one lacks.*{missing}"):
        Segmenter(package_copy, backend="tvm")


def test_tuning_flags_the_cpu_lacks_do_not_keep_a_library_from_loading(package_copy):
    """LLVM lists scheduling hints among a CPU's features (icelake-server: fast-gather, ermsb, no-bypass-delay-*);
    a library tuned under another mcpu of the same instruction sets runs here all the same."""
    from hmseg_core.deploy.targets import cpu_features, host_target

    flags = ["fast-imaginary-gather", "slow-imaginary-op", "no-bypass-delay-imaginary", "prefer-imaginary-bits",
             "idivq-to-imaginary", "false-deps-imaginary", "tuning-imaginary", "ermsb", "macrofusion", "pconfig"]
    host = set(cpu_features(host_target()))
    _edit_metadata(package_copy, lambda m: m["libraries"][0].update(cpu_features=sorted(host) + flags))
    seg = Segmenter(package_copy, backend="tvm")
    assert seg.backend.library["file"] == ModelPackage.load(package_copy).libraries[0]["file"]  # the package's own, not a compiled one


def test_no_library_for_the_device(package_copy):
    with pytest.raises(PackageError, match="no cuda library"):
        Segmenter(package_copy, backend="tvm", device="cuda")


def test_fallback_to_torch_warns_and_still_segments(package_copy, package_dir):
    _edit_metadata(package_copy, lambda m: m["libraries"][0].update(tvm="0.1.0"))
    with pytest.warns(RuntimeWarning, match="running on torch instead"):
        seg = Segmenter(package_copy, backend="tvm", fallback=True)
    assert seg.backend_name == "torch"
    rgb = _images(1)[0]
    np.testing.assert_array_equal(seg(rgb), Segmenter(package_dir, backend="torch")(rgb))


def test_a_checkpoint_on_tvm_needs_the_size_its_package_is_exported_at(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="give the frame size, a fixed resize policy, or a package .*hmseg-core export"):
        Segmenter(checkpoint, backend="tvm")
    assert not (tmp_path / "hmseg").exists()  # refused before anything was exported


def test_cli_tuning_records_default_to_the_users_cache(monkeypatch, tmp_path):
    from hmseg_core.cli import build_parser
    from hmseg_core.cli.deploy import _tuning_db

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = build_parser().parse_args(["export", "ckpt.pt", "out", "--trials", "8"])
    assert _tuning_db(args) == tmp_path / "hmseg" / "tuning"  # where `hmseg-core tune` writes, so exports reuse it
    assert _tuning_db(build_parser().parse_args(["tune", "pkg", "--tuning-db", "db"])) == Path("db")


def test_bench_times_every_row_in_blocks_and_records_per_device(package_copy, capsys, monkeypatch):
    from hmseg_core.cli import main
    from hmseg_core.deploy import bench as bench_mod
    from hmseg_core.deploy.package import ModelPackage
    from hmseg_core.runtime import device_fingerprint

    calls = []
    segment = Segmenter.segment
    monkeypatch.setattr(Segmenter, "segment", lambda self, rgb: calls.append(self.backend_name) or segment(self, rgb))
    rows = bench_mod.bench([package_copy], backends=["tvm", "onnxruntime", "torch"], runs=5, warmup=1, threads=1, block=3)
    assert [(r.backend, len(r.inference_ms), len(r.total_ms)) for r in rows] == [("tvm", 5, 5), ("onnxruntime", 5, 5), ("torch", 5, 5)]
    assert all(0 < i <= t for r in rows for i, t in zip(r.inference_ms, r.total_ms))
    # warm-up round, then per sweep each row back to back: one untimed switch-over frame + the block (3, then 2)
    sweep = lambda n: [b for b in ("tvm", "onnxruntime", "torch") for _ in range(1 + n)]
    assert calls == ["tvm", "onnxruntime", "torch"] + sweep(3) + sweep(2)
    monkeypatch.undo()
    assert [r.label for r in rows] == ["TVM untuned, whole frame", "ONNX Runtime, whole frame", "PyTorch eager"]
    assert main(["bench", str(package_copy), "--runs", "2", "--block", "1", "--backends", "onnxruntime", "--threads", "1", "--record"]) == 0
    assert "ONNX Runtime, whole frame" in capsys.readouterr().out
    recorded = ModelPackage.load(package_copy).recorded_latency(device_fingerprint("onnxruntime", threads=1), f"{SIZE[0]}x{SIZE[1]}")
    assert recorded["runs"] == 2 and recorded["median_ms"] > 0
    assert main(["bench", str(package_copy), "--runs", "2", "--backends", "tvm", "--threads", "1", "--network-only"]) == 0
    out = capsys.readouterr().out
    assert "| TVM untuned |" in out and "whole frame" not in out
    # the runtime runs the whole frame, so a network-only time would be recorded under the wrong name
    assert main(["bench", str(package_copy), "--runs", "2", "--network-only", "--record"]) == 2
    assert "drop --network-only" in capsys.readouterr().err


def test_cli_reports_an_unusable_package_as_an_error(package_copy, capsys):
    from hmseg_core.cli import main

    _edit_metadata(package_copy, lambda m: m["libraries"][0].update(tvm="0.1.0"))
    assert main(["bench", str(package_copy), "--runs", "1", "--backends", "tvm"]) == 2
    assert "export the package again" in capsys.readouterr().err


def test_zoo_of_packages_runs_on_tvm_and_reads_accuracy_from_metadata(package_dir, tmp_path):
    from hmseg_core.runtime import ModelZoo, Segmenter, measure_zoo

    index = tmp_path / "zoo.yaml"
    index.write_text(f"variants:\n  - {{name: tiny, checkpoint: {package_dir}, miou: 0.5}}\n")
    zoo = ModelZoo.load(index)
    assert zoo.variants[0].checkpoint == package_dir
    assert ModelZoo.single(package_dir).variants[0].miou == pytest.approx(0.5)
    (m,) = measure_zoo(zoo, SIZE, backend="tvm", iterations=2, warmup=1)
    assert m.latency.samples == 2 and m.backend == "tvm"


def test_tuning_records_are_stored_and_reused_and_the_tuned_module_is_correct(tmp_path):
    from tvm import relax

    from hmseg_core.deploy.export import export_program, parameter_names, to_relax
    from hmseg_core.deploy.targets import host_target
    from hmseg_core.deploy.tuning import TRANSFORM_PARAMS, TuningOptions, tune_and_apply

    torch.manual_seed(0)
    net = TwoConvs().eval()
    program = export_program(net, (16, 16))
    target = host_target(num_cores=1)
    options = TuningOptions(trials=4, trials_per_task=2, db_root=tmp_path / "records")
    mod, first = tune_and_apply(to_relax(program), target, options, log=lambda s: None)
    assert first.tasks >= 2 and first.tasks_tuned == first.tasks and first.tasks_reused == 0 and first.trials > 0
    assert (tmp_path / "records" / options.work_dir(target).name / "database_tuning_record.json").stat().st_size > 0
    _, second = tune_and_apply(to_relax(program), target, options, log=lambda s: None)
    assert (second.tasks_reused, second.tasks_tuned, second.trials) == (first.tasks, 0, 0)

    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    state = net.state_dict()
    weights = vm[TRANSFORM_PARAMS]([tvm.runtime.tensor(state[n].numpy()) for n in parameter_names(program)])
    x = torch.randn(1, 3, 16, 16)
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *weights).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_trials_per_round_spends_about_half_the_budget_on_one_pass_over_all_tasks():
    from hmseg_core.deploy.tuning import TuningOptions, trials_per_round

    assert trials_per_round(TuningOptions(trials=2500), 48) == 26
    assert trials_per_round(TuningOptions(trials=100000), 48) == 64
    assert trials_per_round(TuningOptions(trials=10), 48) == 1


def _export_for(target, tool, missing, checkpoint, tmp_path_factory):
    """A package with only a ``target`` library, or a skip naming the missing ``tool`` (a callable: whether it is there)."""
    if not (tool() if callable(tool) else shutil.which(tool)):
        pytest.skip(missing)
    out = tmp_path_factory.mktemp(target) / "pkg"
    return export_package(checkpoint, out, ExportOptions(input_size=SIZE, targets=(target,), onnx=False), log=lambda s: None)


@pytest.fixture(scope="module")
def cuda_package(checkpoint, tmp_path_factory):
    return _export_for("cuda", lambda: tvm.get_global_func("target.build.cuda", allow_missing=True) is not None,
                       "this TVM was built without CUDA code generation", checkpoint, tmp_path_factory)


def test_cuda_library_builds_without_a_gpu(cuda_package, monkeypatch):
    """The CUDA target compiles here (DLight's default GPU schedules; the CUDA C++ becomes GPU code where the
    library is loaded); without compiling on first use, a CPU-only machine gets a clear error."""
    (lib,) = cuda_package.libraries
    assert lib["target"]["kind"] == "cuda" and lib["target_key"].startswith("cuda-sm_")
    assert lib["tuning"]["schedules"] == "dlight"
    assert (cuda_package.root / lib["file"]).stat().st_size > 0
    monkeypatch.setenv("HMSEG_COMPILE_ON_FIRST_USE", "0")
    with pytest.raises(PackageError, match="no llvm library"):
        Segmenter(cuda_package.root, backend="tvm")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")
def test_cuda_library_labels_equal_torch(cuda_package):
    rgb = _images(1)[0]
    expected = Segmenter(cuda_package.root, backend="torch")(rgb)
    np.testing.assert_array_equal(Segmenter(cuda_package.root, backend="tvm", device="cuda")(rgb), expected)


@pytest.fixture(scope="module")
def aarch64_package(checkpoint, tmp_path_factory):
    return _export_for("aarch64", "aarch64-linux-gnu-g++", "no aarch64 cross compiler (Debian: apt-get install g++-aarch64-linux-gnu)",
                       checkpoint, tmp_path_factory)


def test_aarch64_library_is_cross_compiled_and_refused_on_another_architecture(aarch64_package, monkeypatch):
    (lib,) = aarch64_package.libraries
    header = (aarch64_package.root / lib["file"]).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # e_machine EM_AARCH64
    assert lib["tuning"]["family"] == "aarch64" and "neon" in lib["cpu_features"]
    from hmseg_core.deploy.targets import host_arch

    monkeypatch.setenv("HMSEG_COMPILE_ON_FIRST_USE", "0")  # else a library for this CPU is compiled from checkpoint.pt
    if host_arch() != "aarch64":
        with pytest.raises(PackageError, match="another CPU architecture"):
            Segmenter(aarch64_package.root, backend="tvm")


def test_agreement_with_torch_on_frames_of_a_data_set(package_dir, camvid_fixture, capsys):
    from hmseg_core.cli import main

    assert main(["agree", str(package_dir), "--data-root", str(camvid_fixture), "--split", "val", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in out.splitlines() if line.startswith(("| tvm", "| onnxruntime"))}
    assert set(rows) == {"tvm", "onnxruntime", "tvm whole frame", "onnxruntime whole frame"}
    for name, (frames, identical, logits) in rows.items():
        assert int(frames) == 3 and float(identical.strip(" %")) >= 99.9
        assert logits.strip() == "(labels only)" if "whole frame" in name else float(logits) < 1e-3


def test_kernel_profile_covers_every_convolution_and_adds_up_to_the_frame(package_dir, capsys):
    from hmseg_core.cli import main
    from hmseg_core.deploy.bench import profile_kernels

    frame_ms, kernels = profile_kernels(package_dir, runs=3, threads=1)
    convs = sum(k.calls for k in kernels if "conv2d" in k.name)
    net = fold_batchnorm(create_model("mrms_tiny", 11).for_inference())
    assert convs == sum(isinstance(m, nn.Conv2d) for m in net.modules())  # one fused kernel call per convolution
    assert [k.ms for k in kernels] == sorted((k.ms for k in kernels), reverse=True)
    assert 0.5 * frame_ms < sum(k.ms for k in kernels) <= frame_ms * 1.05
    assert main(["profile", str(package_dir), "--runs", "2", "--threads", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("| fused_") + out.count("| resize") + out.count("| vm.") >= 3 and "more |" in out


def test_setting_tvm_threads_leaves_this_threads_cpu_affinity_alone():
    import os

    from hmseg_core.machine import set_threads

    before = os.sched_getaffinity(0)
    set_threads(1)
    assert os.sched_getaffinity(0) == before  # threads started later (torch, ORT, DDS) may use every core


# TVM's thread pool is sized once per process, so each case runs in a fresh one
THREADS_CHILD = """
import json, os, sys, warnings
import tvm
from hmseg_core.machine import use_tvm_threads
pool = tvm.get_global_func("runtime.NumThreads")
if sys.argv[1] == "started":
    pool()  # TVM ran before: the pool exists with the environment's count
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    used = use_tvm_threads(int(sys.argv[2]))
print(json.dumps({"used": used, "pool": pool(), "warnings": [str(w.message) for w in caught],
                  "spin": os.environ.get("TVM_THREAD_POOL_SPIN_COUNT")}))
"""


def _tvm_child(code, *args, **env):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env={**clean, **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tvm_runs_on_the_requested_threads_not_its_default_of_half_the_cpus():
    from hmseg_core.machine import TVM_SPIN_COUNT

    spin = str(TVM_SPIN_COUNT)
    fresh = _tvm_child(THREADS_CHILD, "fresh", 2)
    assert fresh == {"used": 2, "pool": 2, "warnings": [], "spin": spin}  # TVM alone would start 1 on a 2- or 3-CPU x86 machine
    lowered = _tvm_child(THREADS_CHILD, "started", 2, TVM_NUM_THREADS="3")
    assert lowered == {"used": 2, "pool": 2, "warnings": [], "spin": spin}


def test_idle_tvm_workers_poll_briefly_unless_the_environment_says_otherwise():
    from hmseg_core.machine import TVM_SPIN_COUNT

    assert TVM_SPIN_COUNT < 300000  # TVM's own default polls through the gap between camera frames
    assert _tvm_child(THREADS_CHILD, "fresh", 2, TVM_THREAD_POOL_SPIN_COUNT="123")["spin"] == "123"


def test_a_pool_started_with_fewer_threads_is_reported_with_the_fix():
    child = _tvm_child(THREADS_CHILD, "started", 2, TVM_NUM_THREADS="1")
    assert child["used"] == child["pool"] == 1
    assert len(child["warnings"]) == 1 and "TVM_NUM_THREADS=2" in child["warnings"][0]


def test_tvm_backend_uses_torchs_thread_count(package_dir):
    code = """
import json, sys, torch, tvm
from hmseg_core.runtime import Segmenter
torch.set_num_threads(int(sys.argv[2]))
seg = Segmenter(sys.argv[1], backend="tvm")
print(json.dumps({"backend": seg.backend.threads, "pool": tvm.get_global_func("runtime.NumThreads")()}))
"""
    assert _tvm_child(code, package_dir, 2) == {"backend": 2, "pool": 2}


def test_tuning_times_candidates_on_the_targets_thread_count(monkeypatch):
    import os
    import subprocess
    import sys

    from hmseg_core.deploy.tuning import _measuring_threads

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    probe = [sys.executable, "-c", "import tvm; print(tvm.get_global_func('runtime.NumThreads')())"]
    with _measuring_threads(2):  # MetaSchedule's measuring workers are started in here
        started_inside = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert started_inside == "2"
    assert "TVM_NUM_THREADS" not in os.environ  # the caller's environment is left as it was
