"""Built-in analytical hardware models.

- ``eq2_storage``: the paper's eq. 2, ``(W(i) + F(i)) * B(i)`` bits.
- ``flash``: bytes of the deployed weights (packed to their real bits or in containers), int32
  biases, per-layer requantization records, plus the runtime's own code.
- ``sram_peak``: peak bytes of live feature maps — the largest input + output pair of one unit,
  in activation containers (a chain needs only the current unit's in and out buffers).
- ``mac_energy``: the paper's eq. 3, ``f(MAC(i), BIT(i))`` from a per-bit-width table with a
  named scaling law (``hwmodels.scaling``), plus per-bit memory-access energy for weights and
  feature maps (operand fetch costs several MACs: Horowitz 2014, MAESTRO).
- ``roofline_latency``: per unit ``max(compute, memory)`` cycles plus a fixed per-layer cost,
  MAC throughput by bit-width from a table with a named scaling law, plus a per-inference cost.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from hwmodels.base import HardwareModel, HardwareModelError, NoParams
from hwmodels.scaling import mixed, per_width
from inag.ir import LayerTable
from inag.ir.ops import op_code
from inag.platform import Platform, PositiveSourced, Sourced

Law = Literal["flat_container", "quadratic", "linear", "inverse_quadratic"]
WeightStorage = Literal["packed", "container"]
PJ = 1e-12
C_RUNTIMES = ("c", "qemu", "serial")  # INAG's standalone C build, on the host or a Cortex-M
CONV = op_code("conv")  # conv units have their own MAC throughput (conv_macs_per_cycle)


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Which = Literal["weight", "activation"]


def _containers(model: HardwareModel[Any], bits: np.ndarray, which: Which) -> np.ndarray:
    """Container width of every nominal width in ``bits`` (32-bit accumulators stay 32)."""
    lut = np.array([model.platform.container(b, which) if b else 0 for b in range(33)])
    return lut[np.clip(bits, 0, 32)]


def _weight_bits(model: HardwareModel[Any], t: LayerTable, storage: WeightStorage) -> np.ndarray:
    return t.bits if storage == "packed" else _containers(model, t.bits, "weight")


def _lut(
    model: HardwareModel[Any], param: str, table: dict[int, float], law: str, which: Which
) -> np.ndarray:
    """``per_width`` for one parameter table; a bad table is an error naming the parameter."""
    try:
        return per_width(table, law, lambda b: model.platform.container(b, which))
    except ValueError as exc:
        raise HardwareModelError(
            f"{model.platform.name}: model {model.name!r} parameter {param}: {exc}"
        ) from None


class Eq2Storage(HardwareModel[NoParams]):
    """Paper eq. 2: every weight, bias and output feature-map value at the layer's B(i)."""

    name = "eq2_storage"
    quantity = "storage_bits"

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        return ((t.weights + t.biases + t.fmap) * t.bits).astype(np.float64)


class FlashParams(_P):
    weight_storage: WeightStorage = "packed"
    bias_bytes: int = 4  # int32 biases (Jacob et al. 2017)
    per_layer_bytes: Sourced | None = None  # requant multiplier, shift, shapes
    runtime_bytes: Sourced | None = None  # inference code linked into flash


class Flash(HardwareModel[FlashParams]):
    name = "flash"
    quantity = "flash_bytes"
    Params = FlashParams
    fittable = ("per_layer_bytes", "runtime_bytes")

    def fittable_start(self, runtime: str | None = None) -> dict[str, float | dict[str, float]]:
        out = super().fittable_start(runtime)
        out.setdefault("per_layer_bytes", 16.0)
        out.setdefault("runtime_bytes", 256.0)
        return out

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        p = self.params
        wbytes = np.ceil(t.weights * _weight_bits(self, t, p.weight_storage) / 8)
        extra = p.per_layer_bytes.value if p.per_layer_bytes else 0.0
        return wbytes + t.biases * p.bias_bytes + extra

    def _network_overhead(self) -> float:
        p = self.params
        return p.runtime_bytes.value if p.runtime_bytes else 0.0


class SramParams(_P):
    scratch_bytes: Sourced | None = None  # runtime state, stack


class SramPeak(HardwareModel[SramParams]):
    name = "sram_peak"
    quantity = "sram_bytes"
    reduce = "max"
    Params = SramParams

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        cin = _containers(self, t.in_bits, "activation")
        cout = _containers(self, t.out_bits, "activation")
        return np.ceil(t.fmap_in * cin / 8) + np.ceil(t.fmap * cout / 8)

    def _network_overhead(self) -> float:
        p = self.params
        return p.scratch_bytes.value if p.scratch_bytes else 0.0


