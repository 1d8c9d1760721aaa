"""Measurement on devices: Cortex-M firmware (a real board over its UART, or QEMU), aarch64.

**Cortex-M.** :func:`build_measure_firmware` links the standalone C model
(:mod:`export.c_export`) with a bare-metal harness — no libc, no semihosting, no heap — that

1. runs ``<prefix>_run`` on ``n_check`` inputs compiled into the image and prints every int32
   output (``inag output <i> <y0> <y1> ...``), so the reader checks them bit for bit against
   :func:`export.reference.run`;
2. picks its counter: the DWT cycle counter (``DEMCR.TRCENA``, ``DWT_CTRL.CYCCNTENA``,
   ``DWT_CYCCNT`` at 0xE0001004) when it counts, else SysTick on the processor clock with a
   wrap counter (QEMU does not implement the DWT: it reads as zero there). A bus fault while
   probing the DWT is caught and skipped, so a core without one falls back too;
3. times a loop of known instruction count (``inag calib <counts> <instructions>``) and the
   empty measurement (``inag overhead <counts>``);
4. runs ``<prefix>_run`` ``warmup`` times, then ``repeats`` timed runs, one
   ``inag cycles <counts>`` line each, and ends with ``inag done <crc32 of the outputs>``;
5. pauses (two SysTick periods, 2^25 processor clocks, asleep in WFI) and starts over, for
   ever: a reader may open the port at any time (opening a port flushes its input) and takes
   the next complete cycle; lines before ``inag begin`` are ignored.

The text goes out of a CMSDK APB UART (QEMU ``mps2-an386`` UART0 at 0x40004000). **On a real
board** change :class:`Board` (memory origins/lengths, ``cpu_hz`` = the core clock SysTick
counts, the UART base and its divider = UART clock / baud rate), or — for any other UART,
e.g. an STM32 USART — link a file defining ``void inag_uart_init(void)`` and
``void inag_uart_putc(char c)``: the harness's versions are weak symbols. Flash
``firmware.bin`` (at the flash origin), open the port, and call :func:`measure_serial`.

**QEMU.** :func:`measure_qemu` runs the same image under ``qemu-system-arm -M mps2-an386
-icount shift=0`` with UART0 on a loopback TCP socket and reads it with :func:`read_serial`,
the reader a real board uses (``socket://127.0.0.1:PORT``). With ``-icount shift=0`` virtual
time advances 1 ns per guest instruction and SysTick runs at the board's 25 MHz, so one count
is 40 instructions: results are labelled ``origin: "emulated"``, ``unit: "instructions"`` —
instruction counts, never device time (the calibration loop checks the 40).

**Cortex-A (aarch64).** :func:`run_aarch64` cross-builds the host C harness with
``aarch64-linux-gnu-gcc`` and runs it under ``qemu-aarch64`` user mode against the reference;
:func:`link_tvm_aarch64` links the cortex_a platform's TVM library with the cross compiler and
checks that it is an AArch64 ELF shared object (``e_machine`` 183) a board can load.

Every missing tool, unreachable port, timeout, garbage line or wrong output is an
:class:`DeviceError` (an :class:`~export.errors.ExportError`): one paragraph naming what to
install or check.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import c_export
from export.errors import ExportError
from export.qnet import INPUT_QMAX, QuantizedNet
from export.tools import tool_version

ARM_GCC = c_export.ARM_GCC
ARM_OBJCOPY = "arm-none-eabi-objcopy"
QEMU_ARM = c_export.QEMU
AARCH64_GCC = "aarch64-linux-gnu-gcc"
QEMU_AARCH64 = "qemu-aarch64"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
ICOUNT_SHIFT = 0  # -icount shift=N: 2^N ns of virtual time per guest instruction
EM_AARCH64 = 183

# Debian package of each tool (named in the error when the tool is missing).
DEBIAN_PACKAGES = {
    ARM_GCC: "gcc-arm-none-eabi",
    ARM_OBJCOPY: "binutils-arm-none-eabi",
    QEMU_ARM: "qemu-system-arm",
    AARCH64_GCC: "gcc-aarch64-linux-gnu",
    QEMU_AARCH64: "qemu-user",
}


class DeviceError(ExportError):
    """A device measurement could not be made or its result cannot be trusted."""


def require_tool(name: str, purpose: str) -> str:
    """The path of ``name``, or a :class:`DeviceError` naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        pkg = DEBIAN_PACKAGES.get(name, name)
        raise DeviceError(
            f"{purpose} needs {name}, which is not on PATH: install it (Debian/Ubuntu: "
            f"`sudo apt-get install {pkg}`) or put it on PATH"
        )
    return path


# ---------------------------------------------------------------------------- the board
@dataclass(frozen=True)
class Board:
    """Where the measurement firmware runs. The default is QEMU's ``mps2-an386`` (Cortex-M4,
    4 MB SSRAM at 0x0 used as flash, 4 MB at 0x20000000 as RAM, CMSDK UART0, 25 MHz)."""

    name: str = "qemu-mps2-an386"
    flash_origin: int = 0x00000000
    flash_bytes: int = 4 << 20
    ram_origin: int = 0x20000000
    ram_bytes: int = 4 << 20
    uart_base: int = 0x40004000  # CMSDK APB UART: DATA +0, STATE +4, CTRL +8, BAUDDIV +0x10
    uart_bauddiv: int = 16  # UART clock / baud rate (>= 16); QEMU ignores it
    cpu_hz: int = 25_000_000  # the processor clock SysTick and the DWT count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QEMU_MPS2_AN386 = Board()
QEMU_MACHINE = "mps2-an386"


# what the harness reports of a run, kept in every measurement record
_RUN_FIELDS = ("warmup", "repeats", "overhead", "calib", "crc32", "prefix")


