"""Export targets: the built-ins (``onnx``, ``tvm``, ``c``) and plug-ins registered under the
entry-point group ``inag.export_targets`` (like hardware models under ``inag.hwmodels``).

``get_target(name)`` is what ``inag export`` calls; an unknown name is an error listing the
available ones. A plug-in proves itself with ``export.testing`` (bit-exact against the
integer reference on random nets).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from importlib.metadata import entry_points

from export.errors import ExportError
from export.targets.base import ExportTarget, Runner
from export.targets.c import CTarget
from export.targets.onnx import OnnxTarget
from export.targets.tvm import TvmTarget

ENTRY_POINT_GROUP = "inag.export_targets"
BUILTIN_TARGETS: tuple[type[ExportTarget], ...] = (OnnxTarget, TvmTarget, CTarget)


@lru_cache(maxsize=1)
def _registry() -> dict[str, ExportTarget]:
    targets: dict[str, ExportTarget] = {cls.name: cls() for cls in BUILTIN_TARGETS}
    origin = {name: "built-in" for name in targets}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        here = f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP})"
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plug-in
            warnings.warn(f"export target {here} failed to load and is skipped: {exc}",
                          stacklevel=2)  # fmt: skip
            continue
        if not (isinstance(cls, type) and issubclass(cls, ExportTarget)):
            warnings.warn(f"{here} is not an ExportTarget subclass; skipped", stacklevel=2)
            continue
        if cls.name in targets:
            raise ExportError(
                f"export target {cls.name!r} is claimed twice: by {origin[cls.name]} and by "
                f"{here}; rename one of them"
            )
        targets[cls.name] = cls()
        origin[cls.name] = here
    return targets


def clear_cache() -> None:
    _registry.cache_clear()


def available_targets() -> dict[str, ExportTarget]:
    return dict(_registry())


def get_target(name: str) -> ExportTarget:
    reg = _registry()
    if name not in reg:
        raise ExportError(f"unknown export target {name!r}; available: {', '.join(sorted(reg))}")
    return reg[name]


__all__ = [
    "BUILTIN_TARGETS",
    "ENTRY_POINT_GROUP",
    "ExportTarget",
    "Runner",
    "available_targets",
    "clear_cache",
    "get_target",
]
