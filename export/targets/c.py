"""Standalone C99 (model + header, no libc in the model), checked with the host gcc; for an
MCU platform also linked for its Cortex-M to measure flash and RAM from the ELF."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from export.qnet import QuantizedNet
from export.targets.base import ExportTarget, Runner
from export.tools import tool_version


class CTarget(ExportTarget):
    name = "c"
    summary = "standalone C99 model (+ Cortex-M firmware sizes for MCU platforms)"

    def write(
        self, net: QuantizedNet, out: Path, stem: str, platform: Any, ctx: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Path]]:
        from export import c_export

        cs, files = c_export.write_c(net, out)
        info: dict[str, Any] = {
            "prefix": cs.prefix,
            "sources": [f.name for f in files],
            "api": [f"{cs.prefix}_{f}" for f in ("input", "output", "invoke", "run")],
            "arena_bytes": cs.arena_bytes,
            "tensor_bytes": list(cs.tensor_bytes),
            "tensor_offsets": list(cs.tensor_offsets),
            "packed_weight_bytes": cs.weight_bytes,
            "bias_bytes": cs.bias_bytes,
        }
        if platform.kind == "mcu":
            info.update(_firmware(out, cs.prefix, platform, files))
        return info, files

    def runner(
        self, net: QuantizedNet, out: Path, info: dict[str, Any]
    ) -> tuple[Runner | None, str]:
        from export import c_export

        if not shutil.which("gcc"):
            return None, "no gcc on PATH"
        # build the host harness beside a copy of the sources: the export stays as written
        tmp = tempfile.TemporaryDirectory(prefix="inag-c-check-")
        t = Path(tmp.name)
        for name in info["sources"]:
            shutil.copy(out / name, t / name)
        exe = c_export.build_host(t, info["prefix"])

        def run(x: Any) -> Any:
            _keep = tmp  # the directory lives as long as the runner
            return c_export.run_host(exe, net, x)

        return run, "c (host gcc)"


def _firmware(out: Path, prefix: str, platform: Any, files: list[Path]) -> dict[str, Any]:
    """Firmware flash/RAM sizes of an MCU platform: measured by building a libc-free firmware
    with arm-none-eabi-gcc for the descriptor's own Cortex-M (``capability.cpu``). Any other
    CPU (RISC-V, ...) gets no firmware figures rather than a Cortex-M4's."""
    from export import c_export

    cpu = str(getattr(platform.capability, "cpu", "") or "")
    mcpu = c_export.cortex_m_cpu(cpu)
    if mcpu is None:
        found = f"capability.cpu is {cpu!r}" if cpu else "capability.cpu is not given"
        return {
            "firmware": {
                "skipped": f"firmware sizes are measured for Cortex-M CPUs only "
                f"(arm-none-eabi-gcc); {platform.name}'s {found}. The flash and SRAM "
                "figures of this export are the cost models' predictions"
            }
        }
    if not c_export.arm_tools()["gcc"]:
        return {
            "cortex_m": {
                "cpu": cpu,
                "skipped": f"{c_export.ARM_GCC} not found: install gcc-arm-none-eabi for "
                "the ELF flash/RAM figures",
            }
        }
    if not c_export.arm_gcc_supports(mcpu):
        return {
            "cortex_m": {
                "cpu": cpu,
                "skipped": f"{c_export.ARM_GCC} does not know -mcpu={mcpu} (from "
                f"capability.cpu {cpu!r}); no firmware figures",
            }
        }
    mem = platform.capability.memories
    obj, elf = c_export.build_firmware(
        out, prefix, int(mem.flash_bytes.value), int(mem.sram_bytes.value), mcpu=mcpu
    )
    files += [obj, elf]
    return {
        "cortex_m": {
            "cpu": cpu,
            "compiler": tool_version(c_export.ARM_GCC),
            "flags": list(c_export.cortex_m_flags(mcpu)),
            "model_object": {"file": f"cortex_m/{obj.name}", **c_export.elf_sizes(obj)},
            "firmware_elf": {"file": f"cortex_m/{elf.name}", **c_export.elf_sizes(elf)},
            "note": "firmware = model + minimal startup/main, no libc; flash = "
            ".text+.rodata+.data (+vectors), RAM = .data+.bss (stack not included)",
        }
    }
