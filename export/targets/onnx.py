"""Integer-only ONNX (MatMulInteger / ConvInteger), run by onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.qnet import QuantizedNet
from export.targets.base import ExportTarget, Runner


class OnnxTarget(ExportTarget):
    name = "onnx"
    summary = "integer-only ONNX model (onnxruntime runs MatMulInteger/ConvInteger)"

    def write(
        self, net: QuantizedNet, out: Path, stem: str, platform: Any, ctx: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Path]]:
        from export import onnx_export

        path = out / f"{stem}.onnx"
        onnx_export.save_onnx(net, str(path))
        info = {
            "file": path.name,
            "opset": onnx_export.OPSET,
            "graph_inputs": ["x"],
            "graph_outputs": ["y", "y_int"],
        }
        return info, [path]

    def runner(
        self, net: QuantizedNet, out: Path, info: dict[str, Any]
    ) -> tuple[Runner | None, str]:
        from export import onnx_export

        sess = onnx_export.session(str(out / info["file"]))
        return (lambda x: onnx_export.run_codes(sess, net, x)), "onnxruntime"
