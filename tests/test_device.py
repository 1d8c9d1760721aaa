"""Device measurement (export/device.py): the Cortex-M measurement firmware run on QEMU
mps2-an386 and read over its loopback UART socket, the serial reader against a loopback TCP
server (good lines, garbage, silence, a closed port), the aarch64 C harness under
qemu-aarch64, and the aarch64 TVM library. Tests skip only where a tool is absent."""

from __future__ import annotations

import itertools
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from export import c_export, device, reference
from export.errors import ExportError
from export.qnet import QuantizedNet
from inag.arch import ArchSpec, LayerSpec
from inag.platform import load_platform

HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = shutil.which("qemu-system-arm") is not None
HAVE_A64 = shutil.which("aarch64-linux-gnu-gcc") is not None
HAVE_QEMU_A64 = shutil.which("qemu-aarch64") is not None
needs_qemu = pytest.mark.skipif(
    not (HAVE_ARM and HAVE_QEMU),
    reason="arm-none-eabi-gcc or qemu-system-arm absent (Debian: gcc-arm-none-eabi, "
    "qemu-system-arm)",
)
needs_a64 = pytest.mark.skipif(
    not (HAVE_A64 and HAVE_QEMU_A64 and Path("/usr/aarch64-linux-gnu/lib").is_dir()),
    reason="aarch64-linux-gnu-gcc or qemu-aarch64 absent (Debian: gcc-aarch64-linux-gnu, "
    "qemu-user)",
)


def small_net() -> QuantizedNet:
    arch = ArchSpec("mlp", (6,), 3, (LayerSpec(24, 3), LayerSpec(10, 8), LayerSpec(7, 2)))
    return QuantizedNet.random(arch, np.random.default_rng(0))


def big_net() -> QuantizedNet:
    arch = ArchSpec(
        "mlp", (64,), 10, (LayerSpec(64, 8), LayerSpec(48, 3), LayerSpec(32, 5), LayerSpec(24, 2))
    )
    return QuantizedNet.random(arch, np.random.default_rng(1))


def cnn_net() -> QuantizedNet:
    arch = ArchSpec.from_summary("c6k3p2@5-c8k5s2@7-12@4 | head@8", (1, 8, 8), 10)
    return QuantizedNet.random(arch, np.random.default_rng(2))


def macs(net: QuantizedNet) -> int:
    total = 0
    for u in net.units:
        if u.kind == "dense":
            total += int(u.weight.shape[0] * u.weight.shape[1])
        else:
            total += int(np.prod(u.conv_shape) * np.prod(u.weight.shape[1:]))
    return total


# ---------------------------------------------------------------------------- QEMU firmware
@pytest.fixture(scope="module")
def qemu_runs():
    if not (HAVE_ARM and HAVE_QEMU):
        pytest.skip(
            "arm-none-eabi-gcc or qemu-system-arm absent (Debian: gcc-arm-none-eabi, "
            "qemu-system-arm)"
        )
    nets = [small_net(), big_net(), cnn_net()]
    return [(n, device.measure_qemu(n, warmup=2, repeats=7, timeout=60)) for n in nets]


def test_qemu_firmware_over_loopback_uart(qemu_runs):
    for net, r in qemu_runs:
        assert r["origin"] == "emulated" and r["unit"] == "instructions"
        assert "qemu" in r["device"] and r["counter"] == "systick"
        assert r["instructions_per_count"] == 40.0  # 25 MHz SysTick, 1 ns per instruction
        counts, instructions = r["calib"]  # a loop of known length: 2500 counts, +-1 phase
        assert instructions == 100000 and abs(counts - 2500) <= 1
        assert len(r["samples"]) == r["repeats"] == 7 and r["warmup"] == 2
        assert all(s > 0 for s in r["samples"])
        assert r["median"] == float(np.median(r["samples"]))
        assert r["samples"] == [c * 40.0 for c in r["counts"]]
        # -icount is deterministic: timed runs of the same input agree to one SysTick count
        assert max(r["counts"]) - min(r["counts"]) <= 1
        assert r["bit_exact"] is True and r["outputs_checked"] == 4 * net.output_size
        assert r["crc32"] == r["expected_crc32"]
        assert r["prefix"] == c_export.c_prefix(net)
        assert r["sizes"]["flash_bytes"] > r["model_sizes"]["flash_bytes"] > 0
        assert r["model_sizes"]["ram_bytes"] >= c_export.emit_c(net).arena_bytes


