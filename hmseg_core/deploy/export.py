"""Checkpoint -> model package: final network, BN folded, ``torch.export``, TVM Relax, compiled libraries.

    checkpoint ─ model_from_checkpoint (boosting heads dropped) ─ fold_batchnorm
               ─ torch.export (static input size) ─┬─ from_exported_program ─ tune/apply ─ tvm.compile ─ lib/<target>.so
                                                   └─ torch.onnx.export ─ model.onnx, labels.onnx

Each library and the ONNX export carry two functions of the same weights: ``main`` (the
network: normalised float NCHW in, logits out) and ``labels`` (:class:`FramePath`, the whole
frame: the camera's RGB uint8 in, class ids out), which the runtime calls when the image
already has the package's input size.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_save, inference_checkpoint, load_checkpoint, model_from_checkpoint
from ..io import atomic_write_file, digest
from .fold import fold_batchnorm
from .package import CHECKPOINT, FORMAT, FORMAT_VERSION, FRAME_FUNCTION, ONNX, ONNX_LABELS, PARAMS, ModelPackage
from .targets import TargetDict, cpu_features, cross_compiler, resolve_target, target_key
from .tuning import TuningOptions, tune_and_apply

Log = Callable[[str], None]
ONNX_OPSET = 18


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class ExportOptions:
    """What to build: the static input size (HxW), targets, ONNX, tuning."""

    input_size: Tuple[int, int] = (360, 480)
    targets: Sequence[str | TargetDict] = ("host",)
    onnx: bool = True
    tuning: TuningOptions = field(default_factory=TuningOptions)
    name: Optional[str] = None
    overwrite: bool = False


def deploy_network(ckpt: Dict[str, Any]) -> nn.Module:
    """The network every backend of a package runs: inference-only, eval mode, BN folded."""
    model, _ = model_from_checkpoint(ckpt, boosting=False)
    return fold_batchnorm(model.for_inference())


class FramePath(nn.Module):
    """One frame in one graph: RGB uint8 ``(1, H, W, 3)`` -> class ids uint8 ``(1, H, W)``.

    The arithmetic of :func:`hmseg_core.evaluate.preprocess` (divide by 255, subtract the
    mean, divide by the std) and the first-maximum argmax of :func:`~hmseg_core.evaluate.postprocess`,
    around the network. Compiled into a package, it lets a runtime take the camera image and
    return labels with no PyTorch work between frames: PyTorch's OpenMP workers keep spinning
    after each operation, on the cores the library's own threads need next (mrms_tiny at
    360x480, tuned TVM on 2 threads: 15.1 ms for the network between PyTorch's pre- and
    post-processing, 10.6 ms for the whole frame in the library; docs/RESULTS.md).

    The image is moved to NCHW while it is still uint8, and normalised per channel there, as
    :func:`~hmseg_core.evaluate.preprocess` does: the same arithmetic as normalising the NHWC
    image, but ONNX Runtime runs a broadcast over the last axis of three element by element
    (2.2 ms at 360x480 on 2 threads, against 0.37 ms this way; docs/RESULTS.md).

    ``classes_last``: the argmax runs over the last axis of the logits moved to NHWC, the same
    first maximum. The ONNX graph is exported so: OpenVINO runs an argmax over the channels of
    NCHW as a TopK that took 5.6 of a 10.4 ms frame; ONNX Runtime takes the same time either way.
    TVM's libraries keep the argmax over channels, which :mod:`~hmseg_core.deploy.relax_rewrites`
    fuses with the final upsampling into one kernel."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], classes_last: bool = False) -> None:
        super().__init__()
        self.net = net
        self.classes_last = classes_last
        # not persistent: exported as constants of the graph, not as weights
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        logits = self.net(x)
        labels = logits.permute(0, 2, 3, 1).argmax(-1) if self.classes_last else logits.argmax(1)
        return labels.to(torch.uint8)

    def with_classes_last(self) -> "FramePath":
        """The same frame (the same network module and buffers) with the argmax over the last axis of NHWC logits."""
        frame = copy.copy(self)
        frame.classes_last = True
        return frame


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """torch.export and torch.onnx without their chatter: deprecation warnings from PyTorch's own
    internals and the ONNX exporter's notes on torchvision ops it cannot register. A log (a node's
    above all) should say what hmseg does, once, not how the exporter works; errors still raise."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        onnx_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            onnx_log.setLevel(level)


def export_program(net: nn.Module, input_size: Tuple[int, int]) -> torch.export.ExportedProgram:
    example = torch.zeros(1, 3, *input_size)
    with torch.no_grad(), quiet_torch_export():
        return torch.export.export(net, (example,))


def export_frame_program(frame: FramePath, input_size: Tuple[int, int]) -> torch.export.ExportedProgram:
    example = torch.zeros(1, *input_size, 3, dtype=torch.uint8)
    with torch.no_grad(), quiet_torch_export():
        return torch.export.export(frame, (example,))


def parameter_names(program: torch.export.ExportedProgram) -> List[str]:
    """State-dict names of the parameters in the order the Relax function takes them after the input."""
    from torch.export.graph_signature import InputKind

    return [s.target for s in program.graph_signature.input_specs if s.kind is InputKind.PARAMETER]


def to_relax(program: torch.export.ExportedProgram):
    """Relax module with the weights kept as function parameters (stored once in ``params.npz``)."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with quiet_torch_export():  # it runs PyTorch's decompositions, which warn about PyTorch's own internals
        mod = from_exported_program(program, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, _ = relax.frontend.detach_params(mod)
    return mod


def with_frame_function(mod, frame_program: torch.export.ExportedProgram, names: Sequence[str]):
    """``mod`` (the network's ``main``) plus the whole-frame function, which takes the same weights in the same order."""
    frame_names = parameter_names(frame_program)
    if frame_names != [f"net.{n}" for n in names]:
        raise RuntimeError("the whole-frame graph's weights are not the network's, in its order: "
                           f"{frame_names[:3]}... against {list(names[:3])}...")
    combined = mod.clone()
    combined[FRAME_FUNCTION] = to_relax(frame_program)["main"].with_attr("global_symbol", FRAME_FUNCTION)
    return combined


def build_library(mod, target: TargetDict, tuning: TuningOptions, log: Log = _stderr):
    """Tune (within budget), apply the records of the target's ISA family, compile; returns
    ``(executable, metadata entry)``. The one compile path of exports, first-use compiles and tuning."""
    import tvm

    mod, report = tune_and_apply(mod, target, tuning, log)
    log(f"compiling for {target_key(target)}")
    executable = tvm.compile(mod, target=tvm.target.Target(target))
    entry = {
        "target": target,
        "target_key": target_key(target),
        "cpu_features": cpu_features(target),
        "tvm": tvm.__version__,
        "layout": tuning.layout,
        "tuning": report.as_dict(),
        "frame": FRAME_FUNCTION if FRAME_FUNCTION in [gv.name_hint for gv in mod.functions] else None,
    }
    return executable, entry


def write_library(executable, target: TargetDict, out_path: Path) -> None:
    """Link ``executable`` into the shared library ``out_path`` (atomically; cross-linked for another architecture)."""
    cxx = cross_compiler(target)
    if cxx is not None and shutil.which(cxx) is None:
        raise RuntimeError(f"cross-compiling for {target_key(target)} needs {cxx} (Debian: apt-get install g++-{cxx.split('-linux')[0]}-linux-gnu)")
    if cxx is not None:
        from tvm.support import cc

        atomic_write_file(out_path, lambda tmp: executable.export_library(str(tmp), fcompile=cc.cross_compiler(cxx)))
    else:
        atomic_write_file(out_path, lambda tmp: executable.export_library(str(tmp)))


def compile_library(mod, target: TargetDict, out_path: Path, tuning: TuningOptions, log: Log = _stderr) -> Dict[str, Any]:
    """Tune (within budget), build and link one library; returns its metadata entry."""
    executable, entry = build_library(mod, target, tuning, log)
    write_library(executable, target, out_path)
    return {"file": out_path.name, **entry}


def _onnx(net: nn.Module, example: torch.Tensor, out_path: Path, output: str) -> None:
    with torch.no_grad(), quiet_torch_export():
        torch.onnx.export(
            net, (example,), str(out_path), input_names=["image"], output_names=[output],
            opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False,
        )


@dataclass
class Graphs:
    """A checkpoint's deployed network at one input size: the module, its whole frame, the exported
    program and its weights' names in the compiled functions' order."""

    net: nn.Module
    frame: FramePath
    program: torch.export.ExportedProgram
    names: List[str]


def export_graphs(ckpt: Dict[str, Any], input_size: Tuple[int, int]) -> Graphs:
    net = deploy_network(ckpt)
    program = export_program(net, input_size)
    return Graphs(net, FramePath(net, ckpt["mean"], ckpt["std"]).eval(), program, parameter_names(program))


def relax_module(graphs: Graphs, input_size: Tuple[int, int]):
    """The Relax module every library is compiled from: ``main`` (the network) and the whole frame."""
    return with_frame_function(to_relax(graphs.program), export_frame_program(graphs.frame, input_size), graphs.names)


def export_onnx(net: nn.Module, frame: FramePath, input_size: Tuple[int, int], out_dir: Path) -> Dict[str, Any]:
    """``model.onnx`` (the network) and ``labels.onnx`` (the whole frame, :class:`FramePath`)."""
    _onnx(net, torch.zeros(1, 3, *input_size), out_dir / ONNX, "logits")
    _onnx(frame.with_classes_last(), torch.zeros(1, *input_size, 3, dtype=torch.uint8), out_dir / ONNX_LABELS, "labels")
    return {"file": ONNX, "frame_file": ONNX_LABELS, "opset": ONNX_OPSET, "torch": torch.__version__}


def export_package(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions, log: Log = _stderr) -> ModelPackage:
    """Build a model package directory from a checkpoint (see :mod:`hmseg_core.deploy.package`)."""
    source = Path(checkpoint)
    ckpt = load_checkpoint(source)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    h, w = options.input_size

    graphs = export_graphs(ckpt, (h, w))
    net, names = graphs.net, graphs.names
    log(f"exporting {source.name}: {ckpt['genotype'][:60]}... at {h}x{w}")

    # the torch backend's weights: the source checkpoint without training-only state
    atomic_save(inference_checkpoint(ckpt), out / CHECKPOINT)

    state = net.state_dict()
    np.savez(out / PARAMS, **{f"p{i:04d}": state[n].detach().cpu().numpy() for i, n in enumerate(names)})

    miou = ckpt.get("best_miou")
    meta: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": options.name or source.stem,
        "genotype": ckpt["genotype"],
        "class_names": list(ckpt["class_names"]),
        "palette": [list(map(int, c)) for c in ckpt["palette"]],
        "mean": list(map(float, ckpt["mean"])),
        "std": list(map(float, ckpt["std"])),
        "input_size": [h, w],
        "accuracy": {"miou": float(miou)} if miou is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "source_checkpoint": {"name": source.name, "sha256": digest(source)},
        "params": {"file": PARAMS, "names": names},
        "libraries": [],
        "onnx": None,
        "latency": {},
        "files": {},
    }
    package = ModelPackage(out, meta)
    package.add_file(CHECKPOINT)
    package.add_file(PARAMS)

    frame = graphs.frame
    if options.targets:
        mod = relax_module(graphs, (h, w))
        for spec in options.targets:
            target = resolve_target(spec)
            name = f"lib/{target_key(target)}.so"
            entry = compile_library(mod, target, out / name, options.tuning, log)
            entry["file"] = name
            meta["libraries"] = [e for e in meta["libraries"] if e["file"] != name] + [entry]
            package.add_file(name)
    if options.onnx:
        log("exporting ONNX")
        meta["onnx"] = export_onnx(net, frame, (h, w), out)
        package.add_file(ONNX)
        package.add_file(ONNX_LABELS)
    package.save_metadata()
    log(package.describe())
    return package
