"""Hardware models: per-layer cost of a quantized network on a platform.

``HardwareModel`` is the plug-in interface (``base.py``); ``registry`` finds built-ins and
third-party models (entry-point group ``inag.hwmodels``); ``costing`` evaluates whole
architectures on a platform, one at a time or as a batch.
"""

from hwmodels.base import HardwareModel, HardwareModelError
from hwmodels.costing import CostResult, PlatformCoster
from hwmodels.registry import available_models, build_models, get_model_class

__all__ = [
    "CostResult",
    "HardwareModel",
    "HardwareModelError",
    "PlatformCoster",
    "available_models",
    "build_models",
    "get_model_class",
]
