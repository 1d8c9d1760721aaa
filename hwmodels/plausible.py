"""Plausible magnitudes of hardware numbers, by field name: what ``inag platforms validate``
accepts without ``--allow-unusual``, and the bounds ``inag calibrate`` fits within."""

from __future__ import annotations

# (lo, hi, unit) per field, by the field's name (the last key of its path): what a real device
# can have. Wide on purpose: a descriptor outside is a unit slip far more often than a device.
RANGES: dict[str, tuple[float, float, str]] = {
    "clock_hz": (1e6, 1e11, "Hz (1 MHz .. 100 GHz)"),
    "cores": (1, 1e5, "cores"),
    "flash_bytes": (1024, 1e15, "bytes (1 KiB .. 1 PB)"),
    "sram_bytes": (1024, 1e14, "bytes (1 KiB .. 100 TB)"),
    "reserved_flash_bytes": (0, 1e15, "bytes"),
    "reserved_sram_bytes": (0, 1e14, "bytes"),
    "l1d_bytes": (1024, 1e8, "bytes"),
    "l2_bytes": (1024, 1e9, "bytes"),
    "l3_bytes": (1024, 1e10, "bytes"),
    "e_mac_pj": (1e-3, 1e4, "pJ per MAC (0.001 .. 10000)"),
    "weight_read_pj_per_bit": (1e-4, 1e3, "pJ per bit"),
    "act_access_pj_per_bit": (1e-4, 1e3, "pJ per bit"),
    "macs_per_cycle": (1e-3, 1e6, "MACs per cycle"),
    "conv_macs_per_cycle": (1e-3, 1e6, "MACs per cycle"),
    "mem_bytes_per_cycle": (1e-2, 1e5, "bytes per cycle"),
    "overhead_cycles_per_layer": (0, 1e9, "cycles"),
    "overhead_cycles_per_inference": (0, 1e10, "cycles"),
    "overhead_cycles_per_output": (0, 1e5, "cycles"),
    "unpack_cycles_per_mac": (0, 1e3, "cycles"),
    "per_layer_bytes": (0, 1e8, "bytes"),
    "runtime_bytes": (0, 1e10, "bytes"),
    "scratch_bytes": (0, 1e12, "bytes"),
    "active_power_w": (1e-6, 1e4, "W"),
}
