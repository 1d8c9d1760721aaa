"""The contract every hardware model must meet, built-in or plug-in (shipped, importable).

:func:`check_conformance` instantiates a model on a platform and checks that it

- returns an (N, L) array for N architectures padded to L units, and a total per architecture;
- is finite and non-negative on every real unit;
- is deterministic (the same table twice, and a fresh instance, give identical numbers) and
  independent of the batch (an architecture costs the same alone and among others);
- agrees between the per-node path (``node_cost`` on IR nodes) and the batch path, per unit;
- is non-decreasing when an architecture grows (every width doubled; one more layer), i.e.
  in MACs, weights and feature maps;
- is non-decreasing when every bit-width goes up (flat is allowed: hardware that computes in
  containers does not get cheaper below them), unless the model declares a reason in
  ``bits_exception()`` (a calibrated standalone-C latency model: 8-bit weights are read
  directly, sub-8-bit ones unpacked), which validation reports.

A failure raises :class:`ConformanceError` (an ``AssertionError``) whose message starts with
the property that failed. ``inag platforms validate`` runs it on a descriptor's models.

Plug-in authors subclass the ready test case::

    from hwmodels.testing import HardwareModelConformance

    class TestMyEnergy(HardwareModelConformance):
        model_cls = MyEnergy
        platform = "cortex_m"                     # a bundled name or a YAML path
        params = {"pj_per_mac": {"value": 0.3, "source": "my datasheet"}}
"""

from __future__ import annotations

import dataclasses
import unittest
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hwmodels.base import HardwareModel
from inag.arch import MAX_BITS, ArchSpec, LayerSpec
from inag.ir import compute_nodes, layer_table_many, lower
from inag.platform import Platform, load_platform

REL = 1e-12  # round-off allowed where two paths compute the same number differently
WIDTHS = (2, 4, 8, 16, 32, 48, 64)
CHANNELS = (4, 8, 16, 32)


class ConformanceError(AssertionError):
    """A hardware model breaks its contract; the message names the property."""


def _mlp(rng: np.random.Generator, input_shape: tuple[int, ...], out: int) -> ArchSpec:
    depth = int(rng.integers(1, 7))
    layers = tuple(
        LayerSpec(int(rng.choice(WIDTHS)), int(rng.integers(2, 9))) for _ in range(depth)
    )
    return ArchSpec("mlp", input_shape, out, layers, output_bits=int(rng.integers(2, 9)))


def _cnn(rng: np.random.Generator, input_shape: tuple[int, int, int], out: int) -> ArchSpec:
    side = min(input_shape[1:])
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        pool = 2 if side >= 4 and rng.random() < 0.5 else 1
        k = int(rng.choice((1, 3, 5)))
        layers.append(LayerSpec(int(rng.choice(CHANNELS)), int(rng.integers(2, 9)), "conv",
                                kernel=k, pool=pool))  # fmt: skip
        side //= pool
    for _ in range(int(rng.integers(0, 3))):
        layers.append(LayerSpec(int(rng.choice(WIDTHS)), int(rng.integers(2, 9))))
    return ArchSpec("cnn", input_shape, out, tuple(layers), output_bits=int(rng.integers(2, 9)))


