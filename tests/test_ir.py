"""IR: lowering, passes with contracts, verify, counts against torch and by hand, batch path."""

from __future__ import annotations

import dataclasses
import math
import re

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import mixed_mlp, small_cnn, small_mlp
from torch import nn

from hwmodels.costing import PlatformCoster, cost_pass
from hwmodels.registry import build_models
from inag.arch import ArchSpec, LayerSpec
from inag.ir import (
    COUNTS,
    SHAPES,
    TABLE_FIELDS,
    IRError,
    compute_nodes,
    layer_table,
    layer_table_many,
    lower,
    verify,
)
from inag.platform import load_platform


def _ops(graph) -> list[str]:
    return [graph.nodes[n]["op"] for n in graph.graph["order"]]


# --------------------------------------------------------------------------- lowering
def test_lower_mlp():
    g = lower(small_mlp())
    verify(g)
    assert _ops(g) == ["input", "dense", "relu", "dense", "relu", "dense", "output"]
    assert g.graph["arch_id"] == small_mlp().arch_id
    assert g.graph["facts"] == {"lowered", "shapes", "counts"}
    assert compute_nodes(g) == ["L0.dense", "L1.dense", "head.dense"]
    assert g.graph["units"] == {
        0: ["L0.dense", "L0.relu"],
        1: ["L1.dense", "L1.relu"],
        2: ["head.dense"],
    }
    head = g.nodes["head.dense"]
    assert (head["bits"], head["in_bits"], head["out_bits"]) == (8, 4, 32)
    assert g.nodes["output"]["out_shape"] == (1,)


def test_lower_mlp_flattens_a_multidim_input():
    arch = ArchSpec("mlp", (2, 3), 4, (LayerSpec(5, 8),))
    g = lower(arch)
    verify(g)
    assert _ops(g)[:3] == ["input", "flatten", "dense"]
    assert g.nodes["flatten_in"]["out_shape"] == (6,)
    assert g.nodes["L0.dense"]["weights"] == 30


def test_lower_cnn():
    g = lower(small_cnn())
    verify(g)
    assert _ops(g) == [
        "input",
        "conv",
        "relu",
        "maxpool",
        "conv",
        "relu",
        "flatten",
        "dense",
        "relu",
        "dense",
        "output",
    ]
    shapes = {n: g.nodes[n]["out_shape"] for n in g.graph["order"]}
    assert shapes["L0.conv"] == (4, 8, 8)
    assert shapes["L0.pool"] == (4, 4, 4)
    assert shapes["L1.conv"] == (8, 4, 4)
    assert shapes["flatten"] == (128,)
    assert shapes["output"] == (10,)
    assert g.nodes["L1.conv"]["pad"] == 1


def test_lower_cnn_without_dense_layers_flattens_before_the_head():
    arch = ArchSpec("cnn", (3, 5, 5), 2, (LayerSpec(6, 8, "conv", kernel=5, stride=2),))
    g = lower(arch)
    verify(g)
    assert _ops(g) == ["input", "conv", "relu", "flatten", "dense", "output"]
    assert g.nodes["L0.conv"]["out_shape"] == (6, 3, 3)  # (5 + 4 - 5) // 2 + 1 = 3


# --------------------------------------------------------------------------- pass contracts
@pytest.mark.parametrize("build", [small_mlp, small_cnn, mixed_mlp])
def test_verify_after_every_pass(build, platforms):
    arch = build()
    g = lower(arch, passes=())
    assert g.graph["facts"] == {"lowered"}
    verify(g)
    SHAPES(g)
    assert "shapes" in g.graph["facts"]
    verify(g)
    COUNTS(g)
    assert "counts" in g.graph["facts"]
    verify(g)
    # the step-by-step graph equals the one lower() builds with its standard passes
    full = lower(arch)
    for n in full.graph["order"]:
        assert g.nodes[n] == full.nodes[n]
    # cost passes, one model at a time, verifying after each
    models = build_models(platforms["cortex_m"])
    for model in models.values():
        cost_pass(model)(g)
        assert f"cost:{model.quantity}" in g.graph["facts"]
        verify(g)
    # and every platform through PlatformCoster.cost_graph
    for platform in platforms.values():
        h = PlatformCoster(platform).cost_graph(lower(arch))
        verify(h)


def test_pass_without_required_fact_raises():
    g = lower(small_mlp(), passes=())
    with pytest.raises(IRError, match=r"pass 'count' requires \['shapes'\]"):
        COUNTS(g)
    with pytest.raises(IRError, match=r"requires \['lowered'\]"):
        SHAPES(nx.DiGraph())  # a bare graph was not lowered
    model = next(iter(build_models(_platform()).values()))
    with pytest.raises(IRError, match=r"requires \['counts'\]"):
        cost_pass(model)(g)
    SHAPES(g)
    with pytest.raises(IRError, match=r"requires \['counts'\]"):
        cost_pass(model)(g)
    with pytest.raises(IRError, match="layer_table needs a graph with 'counts'"):
        layer_table(g)