# ---------------------------------------------------------------------------- firmware sources
FW_STARTUP = (
    """/* inag measurement firmware startup (Cortex-M, bare metal): copy .data, zero .bss,
 * call main. HardFault is caught: while the harness probes the DWT a faulting access is
 * skipped (a core without DWT falls back to SysTick); any other fault is reported. */
"""
    + c_export.RESET_COPY_DATA
    + """void HardFault_Handler(void);
void SysTick_Handler(void);
void inag_fault(uint32_t *frame);

__attribute__((naked)) void HardFault_Handler(void)
{
  __asm__ volatile(
    "tst lr, #4\\n\\t"
    "ite eq\\n\\t"
    "mrseq r0, msp\\n\\t"
    "mrsne r0, psp\\n\\t"
    "b inag_fault\\n\\t");
}

"""
    + c_export.cortex_m_vectors("_estack", "HardFault_Handler", "SysTick_Handler")
)

FW_HARNESS = """/* inag measurement harness for @PREFIX@ (Cortex-M, bare metal: no libc, no
 * semihosting, no heap). Protocol, one line each, over the UART:
 *   inag begin <prefix> counter=<dwt|systick> hz=<cpu hz> warmup=<w> repeats=<r> n_check=<n>
 *   inag output <i> <y0> <y1> ...        (int32 outputs of check input i)
 *   inag calib <counts> <instructions>   (a loop of known instruction count)
 *   inag overhead <counts>               (an empty measurement)
 *   inag cycles <counts>                 (one per timed run of @PREFIX@_run)
 *   inag done <crc32 of all outputs, int32 little-endian, 8 hex digits>
 * A real board: override INAG_UART_BASE / INAG_UART_BAUDDIV / INAG_CPU_HZ with -D, or link
 * your own inag_uart_init / inag_uart_putc (these are weak). */
#include <stdint.h>
#include "@PREFIX@.h"

#define INAG_WARMUP @WARMUP@u
#define INAG_REPEATS @REPEATS@u
#define INAG_N_CHECK @NCHECK@u
#define INAG_CALIB_ITERS @CALIB@u
#ifndef INAG_UART_BASE
#define INAG_UART_BASE @UART_BASE@u
#endif
#ifndef INAG_UART_BAUDDIV
#define INAG_UART_BAUDDIV @BAUDDIV@u
#endif
#ifndef INAG_CPU_HZ
#define INAG_CPU_HZ @CPU_HZ@u
#endif
#ifndef INAG_PAUSE_WRAPS
#define INAG_PAUSE_WRAPS 2u
#endif

#define REG(a) (*(volatile uint32_t *)(uintptr_t)(a))
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SCB_ICSR REG(0xE000ED04u)
#define SCB_CFSR REG(0xE000ED28u)
#define SCB_HFSR REG(0xE000ED2Cu)

void inag_uart_init(void);
void inag_uart_putc(char c);
void SysTick_Handler(void);
void inag_fault(uint32_t *frame);
int main(void);

@INPUTS@
static int32_t outputs[INAG_N_CHECK * @P@_OUTPUT_SIZE];

/* ---- UART: CMSDK APB UART (QEMU mps2-an386 UART0). Weak: a board file may replace them. */
__attribute__((weak)) void inag_uart_init(void)
{
  REG(INAG_UART_BASE + 0x10u) = INAG_UART_BAUDDIV;
  REG(INAG_UART_BASE + 0x08u) = 1u; /* TX enable */
}

__attribute__((weak)) void inag_uart_putc(char c)
{
  while (REG(INAG_UART_BASE + 0x04u) & 1u) {} /* TX buffer full */
  REG(INAG_UART_BASE) = (uint32_t)(uint8_t)c;
}

static void put_str(const char *s) { while (*s) inag_uart_putc(*s++); }

static void put_u64(uint64_t v)
{
  char b[21];
  int n = 0;
  do { b[n++] = (char)('0' + (int)(v % 10u)); v /= 10u; } while (v != 0u);
  while (n > 0) inag_uart_putc(b[--n]);
}

static void put_i32(int32_t v)
{
  if (v < 0) { inag_uart_putc('-'); put_u64((uint64_t)(-(int64_t)v)); }
  else put_u64((uint64_t)v);
}

static void put_hex32(uint32_t v)
{
  for (int s = 28; s >= 0; s -= 4) inag_uart_putc("0123456789abcdef"[(v >> s) & 15u]);
}

/* ---- faults: skip the access while probing the DWT; report anything else */
static volatile uint32_t probing, fault_skips;

void inag_fault(uint32_t *frame)
{
  const uint32_t pc = frame[6];
  if (probing) {
    const uint16_t op = *(const volatile uint16_t *)(uintptr_t)pc;
    frame[6] = pc + (((op >> 11) >= 0x1Du) ? 4u : 2u); /* 32-bit Thumb-2 or 16-bit */
    fault_skips++;
    SCB_CFSR = SCB_CFSR;                                /* write-one-to-clear */
    SCB_HFSR = SCB_HFSR;
    return;
  }
  put_str("\\ninag fault cfsr=");
  put_hex32(SCB_CFSR);
  put_str(" pc=");
  put_hex32(pc);
  put_str("\\n");
  for (;;) {}
}

/* ---- counters: DWT CYCCNT when it counts, else SysTick (processor clock) + wraps */
static uint32_t use_dwt;
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

static uint32_t dwt_probe(void)
{
  uint32_t ok, a, b;
  probing = 1u;
  DEMCR |= 1u << 24;                                    /* TRCENA */
  ok = (DWT_CTRL & (1u << 25)) == 0u;                   /* NOCYCCNT clear */
  if (ok) {
    DWT_CYCCNT = 0u;
    DWT_CTRL |= 1u;                                     /* CYCCNTENA */
    a = DWT_CYCCNT;
    for (volatile uint32_t k = 0u; k < 64u; ++k) {}
    b = DWT_CYCCNT;
    ok = b != a;
  }
  probing = 0u;
  return ok && fault_skips == 0u;
}

static void systick_start(void)
{
  SYST_CSR = 0u;
  SYST_RVR = 0x00FFFFFFu;
  SYST_CVR = 0u;
  SYST_CSR = 7u; /* ENABLE | TICKINT | CLKSOURCE = processor clock */
}

static uint64_t systick_now(void)
{
  uint32_t w1, w2, v, pend;
  do {
    w1 = systick_wraps;
    v = SYST_CVR;
    pend = SCB_ICSR & (1u << 26);                       /* PENDSTSET: wrapped, not yet taken */
    w2 = systick_wraps;
  } while (w1 != w2);
  if (pend != 0u && v > 0x00800000u) w1++;
  return (uint64_t)w1 * 0x01000000u + (0x00FFFFFFu - v);
}

static inline uint64_t now(void) { return use_dwt ? (uint64_t)DWT_CYCCNT : systick_now(); }

static inline uint64_t since(uint64_t t0)
{
  const uint64_t t1 = now();
  return use_dwt ? (uint64_t)(uint32_t)((uint32_t)t1 - (uint32_t)t0) : t1 - t0;
}

/* 2 instructions per iteration (subs, bne) */
__attribute__((noinline)) static void calib_loop(uint32_t n)
{
  __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b\\n\\t" : "+l"(n) : : "cc");
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, uint32_t n)
{
  for (uint32_t i = 0u; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc;
}

/* One measurement cycle, from 'inag begin' to 'inag done'. */
static void measure_once(void)
{
  uint32_t crc = 0xFFFFFFFFu;
  uint64_t t0, c;
  put_str("\\ninag begin @PREFIX@ counter=");
  put_str(use_dwt ? "dwt" : "systick");
  put_str(" hz="); put_u64(INAG_CPU_HZ);
  put_str(" warmup="); put_u64(INAG_WARMUP);
  put_str(" repeats="); put_u64(INAG_REPEATS);
  put_str(" n_check="); put_u64(INAG_N_CHECK);
  put_str("\\n");
  for (uint32_t n = 0u; n < INAG_N_CHECK; ++n) {
    int32_t *y = &outputs[n * @P@_OUTPUT_SIZE];
    @PREFIX@_run(&inputs[n * @P@_INPUT_SIZE], y);
    put_str("inag output ");
    put_u64(n);
    for (uint32_t k = 0u; k < @P@_OUTPUT_SIZE; ++k) {
      uint8_t le[4];
      const uint32_t u = (uint32_t)y[k];
      le[0] = (uint8_t)u; le[1] = (uint8_t)(u >> 8); le[2] = (uint8_t)(u >> 16);
      le[3] = (uint8_t)(u >> 24);
      crc = crc32_update(crc, le, 4u);
      inag_uart_putc(' ');
      put_i32(y[k]);
    }
    put_str("\\n");
  }
  t0 = now();
  calib_loop(INAG_CALIB_ITERS);
  c = since(t0);
  put_str("inag calib "); put_u64(c);
  put_str(" "); put_u64(2u * (uint64_t)INAG_CALIB_ITERS); put_str("\\n");
  t0 = now();
  c = since(t0);
  put_str("inag overhead "); put_u64(c); put_str("\\n");
  for (uint32_t w = 0u; w < INAG_WARMUP; ++w) @PREFIX@_run(inputs, outputs);
  for (uint32_t r = 0u; r < INAG_REPEATS; ++r) {
    t0 = now();
    @PREFIX@_run(inputs, outputs);
    c = since(t0);
    put_str("inag cycles "); put_u64(c); put_str("\\n");
  }
  put_str("inag done "); put_hex32(crc ^ 0xFFFFFFFFu); put_str("\\n");
}

/* The cycle repeats forever, INAG_PAUSE_WRAPS SysTick periods (2^24 processor clocks each)
 * apart, so a reader may open the port at any time and wait for the next 'inag begin'. While
 * the DWT counts, SysTick is off during the cycle (no interrupt in a timed run). */
int main(void)
{
  inag_uart_init();
  use_dwt = dwt_probe();
  for (;;) {
    if (use_dwt) SYST_CSR = 0u;
    else systick_start();
    measure_once();
    systick_start();
    const uint32_t w = systick_wraps;
    while ((uint32_t)(systick_wraps - w) < INAG_PAUSE_WRAPS) { __asm__ volatile("wfi"); }
  }
}
"""


