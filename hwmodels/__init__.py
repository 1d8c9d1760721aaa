"""Hardware models: per-layer cost of a quantized network on a platform.

``HardwareModel`` is the plug-in interface (``base.py``); ``registry`` finds built-ins and
third-party models (entry-point group ``inag.hwmodels``); ``costing`` evaluates whole
architectures on a platform, one at a time or as a batch; ``quantities`` is the table of
budget quantities. Attributes load on first use, so ``inag.platform`` can read
``hwmodels.quantities`` without importing the models (which import ``inag.platform``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CostResult": "hwmodels.costing",
    "PlatformCoster": "hwmodels.costing",
    "HardwareModel": "hwmodels.base",
    "HardwareModelError": "hwmodels.base",
    "available_models": "hwmodels.registry",
    "build_models": "hwmodels.registry",
    "get_model_class": "hwmodels.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hwmodels' has no attribute {name!r}")
