"""The contract every hardware model must meet, built-in or plug-in.

``check_conformance(model_cls, platform, params)`` instantiates the model and asserts that it

- returns an (N, L) array for N architectures padded to L units, and a total per architecture;
- is finite and non-negative on every real unit;
- is deterministic (the same table twice, and a fresh instance, give identical numbers) and
  independent of the batch (an architecture costs the same alone and among others);
- agrees between the per-node path (``node_cost`` on IR nodes) and the batch path, per unit;
- is non-decreasing when an architecture grows (every width doubled; one more layer), i.e.
  in MACs, weights and feature maps;
- is non-decreasing when every bit-width goes up (flat is allowed: hardware that computes in
  containers does not get cheaper below them).

Plug-in authors can run it on their model::

    from hwmodel_conformance import check_conformance
    check_conformance(MyEnergy, load_platform("cortex_m"), {"pj_per_mac": {...}})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hwmodels.base import HardwareModel
from inag.arch import MAX_BITS, ArchSpec, LayerSpec
from inag.ir import compute_nodes, layer_table_many, lower
from inag.platform import Platform
from inag.space import load_space

REL = 1e-12  # round-off allowed where two paths compute the same number differently


def conformance_archs(n_per_space: int = 6, seed: int = 0) -> list[ArchSpec]:
    """A deterministic mix of MLPs and CNNs of several shapes, depths and bit-widths."""
    rng = np.random.default_rng(seed)
    mlp = load_space("mlp")
    cnn = load_space("cnn")
    archs = (
        mlp.sample_many(rng, n_per_space)
        + mlp.bind((8, 8), 10).sample_many(rng, n_per_space)
        + cnn.sample_many(rng, n_per_space)
        + cnn.bind((3, 16, 16), 10).sample_many(rng, n_per_space)
    )
    archs.append(
        ArchSpec(
            "cnn",
            (2, 9, 7),
            3,
            (LayerSpec(5, 3, "conv", kernel=3, stride=2), LayerSpec(7, 6, "conv", 1, 1, 2)),
            output_bits=4,
        )
    )
    archs.append(ArchSpec("mlp", (5,), 2, (LayerSpec(3, 2),), output_bits=2))
    return archs


def wider(arch: ArchSpec) -> ArchSpec:
    """Every hidden layer twice as wide (more MACs, weights and feature maps)."""
    return dataclasses.replace(
        arch, layers=tuple(dataclasses.replace(la, width=2 * la.width) for la in arch.layers)
    )


def deeper(arch: ArchSpec) -> ArchSpec:
    """One more layer: a copy of the last hidden layer (a shape-keeping copy for convs)."""
    layers = list(arch.layers)
    last = layers[-1]
    if last.kind == "conv":
        layers.append(dataclasses.replace(last, stride=1, pool=1))
    else:
        layers.append(last)
    return dataclasses.replace(arch, layers=tuple(layers))


def more_bits(arch: ArchSpec, step: int) -> ArchSpec:
    """Every bit-width (hidden layers and head) up by ``step``, capped at 8."""
    return dataclasses.replace(
        arch,
        layers=tuple(
            dataclasses.replace(la, bits=min(MAX_BITS, la.bits + step)) for la in arch.layers
        ),
        output_bits=min(MAX_BITS, arch.output_bits + step),
    )


def _assert_not_below(grown: np.ndarray, base: np.ndarray, what: str, archs) -> None:
    bad = np.flatnonzero(grown < base * (1 - REL) - 1e-300)
    assert not bad.size, (
        f"{what}: cost went down for {archs[bad[0]].summary()}: "
        f"{base[bad[0]]!r} -> {grown[bad[0]]!r}"
    )


def check_conformance(
    model_cls: type[HardwareModel],
    platform: Platform,
    params: Mapping[str, Any] | None = None,
    archs: Sequence[ArchSpec] | None = None,
) -> dict[str, np.ndarray]:
    """Assert the hardware-model contract; returns the totals it computed (for reporting)."""
    assert isinstance(model_cls, type) and issubclass(model_cls, HardwareModel)
    assert isinstance(model_cls.name, str) and model_cls.name
    assert model_cls.reduce in ("sum", "max")
    archs = list(archs) if archs is not None else conformance_archs()
    model = model_cls(platform, params)
    table = layer_table_many(archs)
    n, n_units = table.mask.shape

    # shape, finite, non-negative: on what the plug-in itself returns, not only the checked API
    raw = np.asarray(model._layer_cost(table), dtype=np.float64)
    assert raw.shape == (n, n_units), f"_layer_cost returned {raw.shape}, expected {(n, n_units)}"
    real = raw[table.mask]
    assert np.all(np.isfinite(real)), "non-finite cost on a real unit"
    assert np.all(real >= 0), "negative cost on a real unit"
    per = model.layer_cost(table)
    assert per.shape == (n, n_units)
    np.testing.assert_array_equal(per[table.mask], real)
    assert not per[~table.mask].any(), "padding must cost nothing"
    totals = model.total(table)
    assert totals.shape == (n,)
    assert np.all(np.isfinite(totals)) and np.all(totals >= 0)
    agg = per.max(axis=1) if model.reduce == "max" else per.sum(axis=1)
    np.testing.assert_allclose(totals - agg, totals[0] - agg[0], rtol=0, atol=1e-9 * totals.max())

    # deterministic: same input twice, and a fresh instance
    np.testing.assert_array_equal(model.layer_cost(table), per)
    np.testing.assert_array_equal(model.total(table), totals)
    np.testing.assert_array_equal(model_cls(platform, params).layer_cost(table), per)

    # batch-independent and per-node path == batch path, unit by unit
    for i, arch in enumerate(archs):
        alone = model.layer_cost(layer_table_many([arch]))
        units = int(table.mask[i].sum())
        np.testing.assert_allclose(alone[0], per[i, :units], rtol=REL, atol=0)
        graph = lower(arch)
        nodes = compute_nodes(graph)
        assert len(nodes) == units
        by_node = np.array([model.node_cost(graph.nodes[name]) for name in nodes])
        np.testing.assert_allclose(by_node, per[i, :units], rtol=REL, atol=0, err_msg=str(i))

    # non-decreasing as networks grow (MACs, weights, feature maps)
    for grow in (wider, deeper):
        grown = [grow(a) for a in archs]
        _assert_not_below(model.total(layer_table_many(grown)), totals, grow.__name__, archs)
        # and per unit for the ones that keep their unit structure
        if grow is wider:
            g_per = model.layer_cost(layer_table_many(grown))
            _assert_not_below(g_per[table.mask], per[table.mask], "wider (per unit)", archs)

    # non-decreasing in bits (flat allowed)
    prev = totals
    prev_archs = archs
    for step in range(1, 7):
        up = [more_bits(a, step) for a in archs]
        now = model.total(layer_table_many(up))
        _assert_not_below(now, prev, f"bits +{step}", prev_archs)
        prev, prev_archs = now, up
    return {"totals": totals, "per_layer": per}