def test_qemu_instructions_grow_with_macs(qemu_runs):
    small, big = qemu_runs[0], qemu_runs[1]
    assert macs(big[0]) > 10 * macs(small[0])
    assert big[1]["median"] > 5 * small[1]["median"]
    for net, r in qemu_runs:
        per_mac = r["median"] / macs(net)
        assert 1.0 < per_mac < 60.0, per_mac  # a scalar int8 MAC loop on Thumb-2


@needs_qemu
def test_firmware_is_bare_metal(tmp_path):
    fw = device.build_measure_firmware(small_net(), tmp_path, warmup=1, repeats=3)
    assert fw["bin"].stat().st_size > 0 and fw["elf"].is_file()
    head = device.elf_header(fw["elf"])
    assert head["machine"] == "ARM" and head["class"] == 32
    names = set(fw["sizes"]["sections"])
    assert ".isr_vector" in names and not any("semihost" in n for n in names)
    src = (tmp_path / "harness.c").read_text()
    assert "0x40004000" in src and "0xE0001004" in src and "0xE000E010" in src


@needs_qemu
def test_qemu_exit_is_reported(tmp_path):
    bogus = tmp_path / "not.elf"
    bogus.write_bytes(b"not an image")
    t0 = time.monotonic()
    with pytest.raises(device.DeviceError, match="qemu-system-arm exited"):
        device._run_qemu(shutil.which("qemu-system-arm"), bogus, timeout=20)
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------- serial reader
class Server:
    """One-connection loopback TCP server sending ``chunks``; then closes or holds open."""

    def __init__(self, chunks: Iterable[bytes], close: bool = True, gap: float = 0.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.url = f"socket://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.chunks, self.close, self.gap = chunks, close, gap
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                for c in self.chunks:
                    if self.stop.is_set():
                        return
                    conn.sendall(c)
                    if self.gap:
                        time.sleep(self.gap)
                if not self.close:
                    self.stop.wait(15)
            except OSError:
                return

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def report(
    net: QuantizedNet,
    counts=(1000, 1010, 990),
    crc: str | None = None,
    y: np.ndarray | None = None,
) -> list[str]:
    x = device.harness_inputs(net, 2)
    y = reference.run(net, x) if y is None else y
    lines = [
        f"inag begin {c_export.c_prefix(net)} counter=dwt hz=100000000 warmup=1 "
        f"repeats={len(counts)} n_check=2"
    ]
    lines += [f"inag output {i} " + " ".join(str(int(v)) for v in row) for i, row in enumerate(y)]
    lines += ["inag calib 300000 100000", "inag overhead 4"]
    lines += [f"inag cycles {c}" for c in counts]
    lines.append(f"inag done {crc or device.outputs_crc32(y)}")
    return lines


def as_bytes(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def test_read_serial_good_lines_over_socket():
    net = small_net()
    lines = report(net)
    # boot noise and the tail of a cycle the reader joined late come before 'inag begin'
    payload = b"boot rom v1.2\r\n\x00\xff\r\n" + as_bytes(lines[4:])
    payload += as_bytes(lines[:1]) + b"\r\n" + as_bytes(lines[1:])  # a blank line is harmless
    # split mid-line, sent in pieces, the server keeps the port open afterwards
    chunks = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    with Server(chunks, close=False) as srv:
        got = device.read_serial(srv.url, timeout=10, backend="socket")
    assert got == lines
    with Server([as_bytes(lines)], close=False) as srv:
        r = device.measure_serial(srv.url, timeout=10, net=net, backend="socket")
    assert r["origin"] == "device" and r["unit"] == "cycles"
    assert r["samples"] == [1000.0, 1010.0, 990.0] and r["median"] == 1000.0
    assert r["counter"] == "dwt" and r["clock_hz"] == 100_000_000
    assert r["median_s"] == pytest.approx(1e-5)
    assert r["bit_exact"] is True and r["outputs_checked"] == 2 * net.output_size
    assert r["device"] == srv.url and r["warmup"] == 1 and r["repeats"] == 3


def test_read_serial_with_pyserial():
    pytest.importorskip("serial", reason="pyserial not installed")
    lines = report(small_net())
    # pyserial flushes the input when it opens a port; the firmware repeats its cycle
    with Server([as_bytes(lines)] * 20, close=False, gap=0.05) as srv:
        assert device.read_serial(srv.url, timeout=10, backend="pyserial") == lines


def test_garbage_after_begin_is_an_error_at_once():
    lines = report(small_net())
    data = as_bytes(lines[:2]) + b"\x8f\xe3~~\x02garbled\r\n" + as_bytes(lines[2:])
    t0 = time.monotonic()
    with Server([data], close=False) as srv, pytest.raises(device.DeviceError) as err:
        device.read_serial(srv.url, timeout=10, backend="socket")
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    assert "garbage" in msg and "baud rate" in msg and "\n" not in msg
    assert isinstance(err.value, ExportError)


def test_only_garbage_times_out_and_says_so():
    noise = [b"\xfe\x81\x13\x99 line noise \x07\r\n"] * 5
    t0 = time.monotonic()
    with Server(noise, close=False) as srv, pytest.raises(device.DeviceError) as err:
        device.read_serial(srv.url, timeout=1.0, backend="socket")
    assert time.monotonic() - t0 < 3
    assert "no 'inag begin'" in str(err.value) and "5 other lines" in str(err.value)


def test_endless_noise_is_bounded_by_max_bytes():
    noise = itertools.repeat(b"x" * 1000 + b"\n")
    t0 = time.monotonic()
    with Server(noise, close=False) as srv, pytest.raises(device.DeviceError, match="bytes"):
        device.read_serial(srv.url, timeout=20, max_bytes=50_000, backend="socket")
    assert time.monotonic() - t0 < 5


def test_silence_times_out_without_hanging():
    t0 = time.monotonic()
    with Server([], close=False) as srv, pytest.raises(device.DeviceError) as err:
        device.read_serial(srv.url, timeout=1.0, backend="socket")
    assert 0.9 < time.monotonic() - t0 < 3
    assert "timed out after 1 s" in str(err.value) and "firmware" in str(err.value)


def test_missing_done_line():
    lines = report(small_net())
    with (
        Server([as_bytes(lines[:-1])], close=False) as srv,
        pytest.raises(device.DeviceError, match="no 'inag done'"),
    ):
        device.read_serial(srv.url, timeout=1.0, backend="socket")
    with (
        Server([as_bytes(lines[:-1])], close=True) as srv,
        pytest.raises(device.DeviceError, match="closed after"),
    ):
        device.read_serial(srv.url, timeout=10, backend="socket")


def test_refused_port_and_bad_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    t0 = time.monotonic()
    with pytest.raises(device.DeviceError, match="cannot open"):
        device.read_serial(f"socket://127.0.0.1:{port}", timeout=0.5, backend="socket")
    assert time.monotonic() - t0 < 3
    with pytest.raises(device.DeviceError, match="pyserial"):
        device.read_serial("/dev/ttyACM_none", timeout=0.5, backend="socket")


def test_fault_line_is_reported():
    lines = report(small_net())
    data = as_bytes(lines[:3]) + b"inag fault cfsr=00000400 pc=000001a4\n"
    with Server([data], close=False) as srv, pytest.raises(device.DeviceError, match="fault"):
        device.read_serial(srv.url, timeout=10, backend="socket")


def test_corrupted_or_wrong_outputs():
    net = small_net()
    with pytest.raises(device.DeviceError, match="checksum"):
        device.parse_report(report(net, crc="00000000"))
    y = reference.run(net, device.harness_inputs(net, 2)).copy()
    y[1, 0] += 1
    with (
        Server([as_bytes(report(net, y=y))], close=False) as srv,
        pytest.raises(device.DeviceError, match="differ from the reference"),
    ):
        device.measure_serial(srv.url, timeout=10, net=net, backend="socket")
    with pytest.raises(device.DeviceError, match="not a line of one harness run"):
        device.parse_report(report(net)[:2] + ["hello"] + report(net)[2:])
    with pytest.raises(device.DeviceError, match="promised 3"):
        device.parse_report([ln for ln in report(net) if ln != "inag cycles 990"])


# ---------------------------------------------------------------------------- missing tools
def test_missing_tools_name_the_debian_package(monkeypatch, tmp_path):
    real = shutil.which

    def without(*names: str):
        monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None if n in names else real(n))

    net = small_net()
    without("arm-none-eabi-gcc")
    with pytest.raises(device.DeviceError, match="apt-get install gcc-arm-none-eabi"):
        device.measure_qemu(net)
    without("qemu-system-arm")
    with pytest.raises(device.DeviceError, match="apt-get install qemu-system-arm"):
        device.measure_qemu(net)
    without("aarch64-linux-gnu-gcc")
    with pytest.raises(device.DeviceError, match="gcc-aarch64-linux-gnu"):
        device.run_aarch64(net)
    with pytest.raises(device.DeviceError, match="gcc-aarch64-linux-gnu"):
        device.link_tvm_aarch64(net, tmp_path, load_platform("cortex_a"))
    without("qemu-aarch64")
    with pytest.raises(device.DeviceError, match="qemu-user"):
        device.run_aarch64(net)


# ---------------------------------------------------------------------------- aarch64
@needs_a64
def test_aarch64_c_harness_bit_exact_under_qemu_user():
    for net in (big_net(), cnn_net()):
        x = np.random.default_rng(5).integers(-128, 128, (24, *net.input_shape)).astype(np.int8)
        r = device.run_aarch64(net, x)
        assert r["bit_exact"] is True and r["outputs_checked"] == x.shape[0] * net.output_size
        assert r["elf"]["e_machine"] == 183 and r["elf"]["machine"] == "AArch64"
        assert r["origin"] == "emulated" and "qemu-aarch64" in r["runner"]


def test_aarch64_tvm_library_is_an_aarch64_elf(tmp_path):
    pytest.importorskip("tvm", reason="apache-tvm not installed")
    if not HAVE_A64:
        pytest.skip("aarch64-linux-gnu-gcc absent (Debian: gcc-aarch64-linux-gnu)")
    r = device.link_tvm_aarch64(cnn_net(), tmp_path, load_platform("cortex_a"))
    assert r["linked"] is True and r["path"].suffix == ".so"
    raw = r["path"].read_bytes()[:20]
    assert raw[:4] == b"\x7fELF" and raw[4] == 2  # 64-bit
    assert int.from_bytes(raw[18:20], "little") == 183  # e_machine = EM_AARCH64
    assert r["elf"]["e_type"] == "DYN"


@needs_qemu
def test_finer_icount_shift_agrees(qemu_runs):
    """-icount shift=3 makes a SysTick count 5 instructions instead of 40: same figure."""
    net, r0 = qemu_runs[0]
    r3 = device.measure_qemu(net, warmup=1, repeats=3, timeout=60, icount_shift=3)
    assert r3["instructions_per_count"] == 5.0 and r3["bit_exact"] is True
    assert abs(r3["median"] - r0["median"]) <= 40.0
    with pytest.raises(device.DeviceError, match="icount_shift"):
        device.measure_qemu(net, icount_shift=9)


@needs_qemu
def test_firmware_that_does_not_fit_the_board(tmp_path):
    import dataclasses

    tiny = dataclasses.replace(device.QEMU_MPS2_AN386, name="tiny", ram_bytes=64)
    with pytest.raises(device.DeviceError, match="does not fit tiny: RAM"):
        device.build_measure_firmware(small_net(), tmp_path, board=tiny)


@needs_qemu
def test_a_trained_cnn_runs_bit_exact_on_qemu(tmp_path):
    """`inag train-net` on digits, then the Cortex-M firmware under QEMU mps2-an386: the
    outputs it prints over its UART equal the integer reference's."""
    from inag.cli import main

    arch = ArchSpec.from_summary("c6k3p2@6-c8k3@4-16@5 | head@8", (1, 8, 8), 10)
    path = tmp_path / "cnn.safetensors"
    argv = ["train-net", arch.to_json(), "--task", "digits", "--epochs", "2", "--out", str(path)]
    assert main(argv) == 0
    net = QuantizedNet.load(path)
    r = device.measure_qemu(net, warmup=1, repeats=3, timeout=60)
    assert r["bit_exact"] is True and r["outputs_checked"] == 4 * net.output_size
    assert r["origin"] == "emulated"