def firmware_linker(board: Board) -> str:
    return c_export.firmware_linker(
        board.flash_bytes,
        board.ram_bytes,
        board.flash_origin,
        board.ram_origin,
        f"inag measurement firmware for {board.name}: memories from export.device.Board",
    )


CALIB_ITERS = 50_000


def harness_inputs(net: QuantizedNet, n_check: int = 4, seed: int = 0) -> np.ndarray:
    """The int8 input codes compiled into the firmware (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    shape = (n_check, *net.input_shape)
    return rng.integers(-INPUT_QMAX, INPUT_QMAX + 1, shape).astype(np.int8)


def outputs_crc32(y: np.ndarray) -> str:
    """The checksum the harness prints: CRC-32 of the int32 outputs, little-endian, in order."""
    return f"{zlib.crc32(np.ascontiguousarray(y, dtype='<i4').tobytes()) & 0xFFFFFFFF:08x}"


def harness_source(
    net: QuantizedNet, prefix: str, x_codes: np.ndarray, warmup: int, repeats: int, board: Board
) -> str:
    x = np.asarray(x_codes, dtype=np.int8).reshape(len(x_codes), -1)
    if warmup < 0 or repeats < 1:
        raise DeviceError(f"need warmup >= 0 and repeats >= 1 (got {warmup}, {repeats})")
    inputs = c_export._array("inputs", "int8_t", x, 32)
    subs = {
        "@PREFIX@": prefix,
        "@P@": prefix.upper(),
        "@WARMUP@": str(int(warmup)),
        "@REPEATS@": str(int(repeats)),
        "@NCHECK@": str(len(x)),
        "@CALIB@": str(CALIB_ITERS),
        "@UART_BASE@": f"{board.uart_base:#010x}",
        "@BAUDDIV@": str(int(board.uart_bauddiv)),
        "@CPU_HZ@": str(int(board.cpu_hz)),
        "@INPUTS@": inputs,
    }
    src = FW_HARNESS
    for k, v in subs.items():
        src = src.replace(k, v)
    return src


FW_FLAGS = (
    *c_export.CM4_FLAGS,
    "-ffreestanding",
    "-fno-tree-loop-distribute-patterns",  # no memcpy/memset calls: there is no libc
    "-ffunction-sections",
    "-fdata-sections",
    "-Wall",
    "-Wextra",
    "-Werror",
)


def _link(cmd: list[str], board: Board) -> None:
    try:
        c_export._run(cmd)
    except ExportError as exc:
        m = re.search(r"region [`']?(FLASH|RAM)'? overflowed by (\d+) bytes", str(exc))
        if not m:
            raise
        size = board.flash_bytes if m.group(1) == "FLASH" else board.ram_bytes
        raise DeviceError(
            f"the measurement firmware does not fit {board.name}: {m.group(1)} ({size} bytes) "
            f"overflowed by {m.group(2)} bytes; pick a smaller network or a larger board"
        ) from None


def build_measure_firmware(
    net: QuantizedNet,
    out_dir: Path,
    warmup: int = 2,
    repeats: int = 20,
    board: Board = QEMU_MPS2_AN386,
    n_check: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write and link the measurement firmware of ``net`` into ``out_dir``.

    Returns ``{"elf", "bin", "prefix", "inputs", "expected_crc32", "sizes", "model_sizes",
    "board", "warmup", "repeats"}``: paths of ``firmware.elf`` / ``firmware.bin`` (flash the
    .bin at ``board.flash_origin``), the input codes compiled in, the CRC-32 the harness must
    print, the ELF sizes of the firmware and of the model object alone
    (:func:`export.c_export.elf_sizes`)."""
    from export import reference

    gcc = require_tool(ARM_GCC, "building the Cortex-M measurement firmware")
    objcopy = require_tool(ARM_OBJCOPY, "building the Cortex-M measurement firmware")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cs, _ = c_export.write_c(net, out_dir)
    prefix = cs.prefix
    x = harness_inputs(net, n_check, seed)
    (out_dir / "startup.c").write_text(FW_STARTUP)
    (out_dir / "harness.c").write_text(harness_source(net, prefix, x, warmup, repeats, board))
    (out_dir / "link.ld").write_text(firmware_linker(board))
    obj = out_dir / f"{prefix}.o"
    c_export._run([gcc, *FW_FLAGS, "-c", "-o", str(obj), str(out_dir / f"{prefix}.c")])
    elf = out_dir / "firmware.elf"
    _link(
        [
            gcc,
            *FW_FLAGS,
            "-nostdlib",
            "-I",
            str(out_dir),
            "-T",
            str(out_dir / "link.ld"),
            "-Wl,--gc-sections",
            "-o",
            str(elf),
            str(out_dir / "startup.c"),
            str(out_dir / "harness.c"),
            str(obj),
            "-lgcc",
        ],
        board,
    )
    binary = out_dir / "firmware.bin"
    c_export._run([objcopy, "-O", "binary", str(elf), str(binary)])
    y = reference.run(net, x)
    return {
        "elf": elf,
        "bin": binary,
        "prefix": prefix,
        "inputs": x,
        "expected_crc32": outputs_crc32(y),
        "sizes": c_export.elf_sizes(elf),
        "model_sizes": c_export.elf_sizes(obj),
        "board": board.to_dict(),
        "warmup": int(warmup),
        "repeats": int(repeats),
    }


