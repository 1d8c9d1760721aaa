"""What an export target is: check the platform, write the artifact, load it and run it.

``export.artifacts.export_artifacts`` drives every target the same way: ``prepare`` (refuse a
platform the target cannot serve, before anything is written), ``write`` (the files and a
record of how they were built), then the self-check: ``runner`` loads what was written and
runs int8 codes through it, and the base compares every output with the integer reference
(``export.reference``). A target that cannot run here says why instead of a runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from export.qnet import QuantizedNet

Runner = Callable[[np.ndarray], np.ndarray]


class ExportTarget(ABC):
    """One artifact kind (``onnx``, ``tvm``, ``c``)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    measurable: ClassVar[bool] = False  # `inag export --measure` can time it on a device

    def prepare(self, net: QuantizedNet, platform: Any) -> dict[str, Any]:
        """Check that ``platform`` can take this artifact (raise ExportError otherwise), and
        return what ``write`` needs from it. Runs before the output directory is touched."""
        return {}

    @abstractmethod
    def write(
        self, net: QuantizedNet, out: Path, stem: str, platform: Any, ctx: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Path]]:
        """Write the artifact into ``out``: (the manifest's ``target_info``, files written)."""

    @abstractmethod
    def runner(
        self, net: QuantizedNet, out: Path, info: dict[str, Any]
    ) -> tuple[Runner | None, str]:
        """Load what ``write`` left in ``out`` (``info`` is its record): (a function running
        int8 codes through it, the runtime's name), or (None, why it cannot run here)."""
