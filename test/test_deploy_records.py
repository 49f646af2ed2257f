"""Tuning records per ISA family, the instruction-set check, compiling on first use, `hmseg-core tune`, CUDA."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_testing import TwoConvs

from hmseg_core.checkpoint import atomic_save, make_checkpoint
from hmseg_core.deploy.targets import isa_features
from hmseg_core.registry import create_model

SIZE = (64, 96)
CLASSES = [f"class{i}" for i in range(11)]
PALETTE = [[i * 20, 255 - i * 20, i * 7] for i in range(11)]


def test_isa_features_keep_instruction_sets_and_leave_tuning_flags_out():
    x86 = ["avx512f", "avx512fp16", "amx-tile", "avx2", "fma", "bmi2", "f16c", "sse4.2", "popcnt", "fast-gather", "ermsb",
           "no-bypass-delay-mov", "prefer-256-bit", "idivq-to-divl", "macrofusion", "false-deps-perm", "slow-pmullq",
           "tuning-fast-imm-vector-shift", "allow-light-256-bit", "vzeroupper", "pconfig", "enqcmd"]
    assert isa_features(x86, "x86_64") == ["amx-tile", "avx2", "avx512f", "avx512fp16", "bmi2", "f16c", "fma", "popcnt", "sse4.2"]
    arm = ["neon", "sve", "sve2", "dotprod", "i8mm", "fp-armv8", "v8.2a", "fuse-aes", "use-postra-scheduler", "alu-lsl-fast",
           "predictable-select-expensive"]
    assert isa_features(arm, "aarch64") == ["dotprod", "fp-armv8", "i8mm", "neon", "sve", "sve2", "v8.2a"]


# ---------------------------------------------------------------------------- with TVM
pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install 'hmseg[tvm]')")

from hmseg_core.deploy.export import ExportOptions, export_package  # noqa: E402
from hmseg_core.deploy.package import ModelPackage  # noqa: E402
from hmseg_core.deploy.targets import cpu_features, cuda_target, host_target, isa_family  # noqa: E402
from hmseg_core.deploy.tuning import TuningOptions  # noqa: E402
from hmseg_core.runtime import Segmenter, device_fingerprint  # noqa: E402

X86 = lambda mcpu: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": 1}  # noqa: E731
#: x86 CPUs of each ISA family, for a second mcpu of the host's family
SAME_FAMILY = ["skylake-avx512", "cascadelake", "icelake-server", "x86-64-v4", "haswell", "broadwell", "x86-64-v3", "x86-64-v2"]


def test_isa_family_is_the_instruction_sets_not_the_cpu_name():
    assert {isa_family(X86(m)) for m in ("icelake-server", "znver5", "sapphirerapids", "skylake-avx512")} == {"x86_64-avx512"}
    assert {isa_family(X86(m)) for m in ("haswell", "znver3", "x86-64-v3")} == {"x86_64-avx2"}
    assert isa_family(X86("x86-64")) == "x86_64"
    assert isa_family({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v2"}) == "aarch64"
    assert isa_family(cuda_target("sm_80")) == "cuda"
    # the probe's case: everything icelake-server needs beyond Zen 5 was tuning flags and a system instruction
    assert set(cpu_features(X86("icelake-server"))) <= set(cpu_features(X86("znver5")))


def _other_mcpu_of_this_family():
    """Another LLVM CPU with the host's ISA family whose instruction sets this CPU has (its code runs here)."""
    host = host_target(num_cores=1)
    have = set(cpu_features(host))
    for mcpu in SAME_FAMILY:
        other = {**host, "mcpu": mcpu}
        if mcpu != host["mcpu"] and isa_family(other) == isa_family(host) and set(cpu_features(other)) <= have:
            return host, other
    pytest.skip(f"no other x86 CPU of family {isa_family(host)} whose instructions this {host['mcpu']} has")


