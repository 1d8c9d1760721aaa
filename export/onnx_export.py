"""ONNX writer: the integer model as an ONNX graph whose interior is integer-only.

Float appears only at the two boundaries: ``QuantizeLinear`` turns the float input into int8
codes, ``DequantizeLinear`` turns the int32 head accumulator into the float output. Between
them (checked by a test that walks the graph):

- ``MatMulInteger`` / ``ConvInteger`` (int8 or uint8 codes x int8 weights -> int32), no zero
  points (the scheme is symmetric / zero point 0);
- ``Add`` of the int32 bias;
- requantization in integer ops: ONNX ``BitShift`` is unsigned-only, so the rounding shift is
  written on non-negative values: ``Clip(acc, 0)`` (a negative accumulator always requantizes
  to code 0, because ``acc*M0 + 2^(r-1) < 2^r`` whenever ``acc <= 0``), ``Cast`` to int64,
  ``Mul`` by M0, ``Add`` 2^(r-1), ``Div`` by 2^r (integer division of non-negative values is
  the floor), ``Clip`` to [0, 2^b - 1], ``Cast`` to uint8;
- ``MaxPool`` on uint8 codes (monotone, so exact), ``Flatten``.

The graph has two outputs: ``y`` (float, dequantized) and ``y_int`` (the int32 accumulator, for
bit-exact checks). The input boundary differs from the scheme in one measure-zero case:
``QuantizeLinear`` rounds half to even where ``quant.quantize_input`` rounds half up, so an
input exactly halfway between two codes may land one code apart; a ``Clip`` to [-127, 127]
follows it so -128 never reaches the network.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from export.errors import ExportError, optional_module
from export.qnet import INPUT_QMAX, QuantizedNet

OPSET = 21
IR_VERSION = 10
SCHEME = "jacob2017-symmetric-int-v1"


def _onnx() -> Any:
    return optional_module("onnx", "the ONNX export", "onnx")


def build_onnx(net: QuantizedNet) -> Any:
    """The ONNX ``ModelProto`` of ``net`` (batch dimension symbolic: ``N``)."""
    onnx = _onnx()
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(name: str, value: Any, dtype: Any) -> str:
        inits.append(nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        counter[0] += 1
        out = f"{prefix}.{op.lower()}{counter[0]}"
        nodes.append(h.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x_in = h.make_tensor_value_info("x", T.FLOAT, ["N", *net.input_shape])
    s_x = const("x_scale", net.input_scale, np.float32)
    zp = const("x_zero_point", 0, np.int8)
    a = node("QuantizeLinear", ["x", s_x, zp], "input")
    a = node(
        "Clip",
        [a, const("in_lo", -INPUT_QMAX, np.int8), const("in_hi", INPUT_QMAX, np.int8)],
        "input",
    )
    rank = 1 + len(net.input_shape)
    for u in net.units:
        p = f"L{u.index}" if not u.head else "head"
        if u.flatten and rank > 2:
            a = node("Flatten", [a], p, axis=1)
            rank = 2
        w = const(f"{p}.weight", u.weight, np.int8)
        if u.kind == "dense":
            acc = node("MatMulInteger", [a, w], p)
            b = const(f"{p}.bias", u.bias, np.int32)
        else:
            acc = node(
                "ConvInteger",
                [a, w],
                p,
                kernel_shape=[u.kernel, u.kernel],
                strides=[u.stride, u.stride],
                pads=[u.pad] * 4,
            )
            b = const(f"{p}.bias", u.bias.reshape(-1, 1, 1), np.int32)
        acc = node("Add", [acc, b], p)
        if u.head:
            nodes.append(h.make_node("Identity", [acc], ["y_int"], name="head.y_int"))
            s_y = const("y_scale", net.output_scale, np.float32)
            zp_y = const("y_zero_point", 0, np.int32)
            nodes.append(
                h.make_node("DequantizeLinear", ["y_int", s_y, zp_y], ["y"], name="head.dequant")
            )
            break
        assert u.m0 is not None and u.shift is not None
        t = node("Clip", [acc, const(f"{p}.zero32", 0, np.int32)], p)
        t = node("Cast", [t], p, to=T.INT64)
        t = node("Mul", [t, const(f"{p}.m0", u.m0, np.int64)], p)
        t = node("Add", [t, const(f"{p}.round", 1 << (u.shift - 1), np.int64)], p)
        t = node("Div", [t, const(f"{p}.pow2shift", 1 << u.shift, np.int64)], p)
        t = node(
            "Clip",
            [t, const(f"{p}.qmin", 0, np.int64), const(f"{p}.qmax", u.qmax, np.int64)],
            p,
        )
        a = node("Cast", [t], p, to=T.UINT8)
        if u.kind == "conv" and u.pool > 1:
            a = node("MaxPool", [a], p, kernel_shape=[u.pool] * 2, strides=[u.pool] * 2)
        rank = 1 + len(u.out_shape)
    outputs = [
        h.make_tensor_value_info("y", T.FLOAT, ["N", net.output_size]),
        h.make_tensor_value_info("y_int", T.INT32, ["N", net.output_size]),
    ]
    graph = h.make_graph(nodes, f"inag_{net.arch_id}", [x_in], outputs, initializer=inits)
    model = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET)],
        producer_name="inag",
        doc_string=f"INAG integer-only network {net.arch.summary()} ({SCHEME})",
    )
    model.ir_version = IR_VERSION
    meta = {
        "inag.scheme": SCHEME,
        "inag.arch": net.arch.to_json(),
        "inag.arch_id": net.arch_id,
        "inag.bits": json.dumps(net.bits),
        "inag.input_scale": repr(net.input_scale),
        "inag.output_scale": repr(net.output_scale),
        "inag.layers": json.dumps(net.records()),
    }
    for i, u in enumerate(net.units):
        meta[f"inag.unit{i}.bits"] = str(u.bits)
    onnx.helper.set_model_props(model, meta)
    return model


def check(model: Any) -> None:
    """``onnx.checker`` with the full check (shape inference included)."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - a writer bug
        raise ExportError(f"the ONNX model fails onnx.checker: {exc}") from exc


def save_onnx(net: QuantizedNet, path: str) -> Any:
    model = build_onnx(net)
    check(model)
    _onnx().save(model, path)
    return model


def session(model_or_path: Any) -> Any:
    """An onnxruntime CPU session (single-threaded: batch-1 latency, reproducible timing)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError(
            "running the ONNX model needs onnxruntime: pip install 'inag[onnx]'"
        ) from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = (
        model_or_path.SerializeToString()
        if hasattr(model_or_path, "SerializeToString")
        else (str(model_or_path))
    )
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_codes(sess: Any, net: QuantizedNet, x_codes: np.ndarray) -> np.ndarray:
    """Feed int8 codes through the float boundary: ``x = code * s_x`` in float32 quantizes
    back to exactly ``code`` (the quotient is within an ulp of an integer)."""
    x = np.asarray(x_codes, dtype=np.float32) * np.float32(net.input_scale)
    return sess.run(["y_int"], {"x": x})[0]