# ---------------------------------------------------------------------------- the reader
_PATTERNS = {
    "begin": re.compile(
        r"inag begin (?P<prefix>[A-Za-z_]\w*) counter=(?P<counter>dwt|systick) "
        r"hz=(?P<hz>\d+) warmup=(?P<warmup>\d+) repeats=(?P<repeats>\d+) "
        r"n_check=(?P<n_check>\d+)"
    ),
    "output": re.compile(r"inag output (?P<i>\d+)(?P<values>(?: -?\d+)+)"),
    "calib": re.compile(r"inag calib (?P<counts>\d+) (?P<instructions>\d+)"),
    "overhead": re.compile(r"inag overhead (?P<counts>\d+)"),
    "cycles": re.compile(r"inag cycles (?P<counts>\d+)"),
    "done": re.compile(r"inag done (?P<crc>[0-9a-f]{8})"),
    "fault": re.compile(r"inag fault cfsr=(?P<cfsr>[0-9a-f]{8}) pc=(?P<pc>[0-9a-f]{8})"),
}


def _kind(line: str) -> str | None:
    for kind, pat in _PATTERNS.items():
        if pat.fullmatch(line):
            return kind
    return None


def _show(data: bytes, n: int = 160) -> str:
    text = data[-n:].decode("ascii", errors="backslashreplace")
    return repr(text)


