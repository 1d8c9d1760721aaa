"""TVM (Relax) library for the platform's ``measure.tvm_target``: a host ``.so``, a
cross-linked one, or an object archive to link on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.qnet import QuantizedNet
from export.targets.base import ExportTarget, Runner


class TvmTarget(ExportTarget):
    name = "tvm"
    summary = "TVM Relax library for the platform's tvm_target (host .so or cross-built)"
    measurable = True

    def prepare(self, net: QuantizedNet, platform: Any) -> dict[str, Any]:
        from export.tvm_export import check_target

        return {"target": check_target(platform)}

    def write(
        self, net: QuantizedNet, out: Path, stem: str, platform: Any, ctx: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Path]]:
        from export import tvm_export

        target = ctx["target"]
        lib = tvm_export.export_library(tvm_export.compile_net(net, target), out, stem, target)
        info = {"target": target, **lib, "entry": "main(x: int8[n, *input]) -> int32[n, out]"}
        return info, [out / lib["library"]]

    def runner(
        self, net: QuantizedNet, out: Path, info: dict[str, Any]
    ) -> tuple[Runner | None, str]:
        from export import tvm_export

        if not info["linked"] or tvm_export.is_cross(info["target"]):
            return None, "cross-compiled: cannot run on this machine"
        loaded = tvm_export.load_library(out / info["library"])
        return (lambda x: tvm_export.run_vm(loaded, x)), "tvm"
