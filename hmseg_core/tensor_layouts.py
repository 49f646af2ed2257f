"""Tensor layouts the deployment compiles convolutions in (constants only).

They live here, outside :mod:`hmseg_core.deploy`, so that the command line can offer them as
choices without importing the deployment package (and with it torch and TVM).
"""

from __future__ import annotations

from typing import Dict

#: activation layout -> weight layout of ``relax.nn.conv2d`` (depthwise weights included)
LAYOUTS: Dict[str, str] = {"NCHW": "OIHW", "NHWC": "OHWI"}
DEFAULT_LAYOUT = "NCHW"
