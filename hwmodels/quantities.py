"""The budget quantities: one table, from which every other list of them is derived.

A quantity is what one platform role's model returns (``energy`` -> ``energy_j``), in which
unit, under which limit names a budget bounds it (absolute; normalized where the paper's
Table 3 uses it), which CLI option sets that limit and with what scale, and in which selecting
stage it is checked. ``inag.platform`` (roles, the ``constraints:`` schema),
``hwmodels.costing`` (limits), ``inag.select`` (stages, CLI overrides), the CLI options of
``select`` and ``baseline`` and the baselines' cost units all read this table.

Pure data: importing it imports nothing else of INAG (``inag.platform`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quantity:
    role: str  # the key under cost_models: in a platform YAML
    quantity: str  # what the role's model returns; the unit is part of the name
    unit: str  # printed unit of a total (bits, bytes, j, s)
    limit: str  # the absolute limit's name (constraints: and overrides)
    option: str  # CLI parameter setting the absolute limit, in option units
    option_unit: str  # the option's unit
    option_scale: float  # limit value = option value * scale
    stage: str  # the selecting stage that checks it
    help: str
    norm_limit: str | None = None  # the normalized limit (divided by the space's largest arch)
    norm_option: str | None = None
    norm_help: str = ""


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("storage", "storage_bits", "bits", "max_storage_bits", "max_storage_kb", "KB",
             8192.0, "storage", "Eq. 2 storage limit, KB.", "max_storage_norm", "max_storage",
             "Normalized storage limit (eq. 2 / largest arch), e.g. 0.21."),
    Quantity("flash", "flash_bytes", "bytes", "max_flash_bytes", "max_flash_kb", "KB", 1024.0,
             "memory fit", "Flash limit, KB."),
    Quantity("sram", "sram_bytes", "bytes", "max_sram_bytes", "max_sram_kb", "KB", 1024.0,
             "memory fit", "SRAM limit, KB."),
    Quantity("energy", "energy_j", "j", "max_energy_j", "max_energy_uj", "uJ", 1e-6, "energy",
             "Energy limit, uJ.", "max_energy_norm", "max_energy",
             "Normalized energy limit (eq. 3 / largest arch), e.g. 0.21."),
    Quantity("latency", "latency_s", "s", "max_latency_s", "max_latency_ms", "ms", 1e-3,
             "latency", "Latency limit, ms."),
)  # fmt: skip

# role -> the unit-suffixed quantity its model must return
ROLES: dict[str, str] = {q.role: q.quantity for q in QUANTITIES}
# limit name -> (role, "abs" | "norm")
LIMITS: dict[str, tuple[str, str]] = {q.limit: (q.role, "abs") for q in QUANTITIES} | {
    q.norm_limit: (q.role, "norm") for q in QUANTITIES if q.norm_limit
}
# selecting stages in pipeline order, each with the limits it checks
STAGE_ORDER = ("storage", "energy", "latency", "memory fit")
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (
        stage,
        tuple(
            name
            for q in QUANTITIES
            if q.stage == stage
            for name in (q.limit, q.norm_limit)
            if name
        ),
    )
    for stage in STAGE_ORDER
)
# (role, unit) of every total, for records
COST_UNITS: tuple[tuple[str, str], ...] = tuple((q.role, q.unit) for q in QUANTITIES)
# CLI parameter name -> (limit name, scale)
OPTIONS: dict[str, tuple[str, float]] = {
    q.option: (q.limit, q.option_scale) for q in QUANTITIES
} | {q.norm_option: (q.norm_limit, 1.0) for q in QUANTITIES if q.norm_option and q.norm_limit}


def overrides(**options: float | None) -> dict[str, float]:
    """Limit overrides from CLI option values (``max_storage_kb=2.0`` -> ``max_storage_bits``);
    options left at None are not overrides."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise KeyError(f"unknown limit option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    out = {}
    for opt, value in options.items():
        if value is not None:
            limit, scale = OPTIONS[opt]
            out[limit] = value * scale
    return out
