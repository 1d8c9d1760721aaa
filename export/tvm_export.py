"""TVM (Relax, apache-tvm 0.27) builder: the integer model as a Relax graph, compiled.

The graph is built directly from the :class:`QuantizedNet` with ``relax.BlockBuilder`` — not
imported from ONNX, because TVM's ONNX importer runs quantized graphs as float (it has no
ConvInteger, and QDQ pairs become simulated quantization). Per unit: int8/uint8 x int8
``matmul``/``conv2d`` with ``out_dtype="int32"``, int32 bias add, then requantization exactly
as ``export.quant.requantize`` writes it (int64 multiply by M0, add 2^(r-1), arithmetic
``right_shift`` by r, clip, cast to uint8), ``max_pool2d`` on uint8 codes.

The compiled function is integer-only end to end: ``main(x: int8[n, *input_shape]) ->
int32[n, output_size]`` with a symbolic batch ``n``; quantizing the float input and
dequantizing the output (scales in the manifest) is the caller's boundary.

Targets are the platform's ``measure.tvm_target`` dicts (TVM >= 0.24 rejects strings). TVM
0.27 has no bare-metal runtime (microTVM was removed in 0.19), so bare-metal platforms are
refused with a pointer to the standalone C export.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, optional_module
from export.qnet import INPUT_QMAX, QuantizedNet

BARE_METAL_RUNTIMES = ("c_standalone",)


def _tvm() -> Any:
    optional_module("tvm.relax", "the TVM export", "tvm", "apache-tvm")
    return sys.modules["tvm"]


def build_relax(net: QuantizedNet) -> Any:
    """The Relax ``IRModule`` of ``net`` (function ``main``, symbolic batch)."""
    return build_relax_many({"main": net})


def build_relax_many(nets: dict[str, QuantizedNet]) -> Any:
    """One ``IRModule`` holding several networks, one function each (tests compile many
    nets at once: TVM's per-build overhead dominates small nets)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    for name, net in nets.items():
        _emit_function(bb, name, net)
    return bb.get()


def _emit_function(bb: Any, name: str, net: QuantizedNet) -> None:
    tvm = _tvm()
    from tvm import relax

    n = tvm.tirx.Var("n", "int64") if hasattr(tvm, "tirx") else tvm.tir.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, *net.input_shape), "int8"))
    with bb.function(name, [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.clip(x, -INPUT_QMAX, INPUT_QMAX))
            rank = 1 + len(net.input_shape)
            out = a
            for u in net.units:
                if u.flatten and rank > 2:
                    a = bb.emit(relax.op.reshape(a, (n, int(np.prod(u.in_shape)))))
                    rank = 2
                w = relax.const(u.weight, "int8")
                if u.kind == "dense":
                    acc = bb.emit(relax.op.matmul(a, w, out_dtype="int32"))
                    b = relax.const(u.bias, "int32")
                else:
                    acc = bb.emit(
                        relax.op.nn.conv2d(
                            a,
                            w,
                            strides=(u.stride, u.stride),
                            padding=(u.pad, u.pad, u.pad, u.pad),
                            out_dtype="int32",
                        )
                    )
                    b = relax.const(u.bias.reshape(-1, 1, 1), "int32")
                acc = bb.emit(relax.op.add(acc, b))
                if u.head:
                    out = acc
                    break
                assert u.m0 is not None and u.shift is not None
                t = bb.emit(relax.op.astype(acc, "int64"))
                t = bb.emit(relax.op.multiply(t, relax.const(u.m0, "int64")))
                t = bb.emit(relax.op.add(t, relax.const(1 << (u.shift - 1), "int64")))
                t = bb.emit(relax.op.right_shift(t, relax.const(u.shift, "int64")))
                t = bb.emit(relax.op.clip(t, 0, u.qmax))
                a = bb.emit(relax.op.astype(t, "uint8"))
                if u.kind == "conv" and u.pool > 1:
                    a = bb.emit(
                        relax.op.nn.max_pool2d(
                            a, pool_size=(u.pool, u.pool), strides=(u.pool, u.pool), padding=(0, 0)
                        )
                    )
                rank = 1 + len(u.out_shape)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)


