"""The one user-facing error of the exporters.

``ExportError`` subclasses ``ValueError`` so library callers can treat it as bad input, and the
CLI lists it among its known errors (one paragraph on stderr, exit code 2, no traceback).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class ExportError(ValueError):
    """A net file, an architecture, a target or an output location cannot be exported."""


def optional_module(name: str, what: str, extra: str, package: str = "") -> ModuleType:
    """Import an optional dependency where it is used, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pkg = package or name.split(".")[0]
        raise ExportError(f"{what} needs {pkg}: pip install 'inag[{extra}]'") from exc