def _platform():
    return load_platform("cortex_m")


# --------------------------------------------------------------------------- verify tampering
def _costed(arch=None):
    g = lower(arch or small_cnn())
    return PlatformCoster(_platform()).cost_graph(g)


def _set(node: str, key: str, value: object):
    return lambda g: g.nodes[node].__setitem__(key, value)


# (what breaks the costed graph, the error verify must name)
BROKEN = {
    "shape": (
        _set("L0.pool", "out_shape", (4, 3, 4)),
        "shape mismatch on edge L0.pool -> L1.conv",
    ),
    "empty shape": (_set("output", "out_shape", (0,)), "node output: empty output shape"),
    "negative macs": (
        _set("L1.conv", "macs", -1),
        "node L1.conv: macs must be a non-negative int, found -1",
    ),
    "macs vs weights": (
        _set("L1.conv", "macs", 4609),
        "MACs/weights/biases 4609/288/8 differ from its op's 4608",
    ),
    "removed edge": (
        lambda g: g.remove_edge("L0.relu", "L0.pool"),
        "missing edge L0.relu -> L0.pool",
    ),
    "extra edge": (lambda g: g.add_edge("input", "output"), "edges outside the chain"),
    "cycle": (lambda g: g.add_edge("output", "input"), "cycle"),
    "bits": (_set("L0.relu", "bits", 9), "node L0.relu: bits must be 2..8"),
    "stray node": (lambda g: g.add_node("orphan", op="relu", bits=8), "does not list every node"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_verify_catches_a_broken_graph(case):
    breaks, message = BROKEN[case]
    g = _costed()
    breaks(g)
    with pytest.raises(IRError, match=re.escape(message)):
        verify(g)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), None])
def test_verify_catches_bad_costs(bad):
    g = _costed()
    if bad is None:
        del g.nodes["L2.dense"]["cost:energy_j"]
    else:
        g.nodes["L2.dense"]["cost:energy_j"] = bad
    with pytest.raises(IRError, match="node L2.dense: cost:energy_j must be finite and >= 0"):
        verify(g)


def test_verify_needs_a_lowered_graph():
    g = lower(small_mlp())
    g.graph["facts"].discard("lowered")
    with pytest.raises(IRError, match="not produced by lower"):
        verify(g)


# --------------------------------------------------------------------------- counts: by hand
def test_hand_count_small_mlp():
    # 1 -> 16 -> 8 -> 1 (head)
    g = lower(small_mlp())
    w = {n: g.nodes[n]["weights"] for n in compute_nodes(g)}
    b = {n: g.nodes[n]["biases"] for n in compute_nodes(g)}
    macs = {n: g.nodes[n]["macs"] for n in compute_nodes(g)}
    f = {n: g.nodes[n]["fmap"] for n in compute_nodes(g)}
    assert w == {"L0.dense": 1 * 16, "L1.dense": 16 * 8, "head.dense": 8 * 1}
    assert b == {"L0.dense": 16, "L1.dense": 8, "head.dense": 1}
    assert macs == w  # a dense layer does one MAC per weight
    assert f == {"L0.dense": 16, "L1.dense": 8, "head.dense": 1}
    # parameters: (16 + 16) + (128 + 8) + (8 + 1) = 177
    assert sum(w.values()) + sum(b.values()) == 177
    assert sum(macs.values()) == 16 + 128 + 8 == 152


def test_hand_count_small_cnn():
    # (1, 8, 8) -> conv 4ch k3 'same' (4, 8, 8) -> pool2 (4, 4, 4)
    #           -> conv 8ch k3 'same' (8, 4, 4) -> flatten 128 -> dense 16 -> head 10
    g = lower(small_cnn())
    n = g.nodes
    assert n["L0.conv"]["weights"] == 4 * 1 * 3 * 3 == 36
    assert n["L0.conv"]["macs"] == 36 * 8 * 8 == 2304  # before the pool: 8x8 positions
    assert n["L0.conv"]["fmap"] == 4 * 4 * 4 == 64  # F(i): after the fused pool
    assert n["L1.conv"]["weights"] == 8 * 4 * 3 * 3 == 288
    assert n["L1.conv"]["macs"] == 288 * 4 * 4 == 4608
    assert n["L1.conv"]["fmap"] == 8 * 4 * 4 == 128
    assert n["L2.dense"]["weights"] == 128 * 16 == 2048
    assert n["head.dense"]["weights"] == 16 * 10 == 160
    params = (36 + 4) + (288 + 8) + (2048 + 16) + (160 + 10)
    assert params == 2570
    assert sum(n[c]["weights"] + n[c]["biases"] for c in compute_nodes(g)) == params
    assert sum(n[c]["macs"] for c in compute_nodes(g)) == 2304 + 4608 + 2048 + 160