def conformance_archs(n_per_space: int = 6, seed: int = 0) -> list[ArchSpec]:
    """A deterministic mix of MLPs and CNNs of several shapes, depths and bit-widths."""
    rng = np.random.default_rng(seed)
    archs = (
        [_mlp(rng, (1,), 1) for _ in range(n_per_space)]
        + [_mlp(rng, (8, 8), 10) for _ in range(n_per_space)]
        + [_cnn(rng, (1, 8, 8), 10) for _ in range(n_per_space)]
        + [_cnn(rng, (3, 16, 16), 10) for _ in range(n_per_space)]
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
    layers.append(dataclasses.replace(last, stride=1, pool=1) if last.kind == "conv" else last)
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


def _check(prop: str, ok: bool, detail: str = "") -> None:
    if not ok:
        raise ConformanceError(f"{prop}: {detail}" if detail else prop)


def _numpy(prop: str, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except AssertionError as exc:
        raise ConformanceError(f"{prop}: {str(exc).strip()}") from None


def _not_below(prop: str, grown: np.ndarray, base: np.ndarray, what: str, archs: Any) -> None:
    bad = np.flatnonzero(grown < base * (1 - REL) - 1e-300)
    _check(
        prop,
        not bad.size,
        f"{what}: cost went down for {archs[bad[0]].summary()}: "
        f"{base[bad[0]]!r} -> {grown[bad[0]]!r}"
        if bad.size
        else "",
    )


def check_conformance(
    model_cls: type[HardwareModel],
    platform: Platform,
    params: Mapping[str, Any] | None = None,
    archs: Sequence[ArchSpec] | None = None,
) -> dict[str, np.ndarray]:
    """Check the hardware-model contract; returns the totals it computed (for reporting)."""
    _check("a HardwareModel subclass", isinstance(model_cls, type)
           and issubclass(model_cls, HardwareModel))  # fmt: skip
    _check("a name", isinstance(model_cls.name, str) and bool(model_cls.name))
    _check("reduce is sum or max", model_cls.reduce in ("sum", "max"))
    archs = list(archs) if archs is not None else conformance_archs()
    model = model_cls(platform, params)
    table = layer_table_many(archs)
    n, n_units = table.mask.shape

    # shape, finite, non-negative: on what the plug-in itself returns, not only the checked API
    raw = np.asarray(model._layer_cost(table), dtype=np.float64)
    _check("shape", raw.shape == (n, n_units),
           f"_layer_cost returned {raw.shape}, expected {(n, n_units)}")  # fmt: skip
    real = raw[table.mask]
    _check("finite", bool(np.all(np.isfinite(real))), "non-finite cost on a real unit")
    _check("non-negative", bool(np.all(real >= 0)), "negative cost on a real unit")
    per = model.layer_cost(table)
    _numpy("validated API", np.testing.assert_array_equal, per[table.mask], real)
    _check("padding", not per[~table.mask].any(), "padding must cost nothing")
    totals = model.total(table)
    _check("totals", totals.shape == (n,) and bool(np.all(np.isfinite(totals) & (totals >= 0))))

    # deterministic: same input twice, and a fresh instance
    _numpy("deterministic", np.testing.assert_array_equal, model.layer_cost(table), per)
    _numpy("deterministic", np.testing.assert_array_equal, model.total(table), totals)
    _numpy("deterministic", np.testing.assert_array_equal,
           model_cls(platform, params).layer_cost(table), per)  # fmt: skip

    # batch-independent and per-node path == batch path, unit by unit
    for i, arch in enumerate(archs):
        alone = model.layer_cost(layer_table_many([arch]))
        units = int(table.mask[i].sum())
        _numpy("batch-independent", np.testing.assert_allclose, alone[0], per[i, :units],
               rtol=REL, atol=0)  # fmt: skip
        graph = lower(arch)
        nodes = compute_nodes(graph)
        _check("per-node path", len(nodes) == units, f"{len(nodes)} nodes for {units} units")
        by_node = np.array([model.node_cost(graph.nodes[name]) for name in nodes])
        _numpy("per-node path equals batch path", np.testing.assert_allclose, by_node,
               per[i, :units], rtol=REL, atol=0, err_msg=str(i))  # fmt: skip

    # non-decreasing as networks grow (MACs, weights, feature maps)
    for grow in (wider, deeper):
        grown = [grow(a) for a in archs]
        prop = f"non-decreasing in size ({grow.__name__})"
        _not_below(prop, model.total(layer_table_many(grown)), totals, grow.__name__, archs)
        if grow is wider:  # and per unit, where the unit structure is kept
            g_per = model.layer_cost(layer_table_many(grown))
            _not_below(prop, g_per[table.mask], per[table.mask], "wider (per unit)", archs)

    # non-decreasing in bits (flat allowed), unless the model declares why not
    if model.bits_exception():
        return {"totals": totals, "per_layer": per}
    prev, prev_archs = totals, archs
    for step in range(1, 7):
        up = [more_bits(a, step) for a in archs]
        now = model.total(layer_table_many(up))
        _not_below("non-decreasing in bits", now, prev, f"bits +{step}", prev_archs)
        prev, prev_archs = now, up
    return {"totals": totals, "per_layer": per}


class HardwareModelConformance(unittest.TestCase):
    """Subclass with ``model_cls`` (and ``platform``, ``params``) to run the contract."""

    model_cls: ClassVar[type[HardwareModel] | None] = None
    platform: ClassVar[str] = "cortex_m"
    params: ClassVar[Mapping[str, Any] | None] = None

    def test_conformance(self) -> None:
        if self.model_cls is None:
            self.skipTest("set model_cls on the subclass")
        check_conformance(self.model_cls, load_platform(self.platform), self.params)
