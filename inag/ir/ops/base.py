"""What a layer op is: the one definition every stage reads.

A :class:`LayerOp` says, for one layer kind, which ``LayerSpec`` parameters it uses and their
ranges, how it transforms a feature-map shape (its compute node, then the nodes fused into
its unit), its weight shape and its counts: MACs, weights W(i), biases, input and output
feature-map sizes F(i). Lowering to the networkx IR, IR verification, the batched cost table,
``ArchSpec`` checks, search-space sizes and the quantized net all call these methods; adding
an op is one module that registers a subclass (see docs/extending.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from inag.arch import LayerSpec

Shape = tuple[int, ...]
# LayerSpec fields an op may use, beyond width and bits; unused ones must stay at this value
PARAM_DEFAULTS = {"kernel": 1, "stride": 1, "pool": 1}


@dataclass(frozen=True)
class Counts:
    """One unit's numbers: MACs, weights (W(i) without biases), biases, input elements, and
    output elements F(i) (the tensor the unit writes, after its fused ops)."""

    macs: int
    weights: int
    biases: int
    fmap_in: int
    fmap: int


class LayerOp(ABC):
    """A layer kind. Subclasses set the class attributes and implement the shape methods."""

    name: ClassVar[str]
    code: ClassVar[int]  # its value in the batched table's ``op`` column
    spatial: ClassVar[bool]  # works on (C, H, W) feature maps (else on a flat vector)
    params: ClassVar[dict[str, tuple[int, int]]] = {}  # used LayerSpec fields -> (lo, hi)

    def check(self, layer: LayerSpec) -> str | None:
        """Constraints between parameters beyond their ranges; a message, or None if valid."""
        return None

    @abstractmethod
    def compute_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        """Shape the compute node (matmul, conv) writes."""

    def fused(self, layer: LayerSpec) -> list[tuple[str, dict[str, Any]]]:
        """IR nodes fused into the unit after the compute node: ``(op, attributes)``."""
        return [("relu", {})]

    @abstractmethod
    def weight_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        """Shape of the unit's weight tensor (the layout the exporters use)."""

    def attrs(self, layer: LayerSpec) -> dict[str, Any]:
        """Attributes of the compute node in the IR graph (beyond op, unit and bits)."""
        return {p: getattr(layer, p) for p in self.params}

    # ------------------------------------------------------------------ derived
    def out_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        """Shape the unit writes: the compute node, then its fused nodes."""
        return self.unit(in_shape, layer)[1]

    def counts(self, in_shape: Shape, layer: LayerSpec) -> Counts:
        """MACs = weights x output positions of the compute node (every weight is used once
        per output position); biases = one per output channel."""
        return self.unit(in_shape, layer)[0]

    def unit(self, in_shape: Shape, layer: LayerSpec) -> tuple[Counts, Shape]:
        """Counts and output shape of one unit, memoized: a bag of thousands of nets repeats
        the same (op, input shape, layer) many times, and the batch table is the hot path."""
        key = (self.name, in_shape, layer)
        hit = _UNITS.get(key)
        if hit is not None:
            return hit
        c_shape = self.compute_shape(in_shape, layer)
        shape = c_shape
        for op, attrs in self.fused(layer):
            shape = NODE_SHAPES[op](shape, attrs)
        weights = math.prod(self.weight_shape(in_shape, layer))
        positions = math.prod(c_shape[1:]) if self.spatial else 1
        counts = Counts(
            macs=weights * positions,
            weights=weights,
            biases=layer.width,
            fmap_in=math.prod(in_shape),
            fmap=math.prod(shape),
        )
        if len(_UNITS) > 200_000:
            _UNITS.clear()
        _UNITS[key] = (counts, shape)
        return counts, shape


_UNITS: dict[tuple[Any, ...], tuple[Counts, Shape]] = {}


# the batch table's memo (inag.ir.arch_rows): (kind, input shape, width, kernel, stride, pool,
# bits, input bits, is head) -> (the unit's table row, its output shape)
UNIT_ROWS: dict[tuple[Any, ...], tuple[tuple[int, ...], Shape]] = {}


def clear_unit_cache() -> None:
    """Forget memoized units (an op re-registered under the same name)."""
    _UNITS.clear()
    UNIT_ROWS.clear()


# ---------------------------------------------------------------------------- structure
def _pool(shape: Shape, attrs: dict[str, Any]) -> Shape:
    c, h, w = shape
    return (c, h // attrs["pool"], w // attrs["pool"])


# Shape rules of the IR's structural nodes (no weights, no MACs).
NODE_SHAPES: dict[str, Any] = {
    "relu": lambda shape, attrs: shape,
    "maxpool": _pool,
    "flatten": lambda shape, attrs: (math.prod(shape),),
    "output": lambda shape, attrs: shape,
}