class _Port:
    """A byte stream from a serial port (pyserial) or a ``socket://host:port`` (stdlib)."""

    def __init__(self, url: str, baudrate: int, deadline: float, backend: str, abort: Any):
        self.url = url
        self.sock: socket.socket | None = None
        self.ser: Any = None
        serial = None
        if backend in ("auto", "pyserial"):
            try:
                import serial  # type: ignore[import-not-found,no-redef]
            except ImportError:
                if backend == "pyserial" or not url.startswith("socket://"):
                    raise DeviceError(
                        f"reading the serial port {url!r} needs pyserial: `pip install pyserial`"
                        " (without it only socket://host:port URLs can be read)"
                    ) from None
        while True:
            try:
                if serial is not None:
                    self.ser = serial.serial_for_url(url, baudrate=baudrate, timeout=0.1)
                else:
                    self.sock = _connect(url, deadline)
                return
            except DeviceError:
                raise
            except (OSError, ValueError, Exception) as exc:  # noqa: BLE001 - SerialException
                retry = isinstance(exc, ConnectionRefusedError) or "refused" in str(exc)
                if abort is not None and (msg := abort()):
                    raise DeviceError(msg) from None
                if not retry or time.monotonic() >= deadline:
                    raise DeviceError(
                        f"cannot open {url!r}: {exc}; check the port name (or host:port), that "
                        "the board is plugged in and powered, that no other program holds the "
                        "port (a terminal, a flasher) and that you may open it (on Linux: the "
                        "dialout group)"
                    ) from None
                time.sleep(0.05)

    def read(self, timeout: float) -> bytes:
        """Up to 4096 bytes; b"" on a timeout; raises ConnectionError when the port closes."""
        if self.sock is not None:
            self.sock.settimeout(max(timeout, 0.001))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return b""
            if not data:
                raise ConnectionError("the other end closed the connection")
            return data
        self.ser.timeout = max(timeout, 0.001)
        data = self.ser.read(1)
        if data:  # then whatever else is already there, without waiting
            self.ser.timeout = 0
            data += self.ser.read(4095)
        return data

    def close(self) -> None:
        for h in (self.sock, self.ser):
            if h is not None:
                with contextlib.suppress(Exception):  # closing is best effort
                    h.close()


def _connect(url: str, deadline: float) -> socket.socket:
    m = re.fullmatch(r"socket://\[?([^\]/?]+?)\]?:(\d+)/?(\?.*)?", url)
    if not m:
        raise DeviceError(
            f"{url!r} is not a socket://host:port URL; a serial device name needs pyserial "
            "(`pip install pyserial`)"
        )
    host, port = m.group(1), int(m.group(2))
    remaining = max(deadline - time.monotonic(), 0.05)
    return socket.create_connection((host, port), timeout=min(remaining, 5.0))


def read_serial(
    url: str,
    timeout: float = 30.0,
    max_bytes: int = 1 << 20,
    *,
    baudrate: int = 115200,
    backend: str = "auto",
    abort: Callable[[], str | None] | None = None,
) -> list[str]:
    """Read one run of the measurement harness from ``url`` and return its lines, from
    ``inag begin`` to ``inag done`` inclusive.

    ``url`` is a serial device (``/dev/ttyACM0``, ``COM3``; pyserial) or any pyserial URL,
    or ``socket://host:port`` (pyserial when installed, else the stdlib socket module).
    ``backend`` forces ``"pyserial"`` or ``"socket"``. Lines before ``inag begin`` are boot
    noise and ignored; after it every line must be a protocol line. ``timeout`` is an overall
    deadline (connecting included); ``max_bytes`` bounds what is read. ``abort`` is polled
    while waiting: a message from it ends the read with that error (used for QEMU's exit).
    Raises :class:`DeviceError` on a timeout, a closed port, a garbage line, a fault report
    or too many bytes.
    """
    if backend not in ("auto", "pyserial", "socket"):
        raise DeviceError(f"unknown serial backend {backend!r} (auto, pyserial or socket)")
    deadline = time.monotonic() + float(timeout)
    port = _Port(url, baudrate, deadline, backend, abort)
    buf = raw = b""
    total = 0
    noise = 0
    lines: list[str] = []
    check = (
        f"check that the measurement firmware is flashed and running, that {url!r} is its "
        "UART and that the baud rate matches"
    )
    try:
        while True:
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                raw = raw.strip(b"\r\x00 \t")
                try:
                    line = raw.decode("ascii")
                    kind = _kind(line) if line.isprintable() else None
                except UnicodeDecodeError:
                    kind = None
                if not lines:
                    if kind == "begin":
                        lines.append(line)
                    elif kind == "fault":
                        raise DeviceError(f"the firmware on {url!r} reported a fault: {line}")
                    elif raw:
                        noise += 1
                    continue
                if not raw:
                    continue  # blank lines are harmless
                if kind is None or kind == "begin":
                    raise DeviceError(
                        f"garbage from {url!r} after 'inag begin' (line {len(lines) + 1}: "
                        f"{_show(raw)}): not a line of the inag measurement protocol; {check} "
                        "(a wrong baud rate garbles text) and that nothing else writes to it"
                    )
                if kind == "fault":
                    raise DeviceError(
                        f"the firmware on {url!r} faulted during the measurement ({line}); "
                        "rebuild it for this board (memory map, UART) and check the model fits"
                    )
                lines.append(line)
                if kind == "done":
                    return lines
            if total >= max_bytes:
                raise DeviceError(
                    f"read {total} bytes from {url!r} without a complete run of the harness "
                    f"('inag begin' ... 'inag done'); last bytes {_show(buf or raw)}; {check}"
                )
            remaining = deadline - time.monotonic()
            if abort is not None and (msg := abort()):
                raise DeviceError(msg)
            if remaining <= 0:
                seen = (
                    f"got {len(lines)} protocol lines but no 'inag done'"
                    if lines
                    else f"no 'inag begin' line ({total} bytes, {noise} other lines"
                    + (f", last {_show(buf)})" if buf else ")")
                )
                raise DeviceError(
                    f"timed out after {timeout:g} s reading {url!r}: {seen}; {check}; a long "
                    "measurement needs a larger timeout"
                )
            try:
                data = port.read(min(remaining, 0.2))
            except Exception as exc:  # noqa: BLE001 - ConnectionError, OSError, SerialException
                if abort is not None and (msg := abort()):
                    raise DeviceError(msg) from None
                seen = f"after {len(lines)} protocol lines" if lines else "before 'inag begin'"
                tail = f"; last bytes {_show(buf)}" if buf else ""
                raise DeviceError(
                    f"{url!r} closed {seen} ({total} bytes read{tail}): {exc}; {check}, and "
                    "that the board did not reset or disconnect"
                ) from None
            total += len(data)
            buf += data[: max(max_bytes - (total - len(data)), 0)]
            if len(buf) > 4096 and b"\n" not in buf:
                raw = buf
                buf = buf[-256:]
                noise += 1
                if lines:
                    raise DeviceError(
                        f"garbage from {url!r} after 'inag begin' (a line of over 4096 bytes, "
                        f"ending {_show(raw)}); {check}"
                    )
    finally:
        port.close()