# --------------------------------------------------------------------------- counts: torch oracle
def _torch_module(arch: ArchSpec) -> nn.Sequential:
    mods: list[nn.Module] = []
    shape = arch.input_shape
    if arch.kind == "mlp":
        mods.append(nn.Flatten())
        n_in = math.prod(shape)
    else:
        c = shape[0]
    flattened = arch.kind == "mlp"
    for layer in arch.layers:
        if layer.kind == "conv":
            mods.append(
                nn.Conv2d(
                    c, layer.width, layer.kernel, stride=layer.stride, padding=layer.kernel // 2
                )
            )
            mods.append(nn.ReLU())
            if layer.pool > 1:
                mods.append(nn.MaxPool2d(layer.pool))
            c = layer.width
        else:
            if not flattened:
                mods.append(nn.Flatten())
                flattened = True
                n_in = None
            mods.append(
                nn.LazyLinear(layer.width) if n_in is None else nn.Linear(n_in, layer.width)
            )
            mods.append(nn.ReLU())
            n_in = layer.width
    if not flattened:
        mods.append(nn.Flatten())
        n_in = None
    mods.append(
        nn.LazyLinear(arch.output_size) if n_in is None else nn.Linear(n_in, arch.output_size)
    )
    return nn.Sequential(*mods)


def _torch_counts(arch: ArchSpec) -> tuple[int, int, list[tuple[int, ...]]]:
    """(parameters, MACs, output shape of every conv/linear) of the torch twin of ``arch``."""
    net = _torch_module(arch)
    macs = 0
    shapes: list[tuple[int, ...]] = []

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs += mod.in_features * mod.out_features
        shapes.append(tuple(out.shape[1:]))

    with torch.no_grad():
        net(torch.zeros(1, *arch.input_shape))  # materializes lazy layers
        for mod in net:
            if isinstance(mod, nn.Conv2d | nn.Linear):
                mod.register_forward_hook(hook)
        out = net(torch.zeros(1, *arch.input_shape))
    assert out.shape == (1, arch.output_size)
    return sum(p.numel() for p in net.parameters()), macs, shapes


def _sampled_archs(mlp_space, cnn_space) -> list[ArchSpec]:
    rng = np.random.default_rng(2024)
    digits = mlp_space.bind((8, 8), 10)
    rgb = cnn_space.bind((3, 16, 16), 10)
    return (
        mlp_space.sample_many(rng, 5)
        + digits.sample_many(rng, 5)
        + cnn_space.sample_many(rng, 6)
        + rgb.sample_many(rng, 6)
        + [small_mlp(), small_cnn(), mixed_mlp(), mlp_space.largest(), cnn_space.largest()]
    )


def test_counts_match_torch(mlp_space, cnn_space):
    archs = _sampled_archs(mlp_space, cnn_space)
    assert len(archs) >= 20
    torch.manual_seed(0)
    for arch in archs:
        g = lower(arch)
        verify(g)
        nodes = [g.nodes[n] for n in compute_nodes(g)]
        params, macs, shapes = _torch_counts(arch)
        assert sum(n["weights"] + n["biases"] for n in nodes) == params, arch.summary()
        assert sum(n["macs"] for n in nodes) == macs, arch.summary()
        # pre-pool output shape of every conv/dense node
        assert [n["out_shape"] for n in nodes] == shapes, arch.summary()


# --------------------------------------------------------------------------- batch path
def test_layer_table_many_equals_per_graph_tables(mlp_space, cnn_space):
    archs = _sampled_archs(mlp_space, cnn_space)
    batch = layer_table_many(archs)
    assert batch.n_archs == len(archs)
    assert batch.mask.shape == (len(archs), max(a.depth for a in archs) + 1)
    for i, arch in enumerate(archs):
        single = layer_table(lower(arch))
        units = arch.depth + 1  # hidden layers + head
        assert single.mask.shape == (1, units)
        assert batch.mask[i].sum() == units
        assert batch.mask[i, :units].all()
        for name in TABLE_FIELDS:
            np.testing.assert_array_equal(
                getattr(batch, name)[i, :units], getattr(single, name)[0], err_msg=name
            )
            assert not getattr(batch, name)[i, units:].any(), name  # padding is zero


def test_layer_table_select_and_empty():
    archs = [small_mlp(), small_cnn(), mixed_mlp()]
    t = layer_table_many(archs)
    sub = t.select([2, 0])
    np.testing.assert_array_equal(sub.macs, t.macs[[2, 0]])
    assert sub.n_archs == 2
    empty = layer_table_many([])
    assert empty.mask.shape == (0, 0)


def test_lowering_does_not_depend_on_list_or_tuple():
    a = small_cnn()
    b = dataclasses.replace(a, input_shape=list(a.input_shape))  # type: ignore[arg-type]
    assert lower(a).nodes["L0.conv"] == lower(b).nodes["L0.conv"]
