"""Costing architectures on a platform: per layer, totals, normalized values and budgets.

Two paths give the same numbers: ``cost_graph`` annotates one lowered IR graph node by node
(``cost:<quantity>`` attributes, the per-node path), and ``cost`` evaluates many architectures
at once from a :class:`inag.ir.LayerTable` (the batch path the selector uses on whole bags).

Normalized storage and energy divide by the value of the search space's largest architecture
(every layer at max width and max bits), as in the paper's Table 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from hwmodels.base import HardwareModel
from hwmodels.quantities import LIMITS
from hwmodels.registry import build_models
from inag.arch import ArchSpec
from inag.ir import IRError, LayerTable, Pass, compute_nodes, layer_table_many
from inag.platform import Platform


@dataclass(frozen=True)
class CostResult:
    """Costs of N architectures on one platform. Arrays are indexed like ``archs``."""

    platform: str
    archs: tuple[ArchSpec, ...]
    table: LayerTable = field(repr=False)
    per_layer: dict[str, np.ndarray] = field(repr=False)  # role -> (N, L)
    totals: dict[str, np.ndarray] = field(repr=False)  # role -> (N,)
    reference: dict[str, np.ndarray] = field(repr=False)  # role -> (N,) largest-arch value

    def normalized(self, role: str) -> np.ndarray:
        """Totals divided by the largest architecture's, defined for a zero reference too.

        A model that costs nothing (a platform with ``e_mac_pj: {8: 0}``) has a zero
        reference: 0/0 is 0 (costs nothing, like the largest arch) and x/0 with x > 0 is inf
        (costs more than the reference), so limits and records never see a NaN or a warning.
        A missing reference (NaN, no ``reference`` given to the coster) stays NaN.
        """
        totals, ref = self.totals[role], self.reference[role]
        out = np.where(totals == 0, 0.0, np.inf)
        np.divide(totals, ref, out=out, where=ref != 0)
        return out

    def value(self, limit: str) -> np.ndarray:
        role, which = LIMITS[limit]
        return self.normalized(role) if which == "norm" else self.totals[role]


class PlatformCoster:
    """The platform's hardware models, ready to cost architectures."""

    def __init__(
        self,
        platform: Platform,
        models: dict[str, HardwareModel] | None = None,
        reference: Callable[[ArchSpec], ArchSpec] | None = None,
    ):
        """``reference`` maps an architecture to the largest one of its search space (the
        normalization reference); without it normalized values are NaN."""
        self.platform = platform
        self.models = models if models is not None else build_models(platform)
        self._reference = reference
        self._ref_cache: dict[tuple, dict[str, float]] = {}

    @property
    def roles(self) -> list[str]:
        return list(self.models)

    def cost(self, archs: Sequence[ArchSpec]) -> CostResult:
        archs = tuple(archs)
        table = layer_table_many(archs)
        per_layer = {r: m.layer_cost(table) for r, m in self.models.items()}
        totals = {r: self._total(m, per_layer[r]) for r, m in self.models.items()}
        refs = [self._reference_totals(a) for a in archs]
        reference = {r: np.array([ref[r] for ref in refs], dtype=np.float64) for r in self.models}
        return CostResult(self.platform.name, archs, table, per_layer, totals, reference)

    def limits(self, overrides: dict[str, float | None] | None = None) -> dict[str, float]:
        """Active budgets: the platform's constraints (memories by default) plus overrides."""
        c = self.platform.constraints
        out: dict[str, float] = {}
        for name in LIMITS:
            v = getattr(c, name)
            if v is not None:
                out[name] = float(v)
        out["max_flash_bytes"] = self.platform.flash_budget_bytes
        out["max_sram_bytes"] = self.platform.sram_budget_bytes
        for name, v in (overrides or {}).items():
            if name not in LIMITS:
                raise KeyError(f"unknown limit {name!r}; known: {', '.join(LIMITS)}")
            if v is not None:
                out[name] = float(v)
        return {k: v for k, v in out.items() if LIMITS[k][0] in self.models}

    def cost_graph(self, graph: nx.DiGraph) -> nx.DiGraph:
        """The per-node path: annotate every conv/dense node of ``graph`` with its costs."""
        for model in self.models.values():
            cost_pass(model)(graph)
        return graph

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _total(model: HardwareModel, per_layer: np.ndarray) -> np.ndarray:
        agg = (
            per_layer.max(axis=1, initial=0.0) if model.reduce == "max" else per_layer.sum(axis=1)
        )
        return agg + model.network_overhead()

    def _reference_totals(self, arch: ArchSpec) -> dict[str, float]:
        key = (arch.kind, arch.input_shape, arch.output_size, arch.output_bits)
        if key not in self._ref_cache:
            if self._reference is None:
                self._ref_cache[key] = {r: float("nan") for r in self.models}
            else:
                table = layer_table_many([self._reference(arch)])
                self._ref_cache[key] = {
                    r: float(m.total(table)[0]) for r, m in self.models.items()
                }
        return self._ref_cache[key]


def cost_pass(model: HardwareModel) -> Pass:
    """A pass annotating conv/dense nodes with ``cost:<quantity>`` from ``model``."""
    key = f"cost:{model.quantity}"

    def run(graph: nx.DiGraph) -> None:
        for name in compute_nodes(graph):
            graph.nodes[name][key] = model.node_cost(graph.nodes[name])

    if model.reduce not in ("sum", "max"):
        raise IRError(f"model {model.name!r} has unknown reduce {model.reduce!r}")
    return Pass(f"cost[{model.name}]", frozenset({"counts"}), frozenset({key}), run)
