"""Semantic checks of a platform descriptor, beyond its schema (``inag platforms validate``).

The schema says a number is a positive float with a source; these checks say whether the
descriptor can be right:

- every cost model passes the conformance suite (:mod:`hwmodels.testing`) with the
  descriptor's own parameters (a table that *falls* as bits grow, a plug-in returning negative
  costs), the failing property named;
- every number lies in a plausible range for its unit (a clock of 160 "Hz", 400 bytes of SRAM,
  8e-10 pJ per MAC are unit slips); a real outlier passes with ``allow_unusual``.

Budgets that are negative after reservations and ``flat_container`` tables missing a
container width are refused when the descriptor is loaded or its models built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from hwmodels.plausible import RANGES
from hwmodels.registry import build_models
from hwmodels.testing import ConformanceError, check_conformance
from inag.platform import Platform


@dataclass(frozen=True)
class Finding:
    """One problem: ``unusual`` ones pass with ``allow_unusual``, errors never do."""

    field: str
    message: str
    kind: Literal["error", "unusual"]

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _numbers(node: Any, path: str) -> list[tuple[str, str, float]]:
    """(path, range key, value) of every sourced number below ``node``."""
    out: list[tuple[str, str, float]] = []
    if isinstance(node, dict):
        if "value" in node and isinstance(node.get("value"), int | float):
            key = path.rsplit(".", 1)[-1].split("[", 1)[0]
            out.append((path, key, float(node["value"])))
            return out
        for k, v in node.items():
            sub = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else str(k)
            out += _numbers(v, sub)
    return out


def plausibility(platform: Platform) -> list[Finding]:
    data = platform.model_dump(mode="python")
    found = []
    numbers = _numbers(data["capability"], "capability")
    for role, choice in data["cost_models"].items():
        numbers += _numbers(choice.get("params", {}), f"cost_models.{role}.params")
    for path, key, value in numbers:
        if key not in RANGES:
            continue
        lo, hi, unit = RANGES[key]
        if not (lo <= value <= hi) or not math.isfinite(value):
            found.append(Finding(
                path,
                f"{value:g} is outside the plausible range {lo:g} .. {hi:g} {unit}; a unit "
                "slip? (pass --allow-unusual if the value is real)",
                "unusual",
            ))  # fmt: skip
    return found


def exemptions(platform: Platform) -> list[str]:
    """Properties a model of the descriptor declares it does not have, and why."""
    return [
        f"cost_models.{role}: {model.name} is not non-decreasing in bits: {why}"
        for role, model in build_models(platform).items()
        if (why := model.bits_exception())
    ]


def conformance(platform: Platform) -> list[Finding]:
    found = []
    for role, model in build_models(platform).items():
        try:
            check_conformance(type(model), platform, model.params)
        except ConformanceError as exc:
            msg = str(exc).splitlines()[0]
            found.append(Finding(
                f"cost_models.{role}",
                f"model {model.name!r} with these parameters fails the conformance property "
                f"{msg.split(':', 1)[0]!r}: {msg.split(':', 1)[-1].strip()}",
                "error",
            ))  # fmt: skip
    return found


def validate_platform(platform: Platform, allow_unusual: bool = False) -> list[Finding]:
    """Every problem found; the ones that should stop a user first (errors, then unusual)."""
    found = conformance(platform) + plausibility(platform)
    if allow_unusual:
        found = [f for f in found if f.kind == "error"]
    return sorted(found, key=lambda f: f.kind != "error")
