"""Dense (fully connected) layer: ``y = relu(x @ W + b)`` on the flattened input."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from inag.ir.ops.base import LayerOp, Shape

if TYPE_CHECKING:
    from inag.arch import LayerSpec


class Dense(LayerOp):
    name = "dense"
    code = 0
    spatial = False

    def compute_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        return (layer.width,)

    def weight_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        return (math.prod(in_shape), layer.width)  # (in, out): x @ W

    def attrs(self, layer: LayerSpec) -> dict[str, int]:
        return {"units": layer.width}