def _run(mod, target, program, net, x):
    from tvm import relax

    from hmseg_core.deploy.export import parameter_names
    from hmseg_core.deploy.tuning import TRANSFORM_PARAMS

    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    state = net.state_dict()
    weights = vm[TRANSFORM_PARAMS]([tvm.runtime.tensor(state[n].numpy()) for n in parameter_names(program)])
    return vm["main"](tvm.runtime.tensor(x.numpy()), *weights).numpy()


def test_records_tuned_under_one_mcpu_apply_to_another_of_the_same_family(tmp_path, monkeypatch):
    from hmseg_core.deploy import records
    from hmseg_core.deploy.export import export_program, to_relax
    from hmseg_core.deploy.tuning import tune_and_apply

    tuned_for, other = _other_mcpu_of_this_family()
    torch.manual_seed(0)
    net = TwoConvs().eval()
    program = export_program(net, (16, 16))
    db = tmp_path / "records"
    family = isa_family(tuned_for)
    _, first = tune_and_apply(to_relax(program), tuned_for, TuningOptions(trials=4, trials_per_task=2, db_root=db, shipped=False), log=lambda s: None)
    assert first.tasks >= 2 and first.tasks_tuned == first.tasks and (db / family / records.RECORDS).stat().st_size > 0
    assert first.family == family and not any(p.name.startswith("llvm-") for p in db.iterdir())

    # MetaSchedule finds records by workload: every task of the other mcpu has one, nothing is tuned
    mod, second = tune_and_apply(to_relax(program), other, TuningOptions(trials=0, db_root=db, shipped=False), log=lambda s: None)
    assert (second.tasks, second.tasks_reused, second.tasks_tuned, second.trials) == (first.tasks, first.tasks, 0, 0)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_run(mod, other, program, net, x), net(x).numpy(), rtol=1e-4, atol=1e-5)

    # a run killed in the middle of a line leaves half a record: it is cut, the rest still applies
    with open(db / family / records.RECORDS, "a") as f:
        f.write('[0, [[["half a rec')
    logs = []
    _, again = tune_and_apply(to_relax(program), other, TuningOptions(db_root=db, shipped=False), log=logs.append)
    assert again.tasks_reused == first.tasks and any("half-written" in m for m in logs)

    # the old per-CPU layout is still read, with a message saying where new records go
    (db / family).rename(db / f"llvm-x86_64-{tuned_for['mcpu']}")
    logs = []
    _, legacy = tune_and_apply(to_relax(program), other, TuningOptions(db_root=db, shipped=False), log=logs.append)
    assert legacy.tasks_reused == first.tasks and any("old per-CPU layout" in m and family in m for m in logs)

    # records shipped with hmseg (hmseg_core/zoo/records/<family>) apply without any database of the user's
    shipped = tmp_path / "shipped"
    shutil.copytree(db / f"llvm-x86_64-{tuned_for['mcpu']}", shipped / family)
    monkeypatch.setattr(records, "SHIPPED_ROOT", shipped)
    _, from_zoo = tune_and_apply(to_relax(program), other, TuningOptions(), log=lambda s: None)
    assert from_zoo.tasks_reused == first.tasks and from_zoo.sources == [str(shipped / family)]
    # $HMSEG_SHIPPED_RECORDS names another folder, or none at all (a CPU family hmseg ships nothing for)
    monkeypatch.setattr(records, "SHIPPED_ROOT", tmp_path / "nowhere")
    monkeypatch.setenv("HMSEG_SHIPPED_RECORDS", str(shipped))
    _, named = tune_and_apply(to_relax(program), other, TuningOptions(), log=lambda s: None)
    assert named.tasks_reused == first.tasks and named.sources == [str(shipped / family)]
    monkeypatch.setenv("HMSEG_SHIPPED_RECORDS", "none")
    monkeypatch.setattr(records, "SHIPPED_ROOT", shipped)
    _, bare = tune_and_apply(to_relax(program), other, TuningOptions(), log=lambda s: None)
    assert bare.tasks_reused == 0 and not bare.sources


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    atomic_save(make_checkpoint(create_model("mrms_tiny", 11), CLASSES, PALETTE, [0.4, 0.45, 0.5], [0.25, 0.25, 0.25]), path)
    return path


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_a_package_without_a_library_compiles_one_on_first_use_into_the_cache(checkpoint, tmp_path, monkeypatch):
    from hmseg_core.deploy import library_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "onnx_only"
    export_package(checkpoint, out, ExportOptions(input_size=SIZE, targets=()), log=lambda s: None)
    package = ModelPackage.load(out)
    assert package.libraries == [] and package.onnx is not None
    before = _snapshot(out)
    lines = []
    library_cache.set_compile_log(lines.append)  # what the ROS node routes to its logger
    try:
        seg = Segmenter(out, backend="tvm")
        assert any("compiling one for" in line for line in lines) and seg.backend.library["cached"]
        so = Path(seg.backend.library["file"])
        assert so.parent.parent == tmp_path / "cache" / "hmseg" / "libraries" and so.name == f"{library_cache.target_key(host_target())}.so"
        assert _snapshot(out) == before  # nothing written into the package
        ref = Segmenter(out, backend="torch")
        for rgb in np.random.default_rng(1).integers(0, 256, size=(2, *SIZE, 3), dtype=np.uint8):
            assert (seg(rgb) == ref(rgb)).mean() >= 0.999
        lines.clear()
        again = Segmenter(out, backend="tvm")  # a later start loads the cached library
        assert lines == [] and again.backend.library["file"] == str(so)

        # new records (a tuning run's, or a new hmseg's shipped ones) make the library and TVM's measured latency out of date
        fp, fp_torch = device_fingerprint("tvm"), device_fingerprint("torch")
        user = library_cache.default_tuning_db() / isa_family(host_target())
        user.mkdir(parents=True)
        (user / "database_tuning_record.json").write_text("")
        assert device_fingerprint("tvm") != fp and device_fingerprint("torch") == fp_torch  # only TVM's measurements go stale
        assert library_cache.cached_library(package, host_target()) is None
        lines.clear()
        Segmenter(out, backend="tvm")
        assert any("tuning records changed since the cached library was compiled" in line for line in lines), lines
        lines.clear()
        Segmenter(out, backend="tvm")
        assert lines == []
    finally:
        library_cache.set_compile_log(None)


