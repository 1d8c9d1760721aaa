"""The one user-facing error of the exporters.

``ExportError`` subclasses ``ValueError`` so library callers can treat it as bad input, and the
CLI lists it among its known errors (one paragraph on stderr, exit code 2, no traceback).
"""

from __future__ import annotations


class ExportError(ValueError):
    """A net file, an architecture, a target or an output location cannot be exported."""
