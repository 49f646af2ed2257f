"""Runs a package's ONNX exports on OpenVINO's CPU plugin.

FP32 by default (the precision the paper deploys and the other backends run): OpenVINO's own
default on a CPU with bf16 instructions is bf16, which changes about 1 % of the labels
(docs/RESULTS.md), so that is a backend of its own name, ``openvino-bf16``, chosen explicitly.
"""

from __future__ import annotations

import numpy as np
import torch

from ...deploy.package import PackageError
from ...model import resize_to
from ..source import ModelSource
from . import BackendUnavailable, require_package


def compile_config(precision: str = "f32", threads: int = 0) -> dict:
    """The CPU plugin's settings every hmseg OpenVINO model is compiled with."""
    return {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",  # one frame at a time, as a camera delivers them
        "NUM_STREAMS": 1,
    }


class OpenVINOBackend:
    """OpenVINO compiled models of ``model.onnx`` (the network) and ``labels.onnx`` (the whole frame)."""

    name = "openvino"
    needs_package = True  # a checkpoint runs as its exported package (runtime.derived)
    precision = "f32"

    def __init__(self, model: ModelSource, device: str = "cpu", threads: int = 0) -> None:
        package = require_package(self.name, model)
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailable(f"the {self.name} backend needs OpenVINO: pip install 'hmseg[openvino]' ({e})") from None
        if device != "cpu":
            raise BackendUnavailable(f"the {self.name} backend runs on the CPU; device {device!r} is not supported")
        if package.onnx is None:
            raise PackageError(f"{package.root}: the package has no ONNX model; export it again without --no-onnx")
        core = ov.Core()
        config = compile_config(self.precision, threads)
        self.input_size = package.input_size
        self.network = self._compile(core, package.path(package.onnx["file"]), config)
        frame = package.onnx.get("frame_file")  # the whole frame (RGB uint8 in, labels out); absent in older packages
        self.frame = self._compile(core, package.path(frame), config) if frame else None
        self.frame_size = self.input_size if frame else None

    @staticmethod
    def _compile(core, path, config):
        try:
            return core.compile_model(str(path), "CPU", config).create_infer_request()
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise PackageError(f"{path}: OpenVINO cannot load it ({type(e).__name__}: {e}); export the package again") from None

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` at :attr:`frame_size` -> class ids uint8 ``(H, W)``: the whole frame in OpenVINO."""
        self.frame.infer({0: np.ascontiguousarray(rgb)[None]})
        return np.array(self.frame.get_output_tensor(0).data[0], copy=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = resize_to(x, self.input_size)
        self.network.infer({0: x.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(np.array(self.network.get_output_tensor(0).data, copy=True))


class OpenVINOBF16Backend(OpenVINOBackend):
    """OpenVINO in bfloat16 where the CPU has it (AVX-512 BF16, AMX): faster, about 1 % of labels differ."""

    name = "openvino-bf16"
    precision = "bf16"
