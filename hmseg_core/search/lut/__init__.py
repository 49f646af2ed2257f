"""Cost lookup table (LUT): every candidate of a search space measured on the target.

A network of the MRMS family is cut into *parts* whose costs add up (:mod:`.parts`): the stem,
each backbone layer, the two resolution layers and the segmentation head. An entry is keyed by
what a part is and the input shape it sees; layers with the same signature share one entry,
and a genotype's predicted cost is the sum of its parts' entries, calibrated for latency
(:mod:`.table`: :class:`LatencyTable`, :class:`Calibration`, the file form, the fidelity check).
Parts are timed by a :class:`Timer` (:mod:`.timers`): :class:`TorchTimer` (eager PyTorch, CPU
or CUDA) or :class:`TVMTimer` (each part BN-folded, compiled for the target by TVM, optionally
tuned into the records database the final networks' export reuses).

This package re-exports the public names of its modules.
"""

from __future__ import annotations

from ...machine import IDENTITY_FIELDS
from .parts import HeadPart, Part, Shape, decompose, layer_input_sizes, layer_key, random_inputs, space_parts
from .table import CALIBRATION_SEED, FORMAT, METRICS, VERSION, Calibration, LatencyTable, LUTError, check_fidelity, measure_networks
from .timers import Timer, TorchTimer, TVMTimer

__all__ = [
    "CALIBRATION_SEED", "FORMAT", "IDENTITY_FIELDS", "METRICS", "VERSION", "Calibration", "HeadPart", "LUTError", "LatencyTable",
    "Part", "Shape", "TVMTimer", "Timer", "TorchTimer", "check_fidelity", "decompose", "layer_input_sizes", "layer_key",
    "measure_networks", "random_inputs", "space_parts",
]