def parse_report(lines: list[str]) -> dict[str, Any]:
    """The fields of one harness run (the lines of :func:`read_serial`)."""
    if not lines or _kind(lines[0]) != "begin" or _kind(lines[-1]) != "done":
        raise DeviceError(
            "not a complete harness run: it must go from 'inag begin' to 'inag done'"
        )
    m = _PATTERNS["begin"].fullmatch(lines[0])
    assert m is not None
    head = m.groupdict()
    rep: dict[str, Any] = {
        "prefix": head["prefix"],
        "counter": head["counter"],
        "clock_hz": int(head["hz"]),
        "warmup": int(head["warmup"]),
        "repeats": int(head["repeats"]),
        "n_check": int(head["n_check"]),
        "outputs": {},
        "counts": [],
        "calib": None,
        "overhead": None,
        "crc32": None,
    }
    for line in lines[1:]:
        kind = _kind(line)
        if kind in (None, "begin", "fault"):
            raise DeviceError(f"not a line of one harness run: {line[:160]!r}")
        g = _PATTERNS[kind].fullmatch(line).groupdict()  # type: ignore[union-attr]
        if kind == "output":
            rep["outputs"][int(g["i"])] = [int(v) for v in g["values"].split()]
        elif kind == "cycles":
            rep["counts"].append(int(g["counts"]))
        elif kind == "calib":
            rep["calib"] = (int(g["counts"]), int(g["instructions"]))
        elif kind == "overhead":
            rep["overhead"] = int(g["counts"])
        elif kind == "done":
            rep["crc32"] = g["crc"]
    n_out = {len(v) for v in rep["outputs"].values()}
    if sorted(rep["outputs"]) != list(range(rep["n_check"])) or len(n_out) != 1:
        raise DeviceError(
            f"the harness printed outputs for inputs {sorted(rep['outputs'])}, expected "
            f"0..{rep['n_check'] - 1} of one length: the run is incomplete or corrupted"
        )
    if len(rep["counts"]) != rep["repeats"]:
        raise DeviceError(
            f"the harness printed {len(rep['counts'])} 'inag cycles' lines, its header "
            f"promised {rep['repeats']}: the run is incomplete or corrupted"
        )
    y = np.array([rep["outputs"][i] for i in range(rep["n_check"])], dtype=np.int64)
    if outputs_crc32(y) != rep["crc32"]:
        raise DeviceError(
            f"the harness's checksum {rep['crc32']} does not match the outputs it printed "
            f"({outputs_crc32(y)}): characters were lost or corrupted on the line"
        )
    rep["y"] = y
    return rep


def _check_outputs(
    rep: dict[str, Any], net: QuantizedNet, x_codes: np.ndarray, where: str
) -> dict[str, Any]:
    from export import reference

    prefix = c_export.c_prefix(net)
    if rep["prefix"] != prefix:
        raise DeviceError(
            f"{where} runs the firmware of {rep['prefix']}, not of {prefix}: flash the "
            "firmware built for this network"
        )
    ref = reference.run(net, np.asarray(x_codes, dtype=np.int8))
    y = rep["y"]
    if y.shape != ref.shape or not np.array_equal(y, ref):
        bad = np.argwhere(y != ref) if y.shape == ref.shape else None
        what = f"first difference at {tuple(bad[0])}" if bad is not None else f"shape {y.shape}"
        raise DeviceError(
            f"the outputs of {where} differ from the reference interpreter ({what}): the "
            "firmware is not bit-exact, or was built for other inputs"
        )
    return {
        "outputs_checked": int(y.size),
        "bit_exact": True,
        "expected_crc32": outputs_crc32(ref),
    }


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": samples,
        "median": float(statistics.median(samples)),
        "mean": float(statistics.fmean(samples)),
        "min": float(min(samples)),
    }


def measure_serial(
    url: str,
    timeout: float = 60.0,
    max_bytes: int = 1 << 20,
    *,
    net: QuantizedNet | None = None,
    x_codes: np.ndarray | None = None,
    baudrate: int = 115200,
    backend: str = "auto",
) -> dict[str, Any]:
    """Read one harness run from a board's serial port and return the cycle counts.

    With ``net`` the outputs are checked bit for bit against the reference on ``x_codes``
    (default: :func:`harness_inputs` with the harness's ``n_check``, the firmware's default).
    Returns ``{"origin": "device", "unit": "cycles", "device", "counter", "clock_hz",
    "samples", "median", "mean", "min", "median_s", "warmup", "repeats", "overhead",
    "calib", "crc32", "prefix", "outputs_checked", "bit_exact"}`` (plus ``"expected_crc32"``
    with ``net``); ``median_s`` is the median divided by the clock the firmware was built for
    (``Board.cpu_hz``), ``bit_exact`` is None when no ``net`` was given."""
    lines = read_serial(url, timeout, max_bytes, baudrate=baudrate, backend=backend)
    rep = parse_report(lines)
    check: dict[str, Any] = {"outputs_checked": 0, "bit_exact": None}
    if net is not None:
        x = harness_inputs(net, rep["n_check"]) if x_codes is None else x_codes
        check = _check_outputs(rep, net, x, url)
    samples = [float(c) for c in rep["counts"]]
    out: dict[str, Any] = {"origin": "device", "unit": "cycles", "device": url}
    out.update(_summary(samples))
    out.update(
        {
            "counter": rep["counter"],
            "clock_hz": rep["clock_hz"],
            "median_s": out["median"] / rep["clock_hz"] if rep["clock_hz"] else None,
            **{k: rep[k] for k in _RUN_FIELDS},
            **check,
        }
    )
    return out


