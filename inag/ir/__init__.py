"""The IR: an architecture lowered to a networkx graph of ops, annotated by passes.

``lower(arch)`` builds the op graph (input, conv/dense, relu, maxpool, flatten, output) and runs
the standard passes: shape inference, then counting (weights W(i), feature maps F(i), MACs).
Each pass states the facts it requires and the facts it ensures; ``verify`` checks the
invariants of every fact a graph claims, so tests run it between passes.

A *unit* is one of the paper's layers i: a conv/dense op with its fused relu and pool (runtimes
fuse them, so costs are per unit, HW-NAS-Bench issue #3). The head (output layer) is a unit too,
with an int32 output and no relu.

``layer_table`` / ``layer_table_many`` give the per-unit numbers as dense numpy arrays — the
batch path that hardware models evaluate without building graphs: a compiled view of the same
op definitions (``inag.ir.ops``) the graph passes call, tested equal to the per-graph path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from inag.arch import ArchSpec, LayerSpec
from inag.ir.ops import NODE_SHAPES, available_ops, get_op
from inag.ir.ops.base import UNIT_ROWS

INPUT_BITS = 8  # the network input is quantized to 8 bits (docs/decisions.md)
ACC_BITS = 32  # int32 accumulators, biases and head output (Jacob et al. 2017)


@functools.lru_cache(maxsize=4096)
def head_spec(output_size: int, output_bits: int) -> LayerSpec:
    """The implicit head as a dense layer (memoized: every arch of a bag shares a few)."""
    return LayerSpec(output_size, output_bits)


def is_compute(op: str) -> bool:
    """A node that computes a unit (a registered layer op), not a structural one."""
    return op in available_ops()


class IRError(ValueError):
    """A graph breaks an invariant, or a pass ran without what it requires."""


# ---------------------------------------------------------------------------- passes
@dataclass(frozen=True)
class Pass:
    """A graph transformation with a contract: facts it requires and facts it ensures."""

    name: str
    requires: frozenset[str]
    ensures: frozenset[str]
    run: Callable[[nx.DiGraph], None] = field(repr=False)

    def __call__(self, graph: nx.DiGraph) -> nx.DiGraph:
        facts: set[str] = graph.graph.setdefault("facts", set())
        missing = self.requires - facts
        if missing:
            raise IRError(
                f"pass {self.name!r} requires {sorted(missing)}; the graph has "
                f"{sorted(facts)} (run the passes that ensure them first)"
            )
        self.run(graph)
        facts |= self.ensures
        return graph


def _compute_nodes(graph: nx.DiGraph) -> list[str]:
    return [n for n in graph.graph["order"] if is_compute(graph.nodes[n]["op"])]


def _infer_shapes(graph: nx.DiGraph) -> None:
    shape: tuple[int, ...] = ()
    for name in graph.graph["order"]:
        node = graph.nodes[name]
        op = node["op"]
        if op == "input":
            shape = tuple(node["shape"])
            node["in_shape"] = shape
        else:
            node["in_shape"] = shape
            if is_compute(op):
                shape = get_op(op).compute_shape(shape, node["spec"])
            else:
                shape = NODE_SHAPES[op](shape, node)
        node["out_shape"] = shape


def _count(graph: nx.DiGraph) -> None:
    for name in graph.graph["order"]:
        node = graph.nodes[name]
        node["weights"] = node["biases"] = node["macs"] = node["fmap"] = 0
        if is_compute(node["op"]):
            c = get_op(node["op"]).counts(node["in_shape"], node["spec"])
            node["weights"], node["biases"], node["macs"] = c.weights, c.biases, c.macs
    # F(i): elements of the tensor a unit writes (after its fused relu/pool).
    for name in _compute_nodes(graph):
        last = graph.graph["units"][graph.nodes[name]["unit"]][-1]
        graph.nodes[name]["fmap"] = math.prod(graph.nodes[last]["out_shape"])
        graph.nodes[name]["fmap_in"] = math.prod(graph.nodes[name]["in_shape"])


SHAPES = Pass("infer_shapes", frozenset({"lowered"}), frozenset({"shapes"}), _infer_shapes)
COUNTS = Pass("count", frozenset({"shapes"}), frozenset({"counts"}), _count)
STANDARD_PASSES: tuple[Pass, ...] = (SHAPES, COUNTS)


# ---------------------------------------------------------------------------- lowering
def lower(arch: ArchSpec, passes: Sequence[Pass] = STANDARD_PASSES) -> nx.DiGraph:
    """Lower ``arch`` to an op graph and run ``passes`` (shape inference and counts)."""
    g = nx.DiGraph(arch=arch, arch_id=arch.arch_id, facts=set(), order=[], units={})
    order: list[str] = g.graph["order"]
    units: dict[int, list[str]] = g.graph["units"]

    def add(name: str, **attrs: object) -> None:
        g.add_node(name, **attrs)
        if order:
            g.add_edge(order[-1], name)
        order.append(name)

    add("input", op="input", shape=tuple(arch.input_shape), bits=INPUT_BITS, unit=-1)
    if arch.kind == "mlp" and len(arch.input_shape) > 1:
        add("flatten_in", op="flatten", bits=INPUT_BITS, unit=-1)
    in_bits = INPUT_BITS
    flattened = arch.kind == "mlp"
    for i, layer in enumerate((*arch.layers, head_spec(arch.output_size, arch.output_bits))):
        head = i == len(arch.layers)
        op = get_op(layer.kind)
        if not op.spatial and not flattened:
            add("flatten", op="flatten", bits=in_bits, unit=-1)
            flattened = True
        out_bits = ACC_BITS if head else layer.bits
        common = {"unit": i, "bits": layer.bits}
        name = "head.dense" if head else f"L{i}.{op.name}"
        add(name, op=op.name, spec=layer, in_bits=in_bits, out_bits=out_bits, **common,
            **op.attrs(layer))  # fmt: skip
        units[i] = [order[-1]]
        if head:
            break
        for fused, attrs in op.fused(layer):
            add(f"L{i}.{'pool' if fused == 'maxpool' else fused}", op=fused, **attrs, **common)
            units[i].append(order[-1])
        in_bits = layer.bits
    add("output", op="output", bits=ACC_BITS, unit=-1)
    g.graph["facts"].add("lowered")
    for p in passes:
        p(g)
    return g


# ---------------------------------------------------------------------------- verify
def verify(graph: nx.DiGraph) -> None:
    """Check the invariants of every fact the graph claims; raise IRError on the first break."""
    facts = graph.graph.get("facts", set())
    if "lowered" not in facts:
        raise IRError("graph was not produced by lower()")
    order = graph.graph["order"]
    if set(order) != set(graph.nodes) or len(order) != len(graph.nodes):
        raise IRError("graph 'order' does not list every node exactly once")
    if not nx.is_directed_acyclic_graph(graph):
        raise IRError("graph has a cycle")
    if graph.nodes[order[0]]["op"] != "input" or graph.nodes[order[-1]]["op"] != "output":
        raise IRError("graph must start at an input node and end at an output node")
    for a, b in zip(order, order[1:], strict=False):
        if not graph.has_edge(a, b):
            raise IRError(f"missing edge {a} -> {b} of the chain")
    if graph.number_of_edges() != len(order) - 1:
        raise IRError("graph has edges outside the chain")
    for name in order:
        node = graph.nodes[name]
        bits = node.get("bits")
        if not isinstance(bits, int) or not (2 <= bits <= 8 or bits == ACC_BITS):
            raise IRError(f"node {name}: bits must be 2..8 (or {ACC_BITS}), found {bits!r}")
    if "shapes" in facts:
        for a, b in graph.edges:
            if graph.nodes[a]["out_shape"] != graph.nodes[b]["in_shape"]:
                raise IRError(
                    f"shape mismatch on edge {a} -> {b}: "
                    f"{graph.nodes[a]['out_shape']} vs {graph.nodes[b]['in_shape']}"
                )
        for name in order:
            if any(d < 1 for d in graph.nodes[name]["out_shape"]):
                raise IRError(f"node {name}: empty output shape {graph.nodes[name]['out_shape']}")
    if "counts" in facts:
        for name in order:
            node = graph.nodes[name]
            for key in ("weights", "biases", "macs", "fmap"):
                v = node.get(key)
                if not isinstance(v, int) or v < 0:
                    raise IRError(f"node {name}: {key} must be a non-negative int, found {v!r}")
            if is_compute(node["op"]):
                want = get_op(node["op"]).counts(node["in_shape"], node["spec"])
                if (node["macs"], node["weights"], node["biases"]) != (
                    want.macs,
                    want.weights,
                    want.biases,
                ):
                    raise IRError(
                        f"node {name}: MACs/weights/biases {node['macs']}/{node['weights']}/"
                        f"{node['biases']} differ from its op's {want.macs}/{want.weights}/"
                        f"{want.biases}"
                    )
    for fact in facts:
        if fact.startswith("cost:"):
            key = fact
            for name in _compute_nodes(graph):
                v = graph.nodes[name].get(key)
                if v is None or not np.isfinite(v) or v < 0:
                    raise IRError(f"node {name}: {key} must be finite and >= 0, found {v!r}")


# ---------------------------------------------------------------------------- batch path
TABLE_FIELDS = (
    "macs",
    "weights",
    "biases",
    "fmap_in",
    "fmap",
    "bits",
    "in_bits",
    "out_bits",
    "op",
)


@dataclass(frozen=True)
class LayerTable:
    """Per-unit numbers of N architectures, padded to L units: arrays of shape (N, L).

    ``mask`` marks real units. ``bits`` is the nominal B(i) (weights and output activations),
    ``in_bits`` the nominal bits of the unit's input, ``out_bits`` those of its output (32 for
    the head). ``weights`` excludes biases; W(i) of eq. 2 is ``weights + biases``. ``op`` is
    the unit's op code (``inag.ir.ops.op_code("conv")``).
    """

    mask: np.ndarray
    macs: np.ndarray
    weights: np.ndarray
    biases: np.ndarray
    fmap_in: np.ndarray
    fmap: np.ndarray
    bits: np.ndarray
    in_bits: np.ndarray
    out_bits: np.ndarray
    op: np.ndarray

    @property
    def n_archs(self) -> int:
        return int(self.mask.shape[0])

    @staticmethod
    def from_rows(rows: Sequence[Sequence[tuple[int, ...]]]) -> LayerTable:
        n = len(rows)
        width = max((len(r) for r in rows), default=0)
        data = np.zeros((len(TABLE_FIELDS), n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=bool)
        for a, r in enumerate(rows):
            if r:
                data[:, a, : len(r)] = np.asarray(r, dtype=np.int64).T
                mask[a, : len(r)] = True
        return LayerTable(mask=mask, **dict(zip(TABLE_FIELDS, data, strict=True)))

    def select(self, rows: np.ndarray | Sequence[int]) -> LayerTable:
        idx = np.asarray(rows)
        return LayerTable(**{k: getattr(self, k)[idx] for k in ("mask", *TABLE_FIELDS)})


def arch_rows(arch: ArchSpec) -> list[tuple[int, ...]]:
    """Per-unit (TABLE_FIELDS) tuples of one architecture, from the op definitions alone
    (no graph): the compiled view the batch path uses."""
    rows = []
    shape = tuple(arch.input_shape)
    in_bits = INPUT_BITS
    head = head_spec(arch.output_size, arch.output_bits)
    for layer in (*arch.layers, head):
        # the whole row, memoized: a plain tuple of the layer's fields hashes in C (a LayerSpec
        # key would call its Python __hash__); ops/base.py clears it when an op is registered
        bits = layer.bits
        key = (layer.kind, shape, layer.width, layer.kernel, layer.stride, layer.pool, bits,
               in_bits, layer is head)  # fmt: skip
        hit = UNIT_ROWS.get(key)
        if hit is None:
            op = get_op(layer.kind)
            c, shape_out = op.unit(shape, layer)
            out_bits = ACC_BITS if layer is head else bits
            row = (c.macs, c.weights, c.biases, c.fmap_in, c.fmap, bits, in_bits, out_bits,
                   op.code)  # fmt: skip
            if len(UNIT_ROWS) > 200_000:
                UNIT_ROWS.clear()
            hit = UNIT_ROWS[key] = (row, shape_out)
        rows.append(hit[0])
        shape = hit[1]
        in_bits = bits
    return rows


def layer_table_many(archs: Sequence[ArchSpec]) -> LayerTable:
    """The batch path: one table for many architectures, no graphs built."""
    return LayerTable.from_rows([arch_rows(a) for a in archs])


def layer_table(graph: nx.DiGraph) -> LayerTable:
    """The per-unit table of one lowered graph (read from its node attributes)."""
    if "counts" not in graph.graph.get("facts", set()):
        raise IRError("layer_table needs a graph with 'counts' (run lower() with its passes)")
    return LayerTable.from_rows([[node_row(graph.nodes[n]) for n in _compute_nodes(graph)]])


def node_row(node: dict) -> tuple[int, ...]:
    return (
        node["macs"],
        node["weights"],
        node["biases"],
        node["fmap_in"],
        node["fmap"],
        node["bits"],
        node["in_bits"],
        node["out_bits"],
        get_op(node["op"]).code,
    )


def compute_nodes(graph: nx.DiGraph) -> list[str]:
    """Names of the conv/dense nodes (one per unit), in execution order."""
    return _compute_nodes(graph)
