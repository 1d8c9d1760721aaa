"""The op registry: one :class:`LayerOp` per layer kind (``dense``, ``conv``).

``get_op(kind)`` is what every stage calls; an unknown kind is an error listing the known
ones. ``register_op`` adds one (a test registers a test-only op; docs/extending.md).
"""

from __future__ import annotations

from inag.ir.ops.base import NODE_SHAPES, PARAM_DEFAULTS, Counts, LayerOp, Shape, clear_unit_cache
from inag.ir.ops.conv import Conv, conv_hw
from inag.ir.ops.dense import Dense

_OPS: dict[str, LayerOp] = {}


class UnknownOpError(ValueError):
    """A layer kind no op defines."""


def register_op(op: LayerOp, replace: bool = False) -> LayerOp:
    """Add ``op`` to the registry (its ``name`` and ``code`` must be new unless ``replace``)."""
    if not replace:
        if op.name in _OPS:
            raise ValueError(f"op {op.name!r} is already registered")
        if any(o.code == op.code for o in _OPS.values()):
            raise ValueError(f"op code {op.code} of {op.name!r} is already taken")
    _OPS[op.name] = op
    clear_unit_cache()
    return op


def unregister_op(name: str) -> None:
    _OPS.pop(name, None)
    clear_unit_cache()


def get_op(kind: str) -> LayerOp:
    try:
        return _OPS[kind]
    except (KeyError, TypeError):
        raise UnknownOpError(
            f"unknown layer kind {kind!r}; known: {', '.join(sorted(_OPS))}"
        ) from None


def available_ops() -> dict[str, LayerOp]:
    """The registry itself (read-only by convention: use register_op to change it)."""
    return _OPS


def op_code(kind: str) -> int:
    return get_op(kind).code


register_op(Dense())
register_op(Conv())

__all__ = [
    "NODE_SHAPES",
    "PARAM_DEFAULTS",
    "Counts",
    "LayerOp",
    "Shape",
    "UnknownOpError",
    "available_ops",
    "conv_hw",
    "get_op",
    "op_code",
    "register_op",
    "unregister_op",
]