# ---------------------------------------------------------------------------- QEMU
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_command(elf: Path, port: int, icount_shift: int = ICOUNT_SHIFT) -> list[str]:
    return [
        QEMU_ARM,
        "-M",
        QEMU_MACHINE,
        "-nographic",
        "-monitor",
        "none",
        "-icount",
        f"shift={int(icount_shift)},align=off,sleep=off",
        "-serial",
        f"tcp:127.0.0.1:{port},server=on,wait=on",
        "-kernel",
        str(elf),
    ]


def measure_qemu(
    net: QuantizedNet,
    warmup: int = 2,
    repeats: int = 20,
    timeout: float = 60.0,
    *,
    n_check: int = 4,
    work_dir: Path | None = None,
    icount_shift: int = ICOUNT_SHIFT,
) -> dict[str, Any]:
    """Build the measurement firmware, run it on QEMU ``mps2-an386`` with ``-icount
    shift=0`` and its UART0 on a loopback TCP socket, read it with :func:`read_serial`, check
    the outputs bit for bit against the reference, and return the instruction counts.

    Returns ``{"origin": "emulated", "unit": "instructions", "device", "counter",
    "instructions_per_count", "samples", "median", "mean", "min", "counts", "warmup",
    "repeats", "overhead", "calib", "crc32", "prefix", "outputs_checked", "bit_exact",
    "expected_crc32", "sizes", "model_sizes", "versions"}``: ``samples`` are instructions per
    ``<prefix>_run`` (counts × ``instructions_per_count``: 40 at shift 0), ``counts`` the raw
    SysTick counts, ``sizes`` / ``model_sizes`` the ELF flash/RAM of the firmware and of the
    model object (:func:`export.c_export.elf_sizes`). Never device time.

    ``icount_shift`` N makes one instruction 2^N ns of virtual time: a SysTick count is then
    40 / 2^N instructions (N = 3: 5 instructions, a finer resolution; the default 0: 40).
    ``timeout`` bounds the whole run: a large net needs (n_check + warmup + repeats) runs.
    """
    if not 0 <= int(icount_shift) <= 5:
        raise DeviceError(f"icount_shift must be 0..5 (got {icount_shift})")
    require_tool(ARM_GCC, "measuring on QEMU")
    qemu = require_tool(QEMU_ARM, "measuring on QEMU")
    with tempfile.TemporaryDirectory(prefix="inag_qemu_") as tmp:
        d = Path(work_dir) if work_dir is not None else Path(tmp)
        fw = build_measure_firmware(net, d, warmup, repeats, QEMU_MPS2_AN386, n_check)
        lines = _run_qemu(qemu, fw["elf"], timeout, icount_shift)
    rep = parse_report(lines)
    where = f"QEMU {QEMU_MACHINE}"
    check = _check_outputs(rep, net, fw["inputs"], where)
    if rep["crc32"] != fw["expected_crc32"]:  # pragma: no cover - implied by the check
        raise DeviceError(f"{where}: checksum {rep['crc32']} != {fw['expected_crc32']}")
    ns_per_instruction = float(1 << icount_shift)
    calib_counts, calib_instr = rep["calib"]
    measured = calib_instr / calib_counts if calib_counts else float("inf")
    if rep["counter"] == "systick":
        ipc = 1e9 / rep["clock_hz"] / ns_per_instruction
        if abs(measured - ipc) > 0.02 * ipc:
            raise DeviceError(
                f"{where}: a loop of {calib_instr} instructions took {calib_counts} SysTick "
                f"counts, {measured:.2f} instructions per count, not {ipc:g} (SysTick at "
                f"{rep['clock_hz']} Hz, -icount shift={icount_shift}): this QEMU's clocks "
                "differ from what the firmware assumes; update export.device.Board"
            )
    else:  # a QEMU that implements the DWT: use the calibration loop
        ipc = measured
    counts = [int(c) for c in rep["counts"]]
    out: dict[str, Any] = {
        "origin": "emulated",
        "unit": "instructions",
        "device": f"qemu-system-arm -M {QEMU_MACHINE} (cortex-m4) -icount shift={icount_shift}",
        "counter": rep["counter"],
        "instructions_per_count": ipc,
    }
    out.update(_summary([c * ipc for c in counts]))
    out.update(
        {
            "counts": counts,
            **{k: rep[k] for k in _RUN_FIELDS},
            **check,
            "sizes": fw["sizes"],
            "model_sizes": fw["model_sizes"],
            "versions": {ARM_GCC: tool_version(ARM_GCC), QEMU_ARM: tool_version(qemu)},
        }
    )
    return out


