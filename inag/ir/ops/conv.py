"""2-D convolution with 'same' zero padding (``kernel // 2``), a stride, and a fused ReLU and
floor max-pool (``pool`` 1 = none). Max-pool commutes with monotone quantization, so it is
exact in the integer model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inag.ir.ops.base import LayerOp, Shape

if TYPE_CHECKING:
    from inag.arch import LayerSpec


def conv_hw(h: int, w: int, kernel: int, stride: int) -> tuple[int, int]:
    """Spatial size after a 'same'-padded strided convolution (before any pool)."""
    pad = kernel // 2
    return (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1


class Conv(LayerOp):
    name = "conv"
    code = 1
    spatial = True
    params = {"kernel": (1, 15), "stride": (1, 8), "pool": (1, 8)}

    def check(self, layer: LayerSpec) -> str | None:
        if layer.kernel % 2 == 0:
            return f"conv kernel must be odd ('same' padding), found {layer.kernel}"
        return None

    def compute_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        _, h, w = in_shape
        return (layer.width, *conv_hw(h, w, layer.kernel, layer.stride))

    def fused(self, layer: LayerSpec) -> list[tuple[str, dict[str, Any]]]:
        return [("relu", {})] + ([("maxpool", {"pool": layer.pool})] if layer.pool > 1 else [])

    def weight_shape(self, in_shape: Shape, layer: LayerSpec) -> Shape:
        return (layer.width, in_shape[0], layer.kernel, layer.kernel)  # (out, in, k, k)

    def attrs(self, layer: LayerSpec) -> dict[str, Any]:
        return {
            "channels": layer.width,
            "kernel": layer.kernel,
            "stride": layer.stride,
            "pad": layer.kernel // 2,
        }
