"""The op registry: one definition per layer kind, read by every stage.

A property test proves the batched table (the compiled view) equal to the per-graph path over
the MLP and CNN spaces; a test-only op registered here travels through ArchSpec checks,
lowering, verification, the table, costing and the quantized net without touching any other
file (docs/extending.md, recipe 1)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels import PlatformCoster
from hwmodels.testing import check_conformance
from inag.arch import ArchError, ArchSpec, LayerSpec
from inag.ir import TABLE_FIELDS, compute_nodes, layer_table, layer_table_many, lower, verify
from inag.ir.ops import LayerOp, UnknownOpError, available_ops, get_op, register_op, unregister_op
from inag.platform import load_platform
from inag.space import load_space


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from(["mlp", "mlp64", "cnn", "cnn32"]))
def test_batched_table_equals_the_graph_path(seed, which):
    space = {
        "mlp": lambda: load_space("mlp"),
        "mlp64": lambda: load_space("mlp").bind((8, 8), 10),
        "cnn": lambda: load_space("cnn"),
        "cnn32": lambda: load_space("cnn").bind((3, 32, 32), 10),
    }[which]()
    archs = space.sample_many(np.random.default_rng(seed), 4)
    batch = layer_table_many(archs)
    for i, arch in enumerate(archs):
        g = lower(arch)
        verify(g)
        single = layer_table(g)
        units = arch.depth + 1
        for name in TABLE_FIELDS:
            np.testing.assert_array_equal(
                getattr(batch, name)[i, :units], getattr(single, name)[0], err_msg=name
            )


def test_unknown_kind_lists_the_ops():
    with pytest.raises(UnknownOpError, match="known: conv, dense"):
        get_op("lstm")
    with pytest.raises(ArchError, match="unknown layer kind 'lstm'"):
        LayerSpec(4, 8, "lstm")


class Pointwise(LayerOp):
    """A test-only op: a 1x1 convolution (no parameters beyond width and bits)."""

    name = "pointwise"
    code = 90
    spatial = True

    def compute_shape(self, in_shape: tuple[int, ...], layer: Any) -> tuple[int, ...]:
        return (layer.width, *in_shape[1:])

    def weight_shape(self, in_shape: tuple[int, ...], layer: Any) -> tuple[int, ...]:
        return (layer.width, in_shape[0], 1, 1)


@pytest.fixture
def pointwise():
    op = register_op(Pointwise())
    yield op
    unregister_op(op.name)


def test_a_new_op_is_one_class(pointwise):
    arch = ArchSpec(
        "cnn", (3, 6, 6), 4, (LayerSpec(5, 6, "pointwise"), LayerSpec(4, 8, "conv", kernel=3))
    )
    assert "pointwise" in available_ops()
    assert arch.to_dict()["layers"][0] == {"kind": "pointwise", "width": 5, "bits": 6}
    assert ArchSpec.from_json(arch.to_json()) == arch
    g = lower(arch)
    verify(g)
    node = g.nodes[compute_nodes(g)[0]]
    assert node["op"] == "pointwise" and node["out_shape"] == (5, 6, 6)
    assert node["macs"] == 5 * 3 * 36 and node["weights"] == 15 and node["biases"] == 5
    t = layer_table_many([arch])
    assert t.op[0, 0] == 90 and t.macs[0, 0] == 5 * 3 * 36
    np.testing.assert_array_equal(layer_table(g).macs, t.macs)
    for name in ("bitfusion", "cortex_m"):
        plat = load_platform(name)
        res = PlatformCoster(plat).cost([arch])
        assert all(math.isfinite(v[0]) and v[0] > 0 for v in res.totals.values())
        for model in PlatformCoster(plat).models.values():
            check_conformance(type(model), plat, model.params, archs=[arch])
    from export.qnet import unit_shapes

    assert unit_shapes(arch)[0]["weight_shape"] == (5, 3, 1, 1)
    with pytest.raises(ArchError, match="no kernel"):
        LayerSpec(5, 6, "pointwise", kernel=3)


def test_registry_refuses_clashes(pointwise):
    with pytest.raises(ValueError, match="already registered"):
        register_op(Pointwise())

    class Clash(Pointwise):
        name = "other"

    with pytest.raises(ValueError, match="code 90"):
        register_op(Clash())
