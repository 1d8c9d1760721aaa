"""The ONNX writer: integer-only interior, full checker, metadata, dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402

from export import onnx_export, reference  # noqa: E402
from export.qnet import QuantizedNet  # noqa: E402
from inag.arch import ArchSpec, LayerSpec  # noqa: E402

BOUNDARY_IN = "QuantizeLinear"
BOUNDARY_OUT = "DequantizeLinear"
FLOAT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
}
INT_TYPES = {
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.INT32,
    TensorProto.INT64,
}


def cnn() -> ArchSpec:
    return ArchSpec.from_summary("c4k3p2@8-c8k5s2@3-16@6 | head@4", (1, 8, 8), 10)


def mlp() -> ArchSpec:
    return ArchSpec("mlp", (3,), 2, (LayerSpec(16, 2), LayerSpec(8, 7)))


def float_tensors_between_boundaries(model) -> list[str]:
    """Every tensor produced or consumed between the boundary ops that is not an integer.

    Types come from full shape/type inference. The boundary ops' own float operands (the
    graph input ``x``, the scales, the float output ``y``) are the only floats allowed.
    """
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.input, *g.output)}
    types |= {init.name: init.data_type for init in g.initializer}
    bad = []
    n_in = sum(n.op_type == BOUNDARY_IN for n in g.node)
    n_out = sum(n.op_type == BOUNDARY_OUT for n in g.node)
    assert (n_in, n_out) == (1, 1), "exactly one input and one output boundary op"
    for node in g.node:
        if node.op_type in (BOUNDARY_IN, BOUNDARY_OUT):
            continue
        for name in (*node.input, *node.output):
            if not name:
                continue
            t = types.get(name)
            if t is None:
                bad.append(f"{node.op_type}:{name} (untyped)")
            elif t not in INT_TYPES:
                bad.append(f"{node.op_type}:{name} ({TensorProto.DataType.Name(t)})")
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
                bad.append(f"{node.op_type}: float attribute {attr.name}")
    # the boundary: the input op must produce an integer, the output op consume one
    for node in g.node:
        if node.op_type == BOUNDARY_IN and types[node.output[0]] not in INT_TYPES:
            bad.append("QuantizeLinear output is not an integer")
        if node.op_type == BOUNDARY_OUT and types[node.input[0]] not in INT_TYPES:
            bad.append("DequantizeLinear input is not an integer")
    return bad


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def net(request) -> QuantizedNet:
    arch = mlp() if request.param == "mlp" else cnn()
    return QuantizedNet.random(arch, np.random.default_rng(11))


def test_interior_is_integer_only(net):
    model = onnx_export.build_onnx(net)
    assert float_tensors_between_boundaries(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops
    assert ops.isdisjoint({"MatMul", "Gemm", "Conv", "Relu", "Sigmoid", "Floor", "Round"})
    if net.arch.kind == "cnn":
        assert {"ConvInteger", "MaxPool", "Flatten"} <= ops


def test_the_float_walk_catches_a_float_op(net):
    """The walker itself: a float Mul slipped between the boundaries is reported."""
    model = onnx_export.build_onnx(net)
    g = model.graph
    mm = next(n for n in g.node if n.op_type in ("MatMulInteger", "ConvInteger"))
    old = mm.output[0]
    mm.output[0] = old + "_i"
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    g.node.insert(
        list(g.node).index(mm) + 1, oh.make_node("Cast", [old + "_i"], [old + "_f"], to=1)
    )
    g.node.insert(
        list(g.node).index(mm) + 2, oh.make_node("Mul", [old + "_f", "half"], [old + "_m"])
    )
    g.node.insert(list(g.node).index(mm) + 3, oh.make_node("Cast", [old + "_m"], [old], to=6))
    bad = float_tensors_between_boundaries(model)
    assert any("FLOAT" in b for b in bad), bad


def test_full_checker_and_metadata(net, tmp_path):
    path = tmp_path / "m.onnx"
    onnx_export.save_onnx(net, str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["inag.bits"]) == net.bits
    for i, u in enumerate(net.units):
        assert props[f"inag.unit{i}.bits"] == str(u.bits)
    layers = json.loads(props["inag.layers"])
    assert [rec.get("m0") for rec in layers[:-1]] == [u.m0 for u in net.units[:-1]]
    assert [rec.get("shift") for rec in layers[:-1]] == [u.shift for u in net.units[:-1]]
    assert props["inag.arch_id"] == net.arch_id
    assert float(props["inag.input_scale"]) == net.input_scale
    # weights are stored as int8 initializers, biases as int32
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert all(inits[f"L{i}.weight"] == TensorProto.INT8 for i in range(net.arch.depth))
    assert inits["head.bias"] == TensorProto.INT32


def test_dynamic_batch_and_float_boundary(net):
    sess = onnx_export.session(onnx_export.build_onnx(net))
    rng = np.random.default_rng(5)
    for n in (1, 3, 64):
        x = rng.integers(-127, 128, (n, *net.input_shape))
        y_int = onnx_export.run_codes(sess, net, x)
        np.testing.assert_array_equal(y_int, reference.run(net, x))
    # float in, float out: y = y_int * output_scale (float32 at the boundary)
    xf = rng.uniform(-1.2, 1.2, (32, *net.input_shape)).astype(np.float32)
    y, y_int = sess.run(["y", "y_int"], {"x": xf})
    np.testing.assert_allclose(y, y_int * np.float32(net.output_scale), rtol=1e-6)
    # away from exact ties QuantizeLinear agrees with the scheme's input quantization
    codes = reference.quantize_input(net, xf)
    frac = np.abs(xf / net.input_scale - np.floor(xf / net.input_scale) - 0.5)
    if np.all(frac > 1e-3):
        np.testing.assert_array_equal(y_int, reference.run(net, codes))
