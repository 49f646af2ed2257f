"""Runs a package's ``model.onnx`` on ONNX Runtime (CPU, or CUDA where the provider exists)."""

from __future__ import annotations

import numpy as np
import torch

from ...deploy.package import PackageError
from ...model import resize_to
from ..source import ModelSource
from . import BackendUnavailable, require_package


def session_options(ort, threads: int = 0):
    """The session options every hmseg ONNX Runtime session runs with: ``threads`` intra-op
    threads (0: PyTorch's count), workers that sleep between parallel sections."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # ORT's workers spin after every parallel section by default. On a robot's CPU, shared with
    # the camera driver, the ROS executor and other nodes, that takes cores from them: PyTorch
    # run right after ORT in one process took 51 ms instead of 23 ms; ORT itself lost nothing
    # measurable without it (9.9 vs 10.2 ms, docs/RESULTS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend:
    """ONNX Runtime session over the BN-folded network at the package's input size."""

    name = "onnxruntime"
    needs_package = True  # a checkpoint runs as its exported package (runtime.derived)

    def __init__(self, model: ModelSource, device: str = "cpu", threads: int = 0) -> None:
        package = require_package(self.name, model)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable(f"the onnxruntime backend needs ONNX Runtime: pip install 'hmseg[onnx]' ({e})") from None
        if package.onnx is None:
            raise PackageError(f"{package.root}: the package has no ONNX model; export it again without --no-onnx")
        path = package.path(package.onnx["file"])
        options = session_options(ort, threads)
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
        providers = [p for p in providers if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
        self.session = self._session(ort, path, options, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = package.input_size
        frame = package.onnx.get("frame_file")  # the whole frame (RGB uint8 in, labels out); absent in older packages
        self.frame_session = self._session(ort, package.path(frame), options, providers) if frame else None
        self.frame_input = self.frame_session.get_inputs()[0].name if frame else None
        self.frame_size = self.input_size if frame else None

    @staticmethod
    def _session(ort, path, options, providers):
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise PackageError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e}); export the package again") from None

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` at :attr:`frame_size` -> class ids uint8 ``(H, W)``: the whole frame in ONNX Runtime."""
        (labels,) = self.frame_session.run(None, {self.frame_input: np.ascontiguousarray(rgb)[None]})
        return labels[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = resize_to(x, self.input_size)
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(logits)