class MacEnergyParams(_P):
    e_mac_pj: dict[int, Sourced]  # energy of one MAC at b_w = b_a = b bits
    scaling: Law = "quadratic"
    weight_read_pj_per_bit: Sourced | None = None
    act_access_pj_per_bit: Sourced | None = None  # read inputs + write outputs
    weight_storage: WeightStorage = "container"


class MacEnergy(HardwareModel[MacEnergyParams]):
    """Eq. 3: ``sum_i MAC(i) * e(b_w, b_a)`` + memory-access energy, in joules."""

    name = "mac_energy"
    quantity = "energy_j"
    Params = MacEnergyParams

    def __init__(self, platform: Platform, params: Any = None) -> None:
        super().__init__(platform, params)
        p = self.params
        table = {b: v.value for b, v in p.e_mac_pj.items()}
        self._lw = _lut(self, "e_mac_pj", table, p.scaling, "weight")
        self._la = _lut(self, "e_mac_pj", table, p.scaling, "activation")

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        p = self.params
        e = t.macs * mixed(self._lw, self._la, t.bits, t.in_bits)
        if p.weight_read_pj_per_bit:
            wbits = t.weights * _weight_bits(self, t, p.weight_storage) + t.biases * 32
            e = e + wbits * p.weight_read_pj_per_bit.value
        if p.act_access_pj_per_bit:
            abits = t.fmap_in * _containers(self, t.in_bits, "activation") + t.fmap * _containers(
                self, t.out_bits, "activation"
            )
            e = e + abits * p.act_access_pj_per_bit.value
        return e * PJ


class RooflineParams(_P):
    macs_per_cycle: dict[int, PositiveSourced]  # dense layers, at b_w = b_a = b
    conv_macs_per_cycle: dict[int, PositiveSourced] | None = None  # defaults to dense figures
    scaling: Law = "flat_container"
    mem_bytes_per_cycle: PositiveSourced
    weight_storage: WeightStorage = "container"
    overhead_cycles_per_layer: Sourced | None = None
    overhead_cycles_per_inference: Sourced | None = None
    # requantize + store of each output value (not hidden behind the MACs on scalar kernels)
    overhead_cycles_per_output: Sourced | None = None
    # extra cycles per MAC whose weight is stored packed below 8 bits and extracted with
    # shifts and masks (INAG's standalone C export); 8-bit weights are read directly
    # by weight bit-width (2..7): aligned widths (2, 4) extract cheaper than 3, 5, 6, 7
    unpack_cycles_per_mac: dict[int, Sourced] | None = None


