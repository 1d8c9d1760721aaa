"""Standalone C export: MCU rules (no float, no malloc, no libc), the arena plan, packed
weights, and a Cortex-M4 build run on QEMU's mps2-an386 board against the reference."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from export import c_export, reference
from export.qnet import QuantizedNet
from inag.arch import ArchSpec, LayerSpec

HAVE_GCC = shutil.which("gcc") is not None
ARM = c_export.arm_tools()
needs_arm = pytest.mark.skipif(
    ARM["gcc"] is None, reason="arm-none-eabi-gcc absent (Debian: gcc-arm-none-eabi)"
)
needs_qemu = pytest.mark.skipif(
    ARM["gcc"] is None or ARM["qemu"] is None,
    reason="arm-none-eabi-gcc or qemu-system-arm absent (Debian: gcc-arm-none-eabi, "
    "libnewlib-arm-none-eabi, qemu-system-arm)",
)


def archs() -> list[ArchSpec]:
    return [
        ArchSpec("mlp", (6,), 3, (LayerSpec(24, 3), LayerSpec(10, 8), LayerSpec(7, 2))),
        ArchSpec.from_summary("c6k3p2@5-c8k5s2@7-12@4 | head@8", (1, 8, 8), 10),
        ArchSpec.from_summary("c4k5p3@2-c5k1@6 | head@3", (3, 9, 9), 4),
    ]


@pytest.fixture(scope="module", params=range(3), ids=["mlp", "cnn", "cnn-pool3"])
def case(request):
    arch = archs()[request.param]
    net = QuantizedNet.random(arch, np.random.default_rng(request.param))
    x = np.random.default_rng(9).integers(-128, 128, (48, *arch.input_shape)).astype(np.int8)
    return net, x, reference.run(net, x)


def test_source_has_no_float_no_malloc_no_libc(case):
    net, _, _ = case
    cs = c_export.emit_c(net)
    code = re.sub(r"/\*.*?\*/", "", cs.source + cs.header, flags=re.S)  # drop comments
    for word in ("float", "double", "malloc", "free", "calloc", "printf", "memcpy"):
        assert not re.search(rf"\b{word}\b", code), word
    includes = re.findall(r"#include\s*[<\"]([^>\"]+)", code)
    assert sorted(set(includes)) == sorted({"stdint.h", f"{cs.prefix}.h"})


def test_arena_is_the_peak_feature_map_pair(case):
    """The arena equals max_i(in_i + out_i) (rounded to 4), the sram_peak model's figure, and
    no unit's input and output overlap in it."""
    from hwmodels.builtin import SramPeak
    from inag.ir import layer_table_many
    from inag.platform import load_platform

    net, _, _ = case
    cs = c_export.emit_c(net)
    model = SramPeak(load_platform("cortex_m"))
    predicted = float(model.total(layer_table_many([net.arch]))[0])
    assert cs.arena_bytes == (int(predicted) + 3) // 4 * 4
    sizes, offs = cs.tensor_bytes, cs.tensor_offsets
    for i in range(len(sizes) - 1):
        a = (offs[i], offs[i] + sizes[i])
        b = (offs[i + 1], offs[i + 1] + sizes[i + 1])
        assert a[1] <= b[0] or b[1] <= a[0], f"unit {i} reads and writes overlapping bytes"
        assert max(a[1], b[1]) <= cs.arena_bytes
    assert offs[-1] % 4 == 0  # the int32 head output is aligned


def test_weights_are_packed_to_their_bits(case):
    net, _, _ = case
    cs = c_export.emit_c(net)
    expected = sum((u.weight.size * u.bits + 7) // 8 + 1 for u in net.units)
    assert cs.weight_bytes == expected
    for u in net.units:
        m = re.search(rf"static const u?int8_t W{u.index}\[(\d+)\]", cs.source)
        assert m and int(m.group(1)) == (u.weight.size * u.bits + 7) // 8 + 1


@pytest.mark.skipif(not HAVE_GCC, reason="no host gcc")
def test_host_build_is_bit_exact_and_strict(case, tmp_path):
    net, x, want = case
    cs, _ = c_export.write_c(net, tmp_path)
    # -Werror -pedantic C99, and again with sanitizers for out-of-bounds / undefined shifts
    exe = c_export.build_host(tmp_path, cs.prefix)
    np.testing.assert_array_equal(c_export.run_host(exe, net, x), want)
    san = c_export.build_host(
        tmp_path, cs.prefix, opt="-O1", extra=("-fsanitize=address,undefined", "-g")
    )
    np.testing.assert_array_equal(c_export.run_host(san, net, x), want)
    assert c_export.bench_host(exe, 5, 3) > 0


@needs_arm
def test_cortex_m4_object_is_freestanding(case, tmp_path):
    """The model object needs nothing from any library: no undefined symbols at all (so no
    soft-float helpers, no malloc, no memcpy)."""
    net, _, _ = case
    cs, _ = c_export.write_c(net, tmp_path)
    obj, elf = c_export.build_firmware(tmp_path, cs.prefix, 1 << 20, 256 << 10)
    nm = shutil.which("arm-none-eabi-nm")
    if nm:
        undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True).stdout
        assert undefined.strip() == ""
    sizes = c_export.elf_sizes(obj)
    assert sizes["bss"] == cs.arena_bytes  # the arena is the model's only RAM
    assert sizes["rodata"] >= cs.weight_bytes + cs.bias_bytes
    fw = c_export.elf_sizes(elf)
    assert fw["flash_bytes"] == fw["text"] + fw["rodata"] + fw["data"] + fw["sections"].get(
        ".isr_vector", 0
    )
    assert fw["ram_bytes"] == fw["data"] + fw["bss"]


@needs_qemu
def test_cortex_m4_on_qemu_matches_reference(case, tmp_path):
    net, x, want = case
    cs, _ = c_export.write_c(net, tmp_path)
    elf = c_export.build_qemu(tmp_path, net, cs.prefix, x)
    got = c_export.run_qemu(elf, net, len(x))
    np.testing.assert_array_equal(got, want)
    sizes = c_export.elf_sizes(elf)
    assert sizes["flash_bytes"] > cs.weight_bytes and sizes["ram_bytes"] >= cs.arena_bytes


@needs_arm
def test_firmware_too_big_for_the_platform_fails_to_link(tmp_path):
    net = QuantizedNet.random(archs()[0], np.random.default_rng(0))
    cs, _ = c_export.write_c(net, tmp_path)
    with pytest.raises(Exception, match="overflow|will not fit"):
        c_export.build_firmware(tmp_path, cs.prefix, 256, 16)