def check_target(platform: Any) -> dict[str, Any]:
    """The platform's TVM target dict, or an :class:`ExportError` saying why there is none."""
    m = platform.measure
    if m.runtime in BARE_METAL_RUNTIMES:
        raise ExportError(
            f"platform {platform.name!r} is bare-metal (runtime {m.runtime}): TVM 0.27 has no "
            "bare-metal runtime (microTVM was removed in TVM 0.19), so a TVM artifact could not "
            "run there. Use `inag export --target c` for a standalone C99 build instead."
        )
    if not m.tvm_target:
        raise ExportError(
            f"platform {platform.name!r} has no measure.tvm_target (runtime {m.runtime}); "
            "use --target onnx or --target c, or add a TVM target dict to its YAML"
        )
    return dict(m.tvm_target)


def is_cross(target: dict[str, Any]) -> bool:
    """True when ``target`` does not run on this machine (an mtriple for another ISA)."""
    import platform as _pf

    triple = str(target.get("mtriple", ""))
    if not triple:
        return False
    host = _pf.machine().lower()
    return not (triple.startswith(host) or (host == "amd64" and triple.startswith("x86_64")))


def compile_net(net: QuantizedNet, target: dict[str, Any]) -> Any:
    """Compile to a Relax ``VMExecutable`` for ``target`` (a TVM target dict)."""
    return compile_module(build_relax(net), target)


def compile_module(mod: Any, target: dict[str, Any]) -> Any:
    tvm = _tvm()
    try:
        tgt = tvm.target.Target(target)
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes
        raise ExportError(f"invalid TVM target {target!r}: {exc}") from None
    return tvm.compile(mod, target=tgt)


def export_library(ex: Any, out_dir: Path, stem: str, target: dict[str, Any]) -> dict[str, Any]:
    """Write the compiled module: a loadable ``.so`` on the host (or with a cross compiler),
    else an object archive ``.tar`` to link on the device. Returns what was written and how."""
    if not is_cross(target):
        path = out_dir / f"{stem}.so"
        ex.export_library(str(path))
        return {"library": path.name, "kind": "shared library (host)", "linked": True}
    triple = str(target["mtriple"])
    gcc = shutil.which(f"{triple}-gcc") or shutil.which(
        f"{triple.split('-')[0]}-linux-gnu-gcc" if "linux" in triple else ""
    )
    if gcc:
        from tvm.support import cc  # type: ignore[attr-defined]

        path = out_dir / f"{stem}.so"
        ex.export_library(str(path), fcompile=cc.cross_compiler(gcc))
        return {"library": path.name, "kind": f"shared library ({triple}, {gcc})", "linked": True}
    path = out_dir / f"{stem}.tar"
    ex.export_library(str(path))
    return {
        "library": path.name,
        "kind": f"object archive ({triple})",
        "linked": False,
        "note": (
            f"no cross compiler {triple}-gcc on this machine: the .tar holds the compiled "
            "objects; link them on the device (or where the cross gcc exists) with "
            "tvm.runtime.load_module(path) after tvm.support.cc.create_shared, or upload the "
            ".tar over TVM RPC (the RPC server links it with the device's gcc)"
        ),
    }


def run_vm(
    ex_or_lib: Any, x_codes: np.ndarray, device: Any = None, func: str = "main"
) -> np.ndarray:
    """Run ``func`` on int8 codes with the TVM runtime (local CPU unless ``device``)."""
    tvm = _tvm()
    from tvm import relax

    dev = device if device is not None else tvm.cpu()
    vm = relax.VirtualMachine(ex_or_lib, dev)
    x = tvm.runtime.tensor(np.ascontiguousarray(x_codes, dtype=np.int8), dev)
    return vm[func](x).numpy()


def load_library(path: str | Path) -> Any:
    return _tvm().runtime.load_module(str(path))