def _run_qemu(
    qemu: str, elf: Path, timeout: float, icount_shift: int = ICOUNT_SHIFT, attempts: int = 3
) -> list[str]:
    """Run QEMU with UART0 on a free loopback port and read it; retry if the port was taken."""
    last = ""
    for _ in range(attempts):
        port = _free_port()
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
        cmd = qemu_command(elf, port, icount_shift)
        cmd[0] = qemu
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )

        def exited(proc: subprocess.Popen = proc, err: Any = err) -> str | None:
            if proc.poll() is None:
                return None
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            return f"qemu-system-arm exited with status {proc.returncode}: {text[-800:]}"

        try:
            return read_serial(
                f"socket://127.0.0.1:{port}", timeout, backend="socket", abort=exited
            )
        except DeviceError as exc:
            # a closed socket often means QEMU is exiting: give it a moment
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
            msg = exited()
            if msg and ("bind" in msg.lower() or "in use" in msg.lower()):
                last = msg  # the port was taken between choosing and binding it: retry
                continue
            if msg and msg not in str(exc):
                raise DeviceError(f"QEMU {QEMU_MACHINE}: {msg} (while reading: {exc})") from None
            raise DeviceError(f"QEMU {QEMU_MACHINE}: {exc}") from None
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            err.close()
    raise DeviceError(f"QEMU could not listen on a loopback port: {last}")


# ---------------------------------------------------------------------------- aarch64
def elf_header(path: Path) -> dict[str, Any]:
    """Class, byte order, type and machine of an ELF file (``e_machine`` 183 = AArch64)."""
    data = Path(path).read_bytes()[:64]
    if len(data) < 20 or data[:4] != b"\x7fELF":
        raise DeviceError(f"{path} is not an ELF file")
    order = "<" if data[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(order + "HH", data, 16)
    types = {1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}
    machines = {40: "ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}
    return {
        "class": 64 if data[4] == 2 else 32,
        "byteorder": "little" if order == "<" else "big",
        "e_type": types.get(e_type, str(e_type)),
        "e_machine": int(e_machine),
        "machine": machines.get(e_machine, str(e_machine)),
    }


def run_aarch64(
    net: QuantizedNet,
    x_codes: np.ndarray | None = None,
    timeout: float = 120.0,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Cross-build the standalone C host harness for aarch64 and run it under
    ``qemu-aarch64 -L /usr/aarch64-linux-gnu``, bit for bit against the reference.

    Returns ``{"origin": "emulated", "runner", "compiler", "elf", "inputs", "outputs_checked",
    "bit_exact"}`` (``elf`` is :func:`elf_header` of the executable); a mismatch raises."""
    from export import reference

    gcc = require_tool(AARCH64_GCC, "cross-building the aarch64 C harness")
    qemu = require_tool(QEMU_AARCH64, "running the aarch64 C harness on this machine")
    if not (AARCH64_SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        raise DeviceError(
            f"no aarch64 C library under {AARCH64_SYSROOT}: install it (Debian/Ubuntu: "
            "`sudo apt-get install libc6-dev-arm64-cross`)"
        )
    if x_codes is None:
        x_codes = harness_inputs(net, 16)
    x = np.ascontiguousarray(x_codes, dtype=np.int8)
    with tempfile.TemporaryDirectory(prefix="inag_a64_") as tmp:
        d = Path(work_dir) if work_dir is not None else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        cs, _ = c_export.write_c(net, d)
        exe = c_export.build_host(d, cs.prefix, cc=gcc)
        head = elf_header(exe)
        if head["e_machine"] != EM_AARCH64:
            raise DeviceError(f"{gcc} built a {head['machine']} executable, not AArch64")
        cmd = [qemu, "-L", str(AARCH64_SYSROOT), str(exe), "run", str(len(x))]
        try:
            proc = subprocess.run(cmd, input=x.tobytes(), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"qemu-aarch64 did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise DeviceError(
                f"the aarch64 harness failed under qemu-aarch64 (status {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-800:]}"
            )
    y = np.frombuffer(proc.stdout, dtype="<i4")
    ref = reference.run(net, x)
    if y.size != ref.size or not np.array_equal(y.reshape(ref.shape), ref):
        raise DeviceError(
            f"the aarch64 C harness is not bit-exact: {y.size} outputs vs {ref.size} expected"
            + (
                f", {int((y.reshape(ref.shape) != ref).sum())} differ"
                if y.size == ref.size
                else ""
            )
        )
    return {
        "origin": "emulated",
        "runner": f"qemu-aarch64 -L {AARCH64_SYSROOT}",
        "compiler": tool_version(gcc),
        "elf": head,
        "inputs": int(len(x)),
        "outputs_checked": int(ref.size),
        "bit_exact": True,
    }


def link_tvm_aarch64(net: QuantizedNet, out_dir: Path, platform: Any) -> dict[str, Any]:
    """Compile ``net`` with TVM for ``platform``'s ``measure.tvm_target`` (an aarch64 triple;
    a loaded :class:`inag.platform.Platform`, e.g. ``load_platform("cortex_a")``)
    and link it with ``aarch64-linux-gnu-gcc`` into a shared object a board's TVM runtime
    loads. Returns :func:`export.tvm_export.export_library`'s dict plus ``"path"`` and
    ``"elf"`` (:func:`elf_header`: 64-bit, little-endian, ``DYN``, ``e_machine`` 183)."""
    from export import tvm_export

    require_tool(AARCH64_GCC, "linking the aarch64 TVM library")
    plat = platform
    target = tvm_export.check_target(plat)
    if not str(target.get("mtriple", "")).startswith("aarch64"):
        raise DeviceError(f"platform {plat.name!r} does not target aarch64: {target}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ex = tvm_export.compile_net(net, target)
    info = tvm_export.export_library(ex, out_dir, c_export.c_prefix(net), target)
    path = out_dir / info["library"]
    if not info.get("linked"):
        raise DeviceError(f"TVM did not link an aarch64 shared object: {info.get('note', info)}")
    head = elf_header(path)
    if head["e_machine"] != EM_AARCH64 or head["e_type"] != "DYN" or head["class"] != 64:
        raise DeviceError(
            f"{path.name} is a {head['class']}-bit {head['machine']} {head['e_type']} ELF, not "
            "an AArch64 shared object: check the platform's tvm_target and the cross compiler"
        )
    return {**info, "path": path, "elf": head}
