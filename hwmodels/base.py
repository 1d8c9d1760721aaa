"""The ``HardwareModel`` interface: the base validates what plug-ins compute.

A model computes one quantity (its name carries the unit: ``energy_j``, ``latency_s``,
``storage_bits``, ``flash_bytes``, ``sram_bytes``) for every unit (layer) of many architectures
at once, from a :class:`inag.ir.LayerTable`. Plug-ins implement ``_layer_cost`` (and optionally
``_network_overhead``); callers use ``layer_cost`` / ``total`` / ``node_cost``, which check that
the result is finite, non-negative and of the right shape, so a broken model fails loudly at the
model, not three stages later in a selection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import numpy as np
from pydantic import BaseModel, ConfigDict

from inag.ir import LayerTable, node_row
from inag.platform import Platform

UNIT_SUFFIXES = ("_bits", "_bytes", "_j", "_s")


class HardwareModelError(ValueError):
    """A hardware model is misconfigured, unknown, or returned invalid costs."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=BaseModel)


class HardwareModel(ABC, Generic[P]):
    """Per-unit cost of networks on one platform (generic over its validated params type).

    Subclasses set ``name`` (the registry key used in platform YAML), ``quantity`` (the
    unit-suffixed name of what they return), ``reduce`` (``sum`` over units, or ``max`` for
    peak-memory quantities) and ``Params`` (a pydantic model validating their YAML params).
    ``flat_in_bits`` documents a model that does not grow with bits below its containers.
    """

    name: ClassVar[str]
    quantity: ClassVar[str]
    reduce: ClassVar[Literal["sum", "max"]] = "sum"
    Params: ClassVar[type[BaseModel]] = NoParams
    # Params fields `inag calibrate` may fit: Sourced numbers, or tables of them by bit-width
    fittable: ClassVar[tuple[str, ...]] = ()

    def __init__(self, platform: Platform, params: P | Mapping[str, Any] | None = None):
        self.platform = platform
        validated = (
            self.Params.model_validate(dict(params or {}))
            if params is None or isinstance(params, Mapping)
            else params
        )
        self.params: P = cast(P, validated)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        q = getattr(cls, "quantity", None)
        if q is not None and not q.endswith(UNIT_SUFFIXES):
            raise HardwareModelError(
                f"{cls.__name__}.quantity={q!r} must name its unit (end in one of "
                f"{', '.join(UNIT_SUFFIXES)})"
            )

    # ------------------------------------------------------------------ for plug-ins
    @abstractmethod
    def _layer_cost(self, table: LayerTable) -> np.ndarray:
        """Cost of every unit: an (N, L) float array (padded positions may hold anything)."""

    def _network_overhead(self) -> float:
        """Cost paid once per inference (runtime entry, scratch memory...)."""
        return 0.0

    def bits_exception(self) -> str | None:
        """Why this model may get *cheaper* when bits grow, or None (the default: the
        conformance suite then requires it to be non-decreasing in bits). A model that
        declares a reason is exempt from that one property, and validation says so."""
        return None

    def fittable_start(self, runtime: str | None = None) -> dict[str, float | dict[str, float]]:
        """Where a calibration fit starts: each present fittable parameter's value (a table
        by bit-width for table parameters). Override to also fit absent optional ones;
        ``runtime`` names what the measurements ran on (runtime-specific terms)."""
        out: dict[str, float | dict[str, float]] = {}
        for name in self.fittable:
            val = getattr(self.params, name, None)
            if isinstance(val, dict):
                out[name] = {str(k): float(v.value) for k, v in val.items()}
            elif val is not None:
                out[name] = float(val.value)
        return out

    # ------------------------------------------------------------------ validated API
    def layer_cost(self, table: LayerTable) -> np.ndarray:
        out = np.asarray(self._layer_cost(table), dtype=np.float64)
        if out.shape != table.mask.shape:
            raise HardwareModelError(
                f"model {self.name!r} returned shape {out.shape}, "
                f"expected {table.mask.shape} (archs x units)"
            )
        out = np.where(table.mask, out, 0.0)
        bad = ~np.isfinite(out) | (out < 0)
        if bad.any():
            a, u = np.argwhere(bad)[0]
            raise HardwareModelError(
                f"model {self.name!r} returned {out[a, u]!r} for unit {u} "
                f"of arch {a}: {self.quantity} must be finite and >= 0"
            )
        return out

    def total(self, table: LayerTable) -> np.ndarray:
        per = self.layer_cost(table)
        agg = per.max(axis=1, initial=0.0) if self.reduce == "max" else per.sum(axis=1)
        return agg + self.network_overhead()

    def network_overhead(self) -> float:
        """The per-inference cost, checked: finite and >= 0."""
        overhead = float(self._network_overhead())
        if not np.isfinite(overhead) or overhead < 0:
            raise HardwareModelError(
                f"model {self.name!r} network overhead {overhead!r} must be finite and >= 0"
            )
        return overhead

    def node_cost(self, node: Mapping[str, Any]) -> float:
        """Cost of one conv/dense IR node (the per-node path; same numbers as the batch)."""
        return float(self.layer_cost(LayerTable.from_rows([[node_row(dict(node))]]))[0, 0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, quantity={self.quantity!r})"
