"""A model loaded for inference: ``labels = segmenter(rgb)``."""

from __future__ import annotations

import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..deploy.package import PackageError
from ..evaluate import postprocess, preprocess
from ..machine import retain_freed_memory
from .backends import AUTO, BackendUnavailable, backend_class, create_backend
from .auto import resolve_backend
from .source import ModelSource
from .transforms import ResizePolicy, Timings, palette_lut


class Segmenter:
    """RGB uint8 (H, W, 3) -> class ids uint8 (H, W) at the input's size, with per-stage timings.

    Its output equals :func:`hmseg_core.evaluate.predict` bit for bit, so on-robot and offline
    mIoU agree."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | Dict,
        backend: Optional[str] = None,
        resize: ResizePolicy = ResizePolicy(),
        device: str = "cpu",
        name: Optional[str] = None,
        fallback: bool = False,
        whole_frame: bool = True,
    ) -> None:
        """``checkpoint``: a checkpoint file or dict, or a model package directory (``hmseg-core export``).
        ``backend`` (``None`` or ``"auto"``): see :func:`~hmseg_core.runtime.auto.resolve_backend` (a package's
        fastest recorded backend here, else tvm; torch for a checkpoint); with ``fallback`` a backend that cannot
        run here (not installed, or a library that does not fit this machine) is replaced by torch, with a warning.
        ``whole_frame``: let a backend that can run pre-processing, network and argmax in one call do so
        for images of its size (``False`` times the network alone between this class's pre- and post-processing)."""
        retain_freed_memory()
        if backend in (None, AUTO):
            backend = "torch" if isinstance(checkpoint, dict) else resolve_backend(backend, checkpoint, device)
        backend_class(backend)  # an unknown name fails before anything is loaded
        model = ModelSource(checkpoint) if isinstance(checkpoint, dict) else ModelSource.load(checkpoint)
        self.source = None if model.path is None else str(model.path)
        self.name = name or (model.path.stem if model.path else "model")
        self.backend_name = backend
        try:
            self.backend = create_backend(backend, model, device)
        except (BackendUnavailable, PackageError) as e:
            if not fallback or backend == "torch":
                raise
            warnings.warn(f"backend {backend!r} unavailable, running on torch instead: {e}", RuntimeWarning, stacklevel=2)
            self.backend_name, self.backend = "torch", create_backend("torch", model, device)
        self.resize = resize
        self.whole_frame = whole_frame
        ckpt = model.checkpoint
        self.class_names: List[str] = list(ckpt["class_names"])
        self.palette: List[List[int]] = [list(map(int, c)) for c in ckpt["palette"]]
        self.mean, self.std = list(ckpt["mean"]), list(ckpt["std"])
        self.genotype: str = ckpt["genotype"]
        self._palette_lut = palette_lut(self.palette)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.segment(rgb)[0]

    def runs_whole_frame(self, size: Sequence[int]) -> bool:
        """Whether an image of ``size`` (H, W) goes through the backend's whole-frame call."""
        size = tuple(size)
        return self.whole_frame and getattr(self.backend, "frame_size", None) == size and tuple(self.resize.network_size(size)) == size

    def segment(self, rgb: np.ndarray) -> Tuple[np.ndarray, Timings]:
        """RGB uint8 (H, W, 3) -> (class ids uint8 (H, W), stage timings).

        When the backend runs the whole frame (:meth:`runs_whole_frame`), all of it is timed as
        inference and the pre- and post-processing times are zero."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {getattr(rgb, 'dtype', type(rgb))} {np.shape(rgb)}")
        t0 = time.perf_counter()
        size = rgb.shape[:2]
        if self.runs_whole_frame(size):
            labels = self.backend.labels(rgb)
            return labels, Timings(0.0, 1e3 * (time.perf_counter() - t0), 0.0)
        x = preprocess(rgb, self.mean, self.std, self.resize.network_size(size))
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = self.backend.forward(x)
            t2 = time.perf_counter()
            labels = postprocess(logits, size)
        t3 = time.perf_counter()
        return labels, Timings(1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2))

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class ids (H, W) -> RGB palette image (H, W, 3)."""
        return self._palette_lut[labels]


__all__ = ["Segmenter"]