class RooflineLatency(HardwareModel[RooflineParams]):
    """Per unit ``max(MACs / throughput, bytes / bandwidth) + overhead`` cycles, in seconds."""

    name = "roofline_latency"
    quantity = "latency_s"
    Params = RooflineParams
    fittable = (
        "macs_per_cycle",
        "conv_macs_per_cycle",
        "mem_bytes_per_cycle",
        "overhead_cycles_per_layer",
        "overhead_cycles_per_inference",
        "overhead_cycles_per_output",
        "unpack_cycles_per_mac",
    )

    def bits_exception(self) -> str | None:
        p = self.params
        if p.unpack_cycles_per_mac and any(v.value > 0 for v in p.unpack_cycles_per_mac.values()):
            return (
                "unpack_cycles_per_mac: the standalone C build reads 8-bit weights directly "
                "and extracts packed sub-8-bit ones (byte-aligned 2- and 4-bit ones cheaper "
                "than 3, 5, 6 and 7), so cost does not grow with bits (measured)"
            )
        return None

    def fittable_start(self, runtime: str | None = None) -> dict[str, float | dict[str, float]]:
        """Absent overheads start at 100 cycles (1 per output value); absent conv throughput
        at the dense one. The unpacking cost is fitted only for the standalone C runtime
        (measured as ``c``, ``qemu`` or ``serial``), the one that stores weights packed."""
        out = super().fittable_start(runtime)
        dense = out["macs_per_cycle"]
        out.setdefault("conv_macs_per_cycle", dict(dense) if isinstance(dense, dict) else dense)
        out.setdefault("overhead_cycles_per_layer", 100.0)
        out.setdefault("overhead_cycles_per_inference", 100.0)
        out.setdefault("overhead_cycles_per_output", 1.0)
        if runtime in C_RUNTIMES:
            out.setdefault("unpack_cycles_per_mac", {str(b): 1.0 for b in range(2, 8)})
        return out

    def __init__(self, platform: Platform, params: Any = None) -> None:
        super().__init__(platform, params)
        p = self.params

        dense = {b: v.value for b, v in p.macs_per_cycle.items()}
        conv = {b: v.value for b, v in (p.conv_macs_per_cycle or p.macs_per_cycle).items()}
        conv_name = "conv_macs_per_cycle" if p.conv_macs_per_cycle else "macs_per_cycle"
        self._dense = (
            _lut(self, "macs_per_cycle", dense, p.scaling, "weight"),
            _lut(self, "macs_per_cycle", dense, p.scaling, "activation"),
        )
        self._conv = (
            _lut(self, conv_name, conv, p.scaling, "weight"),
            _lut(self, conv_name, conv, p.scaling, "activation"),
        )
        self._clock = platform.capability.clock_hz.value
        if p.unpack_cycles_per_mac:  # a width left out would extract for free
            packed = [b for b in platform.capability.numerics.supported_bits if b < 8]
            missing = sorted(set(packed) - set(p.unpack_cycles_per_mac))
            if missing:
                raise HardwareModelError(
                    f"{platform.name}: model {self.name!r} parameter unpack_cycles_per_mac: "
                    f"needs an entry for every packed (sub-8-bit) weight width the platform "
                    f"supports {packed}; missing {missing} (table has "
                    f"{sorted(p.unpack_cycles_per_mac)})"
                )

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        p = self.params
        thr = np.where(
            t.op == CONV,
            mixed(*self._conv, t.bits, t.in_bits),
            mixed(*self._dense, t.bits, t.in_bits),
        )
        compute = t.macs / np.maximum(thr, 1e-30)
        nbytes = (
            t.weights * _weight_bits(self, t, p.weight_storage)
            + t.biases * 32
            + t.fmap_in * _containers(self, t.in_bits, "activation")
            + t.fmap * _containers(self, t.out_bits, "activation")
        ) / 8
        memory = nbytes / p.mem_bytes_per_cycle.value
        fixed = p.overhead_cycles_per_layer.value if p.overhead_cycles_per_layer else 0.0
        cycles = np.maximum(compute, memory) + fixed
        if p.overhead_cycles_per_output:
            cycles = cycles + t.fmap * p.overhead_cycles_per_output.value
        if p.unpack_cycles_per_mac:
            lut = np.zeros(33)
            for b, v in p.unpack_cycles_per_mac.items():
                lut[b] = v.value
            cycles = cycles + t.macs * lut[np.clip(t.bits, 0, 32)]
        return cycles / self._clock

    def _network_overhead(self) -> float:
        p = self.params
        c = p.overhead_cycles_per_inference
        return (c.value if c else 0.0) / self._clock


class PowerTimeParams(_P):
    active_power_w: PositiveSourced  # the power the MCU draws while it runs the network


class PowerTimeEnergy(HardwareModel[PowerTimeParams]):
    """MCU energy is power x time: ``active_power_w`` times the platform's own latency model,
    unit by unit. Calibrating the latency model therefore calibrates the energy too; the
    descriptor states the active power it assumes (hardware.md: nRF52840 ~150 pJ per cycle)."""

    name = "power_x_time"
    quantity = "energy_j"
    Params = PowerTimeParams

    def __init__(self, platform: Platform, params: Any = None) -> None:
        super().__init__(platform, params)
        from hwmodels.registry import get_model_class

        choice = platform.cost_models.get("latency")
        cls = get_model_class(choice.model) if choice is not None else None
        if choice is None or cls is None or cls.quantity != "latency_s":
            raise HardwareModelError(
                f"{platform.name}: the power_x_time energy model needs a latency model "
                "(cost_models.latency) to multiply by the active power"
            )
        self._latency = cls(platform, choice.params)
        self._power_w = self.params.active_power_w.value

    def _layer_cost(self, t: LayerTable) -> np.ndarray:
        return self._latency.layer_cost(t) * self._power_w

    def _network_overhead(self) -> float:
        return self._latency.network_overhead() * self._power_w


BUILTIN_MODELS: tuple[type[HardwareModel], ...] = (
    Eq2Storage,
    Flash,
    SramPeak,
    MacEnergy,
    RooflineLatency,
    PowerTimeEnergy,
)