def _state(db):
    """The tuning run's state file (written atomically, so always whole)."""
    found = sorted(db.glob("*/tune-*.json"))
    return json.loads(found[0].read_text()) if found else None


def test_tune_writes_records_resumes_after_sigkill_and_a_second_export_applies_them(checkpoint, tmp_path):
    db = tmp_path / "db"
    pkg = tmp_path / "pkg"
    export_package(checkpoint, pkg, ExportOptions(input_size=SIZE, targets=(), onnx=False), log=lambda s: None)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hmseg_core.cli", "tune", str(pkg), "--max-trials", "8", "--chunk", "4", "--threads", "1",
           "--tuning-db", str(db)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while time.time() < deadline and first.poll() is None:
        state = _state(db)
        if state and state["trials"] >= 4:
            break
        time.sleep(1)
    assert first.poll() is None, first.communicate()[1][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = _state(db)
    assert 4 <= killed["trials"] < 8 and killed["spent_s"] > 0
    assert sum(t["ms"] for t in killed["tasks"].values()) > 0  # profiled: the frame's time per task

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr and "to profile it" not in second.stderr
    done = _state(db)
    assert done["trials"] == 8 and done["spent_s"] > killed["spent_s"]
    tuned = [t["name"] for t in done["tasks"].values() if t["trials"]]
    assert tuned and "trials" in second.stderr and "estimated frame" in second.stderr
    assert done["final_frame_ms"][pkg.name] > 0 and json.loads(second.stdout)["trials"] == 8
    assert (tmp_path / "cache" / "hmseg" / "libraries").is_dir()  # the package's library, rebuilt with the records

    # another export (another variant would do the same) applies them without tuning
    again = export_package(checkpoint, tmp_path / "again", ExportOptions(input_size=SIZE, onnx=False, tuning=TuningOptions(db_root=db)),
                           log=lambda s: None)
    report = again.libraries[0]["tuning"]
    assert report["tasks_reused"] >= len(tuned) and report["trials"] == 0


def test_a_tiny_network_compiles_for_cuda_with_dlight_schedules(tmp_path):
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        pytest.skip("this TVM was built without CUDA code generation")
    from hmseg_core.deploy.export import export_program, to_relax, write_library
    from hmseg_core.deploy.tuning import tune_and_apply

    target = cuda_target("sm_80")
    mod, report = tune_and_apply(to_relax(export_program(TwoConvs().eval(), (16, 16))), target, TuningOptions(trials=8), log=lambda s: None)
    assert report.schedules == "dlight" and report.trials == 0
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and all(f.attrs and f.attrs.get("tirx.is_scheduled") for f in kernels)
    write_library(tvm.compile(mod, target=tvm.target.Target(target)), target, tmp_path / "cuda.so")
    assert (tmp_path / "cuda.so").stat().st_size > 0


def test_cli_tune_needs_a_budget(capsys):
    from hmseg_core.cli import main

    assert main(["tune", "some/package"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_the_variants_of_a_zoo_are_tuned_together(checkpoint, tmp_path):
    """Variants share operators: a zoo's tasks are merged by workload, and every kernel maps to one."""
    from hmseg_core.deploy.autotune import Tuner, load_variants

    shutil.copy(checkpoint, tmp_path / "b.pt")
    index = tmp_path / "zoo.yaml"
    index.write_text(f"variants:\n  - {{name: a, checkpoint: {checkpoint}, miou: 0.5}}\n  - {{name: b, checkpoint: b.pt, miou: 0.4}}\n")
    zoo = Tuner(load_variants(index, SIZE), host_target(), tmp_path / "db", log=lambda s: None)
    one = Tuner(load_variants(checkpoint, SIZE), host_target(), tmp_path / "db", log=lambda s: None)
    assert [v.name for v in zoo.variants] == ["a", "b"] and set(zoo.tasks) == set(one.tasks)
    assert all(set(k.values()) <= set(zoo.tasks) for k in zoo.kernels) and zoo.key != one.key  # a state file each


def test_tune_notes_the_networks_its_records_cover_and_ship_copies_the_note(checkpoint, tmp_path, monkeypatch):
    """``auto`` compiles TVM on first use only for tuned networks (the kernels with records took at
    least 90 % of the untuned frame): the tuner notes them in ``variants.json`` beside the records,
    and shipping copies the note."""
    from hmseg_core.deploy import records
    from hmseg_core.deploy.autotune import Tuner, load_variants
    from hmseg_core.tensor_layouts import DEFAULT_LAYOUT

    tuner = Tuner(load_variants(checkpoint, SIZE), host_target(), tmp_path / "db", log=lambda s: None)
    folder = tuner.records.writable
    folder.mkdir(parents=True)
    (folder / records.WORKLOADS).write_text("")
    (folder / records.RECORDS).write_text("")
    network = records.network_id(tuner.variants[0].genotype, SIZE, DEFAULT_LAYOUT)
    keys = sorted(tuner.tasks)
    tuner.state = {"tasks": {k: {"ms": 5.0 if k == keys[0] else 0.5 if k == keys[1] else 0.01} for k in keys}}
    absent = {tuner.tasks[keys[0]].task_name}  # the costliest kernel has no record

    class Query:  # the records as MetaSchedule answers for them: every task but those ``absent`` has one
        def query_tuning_record(self, mod, target, name):
            return None if name in absent else object()

    monkeypatch.setattr(records.RecordSet, "open", lambda self, write=False: (Query(), None))
    assert tuner.record_coverage() == [] and records.covered([folder]) == set()
    absent.clear()
    absent.add(tuner.tasks[keys[1]].task_name)  # now only a cheap one lacks a record: under 10 % of the frame
    assert tuner.record_coverage() == [tuner.variants[0].name] and records.covered([folder]) == {network}

    monkeypatch.undo()
    total, kept = records.prune(folder, tmp_path / "ship" / "fam")
    assert (total, kept) == (0, 0) and records.covered([tmp_path / "ship" / "fam"]) == {network}
