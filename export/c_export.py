"""Standalone C99 export: one ``.c`` + ``.h`` per network, for bare-metal targets (Cortex-M).

TVM 0.27 has no bare-metal runtime, so MCUs get plain C emitted from the
:class:`QuantizedNet`. The code is specialised per network (every dimension, bit-width,
multiplier and shift is a literal, so the compiler unrolls and folds) and obeys the rules an
MCU build needs:

- **no malloc, no float, no libc**: only ``<stdint.h>``; the object has no undefined symbols.
- **weights packed to their real bit-width**: b bits per weight, two's complement, in a
  little-endian bitstream (weight k occupies bits ``k*b .. k*b+b-1``), unpacked on the fly
  by a two-byte read; each array carries one zero byte of tail padding for that read. Dense
  weights are streamed row by row of the *output* (``(out, in)``), conv weights as
  ``(out, in, ky, kx)``, so the inner loop walks the stream sequentially.
- **one static arena** sized by the peak live feature maps: ``max_i(in_i + out_i)`` bytes (the
  same figure as the ``sram_peak`` hardware model), rounded up to 4. Tensor i (the input of
  unit i) sits at the start of the arena when i is even and at its end when i is odd, so the
  input and output of every unit are disjoint. The int32 head output is 4-byte aligned.
- **max-pool fused into the conv**: each pooled code is the max of the requantized codes of
  its window (requantization is monotone, so this equals pooling afterwards), so no pre-pool
  buffer is needed.
- **requantization** as ``export.quant.requantize``, written for non-negative values
  (``acc <= 0`` gives code 0 since ``acc*M0 + 2^(r-1) < 2^r``), so the shift is of a
  non-negative int64 and its result is defined by C99, not by the compiler.

Build helpers compile a host test harness with gcc, and a Cortex-M4 image for QEMU's
``mps2-an386`` board (newlib + rdimon semihosting), and read flash/RAM from the linked ELF.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.qnet import INPUT_QMAX, QuantizedNet, QUnit

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def c_prefix(net: QuantizedNet) -> str:
    """The C identifier prefix (and file stem): derived from the arch id, never user text."""
    prefix = f"inag_{net.arch_id}"
    if not _NAME_RE.match(prefix):  # arch ids are hex; this guards the invariant
        raise ExportError(f"arch id {net.arch_id!r} does not give a safe C identifier")
    return prefix


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Signed codes as a little-endian two's-complement bitstream of ``bits`` per value,
    plus one zero byte of padding (the on-the-fly reader loads two bytes)."""
    v = np.asarray(codes, dtype=np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ExportError(f"weight codes do not fit {bits} bits")
    u = (v & ((1 << bits) - 1)).astype(np.uint16)
    bitmat = (u[:, None] >> np.arange(bits, dtype=np.uint16)[None, :]) & 1
    return np.packbits(bitmat.astype(np.uint8).ravel(), bitorder="little").tobytes() + b"\0"


def unpack_bits(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (used by tests)."""
    b = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: n * bits]
    u = (b.reshape(n, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u)


@dataclass(frozen=True)
class CSource:
    """The emitted sources and the memory plan they use."""

    prefix: str
    header: str
    source: str
    arena_bytes: int
    tensor_bytes: tuple[int, ...]  # tensor i = input of unit i; last = int32 head output
    tensor_offsets: tuple[int, ...]
    weight_bytes: int  # packed weight arrays incl. padding
    bias_bytes: int

    @property
    def input_size(self) -> int:
        return self.tensor_bytes[0]


def _tensor_sizes(net: QuantizedNet) -> list[int]:
    sizes = [math.prod(net.input_shape)]
    for u in net.units:
        n = math.prod(u.out_shape)
        sizes.append(4 * n if u.head else n)
    return sizes


def memory_plan(net: QuantizedNet) -> tuple[int, list[int], list[int]]:
    """``(arena_bytes, tensor_bytes, tensor_offsets)``: ping-pong at the two arena ends."""
    sizes = _tensor_sizes(net)
    peak = max(a + b for a, b in zip(sizes, sizes[1:], strict=False))
    arena = (peak + 3) // 4 * 4
    offsets = [0 if i % 2 == 0 else arena - s for i, s in enumerate(sizes)]
    return arena, sizes, offsets


def _array(name: str, ctype: str, values: Any, per_line: int = 16) -> str:
    vals = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(vals[i : i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n  ".join(lines)
    return f"static const {ctype} {name}[{len(vals)}] = {{\n  {body}\n}};\n"


def _unit_code(u: QUnit, p: str) -> tuple[str, str, int, int]:
    """Constants and the function of one unit; returns (data, function, wbytes, bbytes)."""
    i = u.index
    stream = u.weight.T if u.kind == "dense" else u.weight  # (out, in) / (out, in, k, k)
    packed = pack_bits(stream, u.bits)
    data = f"/* unit {i}: {u.kind}, weights {list(u.weight.shape)} at {u.bits} bits */\n"
    # 8-bit streams are plain int8 arrays (same bytes), read by index: vectorizable
    wtype, wdt = ("int8_t", np.int8) if u.bits == 8 else ("uint8_t", np.uint8)
    data += _array(f"W{i}", wtype, np.frombuffer(packed, wdt), 24)
    data += _array(f"B{i}", "int32_t", u.bias, 8)
    in_t = "int8_t" if u.in_signed else "uint8_t"
    out_t = "int32_t" if u.head else "uint8_t"
    bits = u.bits

    def wat(idx: str) -> str:
        """C expression of weight number ``idx`` of the unit's stream."""
        return f"W{i}[{idx}]" if bits == 8 else f"wget(W{i}, ({idx}) * {bits}u, {bits}u)"

    if not u.head:
        store = f"rq(acc, {u.m0}, {u.shift}u, {u.qmax})"
    if u.kind == "dense":
        n_in = u.weight.shape[0]
        n_out = u.weight.shape[1]
        value = "acc" if u.head else store
        fn = f"""
static void unit{i}(const {in_t} *restrict x, {out_t} *restrict y)
{{
  for (uint32_t o = 0u; o < {n_out}u; ++o) {{
    int32_t acc = B{i}[o];
    for (uint32_t k = 0u; k < {n_in}u; ++k) {{
      acc += (int32_t)x[k] * {wat(f"o * {n_in}u + k")};
    }}
    y[o] = ({out_t}){value};
  }}
}}
"""
    else:
        c_in, h, w = u.in_shape
        c_out, oh, ow = u.conv_shape
        k, s, pad, pool = u.kernel, u.stride, u.pad, u.pool
        ph, pw = oh // pool, ow // pool
        fn = f"""
static void unit{i}(const {in_t} *restrict x, {out_t} *restrict y)
{{
  for (uint32_t oc = 0u; oc < {c_out}u; ++oc) {{
    const uint32_t wbase = oc * {c_in * k * k}u;
    for (int32_t py = 0; py < {ph}; ++py) {{
      for (int32_t px = 0; px < {pw}; ++px) {{
        uint8_t best = 0u;
        for (int32_t dy = 0; dy < {pool}; ++dy) {{
          for (int32_t dx = 0; dx < {pool}; ++dx) {{
            const int32_t oy = py * {pool} + dy, ox = px * {pool} + dx;
            int32_t acc = B{i}[oc];
            uint32_t widx = wbase;
            for (int32_t ic = 0; ic < {c_in}; ++ic) {{
              for (int32_t ky = 0; ky < {k}; ++ky) {{
                const int32_t iy = oy * {s} - {pad} + ky;
                for (int32_t kx = 0; kx < {k}; ++kx, ++widx) {{
                  const int32_t ix = ox * {s} - {pad} + kx;
                  if (iy >= 0 && iy < {h} && ix >= 0 && ix < {w}) {{
                    acc += (int32_t)x[(ic * {h} + iy) * {w} + ix] * {wat("widx")};
                  }}
                }}
              }}
            }}
            {{
              const uint8_t q = {store};
              if (q > best) best = q;
            }}
          }}
        }}
        y[((int32_t)oc * {ph} + py) * {pw} + px] = best;
      }}
    }}
  }}
}}
"""
        if u.head:  # pragma: no cover - the head is always dense (inag.arch)
            raise ExportError("a conv head is not supported by the C export")
    return data, fn, len(packed), 4 * len(u.bias)


def emit_c(net: QuantizedNet) -> CSource:
    """Emit the C99 header and source of ``net``."""
    p = c_prefix(net)
    P = p.upper()
    arena, sizes, offsets = memory_plan(net)
    n_in, n_out = sizes[0], net.output_size
    head = f"""/* {p}.h -- generated by inag (integer-only export); do not edit.
 * Network {net.arch.summary()}  (arch_id {net.arch_id})
 *
 * Input:  {n_in} int8 codes, layout {"x".join(map(str, net.input_shape))} (C, H, W for images),
 *         code = clamp(floor(x / S_X + 0.5), -127, 127), S_X = {net.input_scale!r}
 * Output: {n_out} int32 accumulators, y = acc * S_Y, S_Y = {net.output_scale!r}
 * Memory: one static arena of {arena} bytes; no malloc, no float, no libc.
 */
#ifndef {P}_H
#define {P}_H

#include <stdint.h>

#define {P}_INPUT_SIZE {n_in}
#define {P}_OUTPUT_SIZE {n_out}
#define {P}_ARENA_BYTES {arena}
#define {P}_INPUT_SCALE_STR "{net.input_scale!r}"
#define {P}_OUTPUT_SCALE_STR "{net.output_scale!r}"

#ifdef __cplusplus
extern "C" {{
#endif

/* The input buffer inside the arena: write {n_in} codes here, then call {p}_invoke(). */
int8_t *{p}_input(void);
/* The output inside the arena, valid after {p}_invoke() until the next input is written. */
const int32_t *{p}_output(void);
/* Run the network on the codes in {p}_input(). */
void {p}_invoke(void);
/* Convenience: copy x in, invoke, copy the output to y. */
void {p}_run(const int8_t *x, int32_t *y);

#ifdef __cplusplus
}}
#endif

#endif /* {P}_H */
"""
    data_parts, fn_parts = [], []
    wbytes = bbytes = 0
    for u in net.units:
        d, f, wb, bb = _unit_code(u, p)
        data_parts.append(d)
        fn_parts.append(f)
        wbytes += wb
        bbytes += bb
    calls = []
    for i, u in enumerate(net.units):
        in_t = "int8_t" if u.in_signed else "uint8_t"
        out_t = "int32_t" if u.head else "uint8_t"
        src_at, dst_at = offsets[i], offsets[i + 1]
        calls.append(f"  unit{i}(({in_t} *)(arena + {src_at}u), ({out_t} *)(arena + {dst_at}u));")
    last = len(net.units)
    src = f"""/* {p}.c -- generated by inag (integer-only export); do not edit.
 * Network {net.arch.summary()}  (arch_id {net.arch_id}), bits per unit {net.bits}.
 * Scheme: Jacob et al. 2017, symmetric weights, unsigned post-ReLU codes, int32 accumulators,
 * requantization q = clamp((acc * M0 + 2^(r-1)) >> r, 0, 2^b - 1) (round half up).
 */
#include "{p}.h"

/* One static arena: tensor i (the input of unit i) at the start (i even) or end (i odd). */
static int32_t arena_words[{arena // 4}];
#define arena ((uint8_t *)arena_words)

/* The b-bit two's-complement weight at bit position pos of a packed stream. */
/* bits is a literal at every call, so the branch folds: 2, 4 and 8 bits never straddle a
 * byte (one load; 8 bits becomes a sign-extending byte load), 3/5/6/7 bits read two bytes.
 * The sign extension is done arithmetically (no implementation-defined narrowing). */
static inline int32_t wget(const uint8_t *p, uint32_t pos, uint32_t bits)
{{
  uint32_t v;
  const uint32_t sign = 1u << (bits - 1u);
  if (8u % bits == 0u) {{
    v = (uint32_t)p[pos >> 3] >> (pos & 7u);
  }} else {{
    v = ((uint32_t)p[pos >> 3] | ((uint32_t)p[(pos >> 3) + 1u] << 8)) >> (pos & 7u);
  }}
  return (int32_t)((v & ((1u << bits) - 1u)) ^ sign) - (int32_t)sign;
}}

/* Requantize a non-negative accumulator; acc <= 0 always gives code 0. */
static inline uint8_t rq(int32_t acc, int32_t m0, uint32_t shift, int32_t qmax)
{{
  int64_t v;
  if (acc <= 0) return 0u;
  v = ((int64_t)acc * (int64_t)m0 + ((int64_t)1 << (shift - 1u))) >> shift;
  return (uint8_t)(v > (int64_t)qmax ? qmax : (int32_t)v);
}}

{"".join(data_parts)}{"".join(fn_parts)}
int8_t *{p}_input(void) {{ return (int8_t *)(arena + {offsets[0]}u); }}

const int32_t *{p}_output(void) {{ return (const int32_t *)(arena + {offsets[last]}u); }}

void {p}_invoke(void)
{{
  int8_t *x = (int8_t *)(arena + {offsets[0]}u);
  for (uint32_t k = 0u; k < {n_in}u; ++k) {{
    if (x[k] < -{INPUT_QMAX}) x[k] = -{INPUT_QMAX};
  }}
{chr(10).join(calls)}
}}

void {p}_run(const int8_t *x, int32_t *y)
{{
  int8_t *in = {p}_input();
  const int32_t *out;
  for (uint32_t k = 0u; k < {n_in}u; ++k) in[k] = x[k];
  {p}_invoke();
  out = {p}_output();
  for (uint32_t k = 0u; k < {n_out}u; ++k) y[k] = out[k];
}}
"""
    return CSource(p, head, src, arena, tuple(sizes), tuple(offsets), wbytes, bbytes)


def write_c(net: QuantizedNet, out_dir: Path) -> tuple[CSource, list[Path]]:
    cs = emit_c(net)
    h = out_dir / f"{cs.prefix}.h"
    c = out_dir / f"{cs.prefix}.c"
    h.write_text(cs.header)
    c.write_text(cs.source)
    return cs, [c, h]


# ---------------------------------------------------------------------------- host harness
def host_harness(prefix: str) -> str:
    """A test/benchmark driver for the host (stdio allowed here, not in the model).

    ``./harness run N`` reads N inputs (int8) from stdin and writes N outputs (int32 LE) to
    stdout; ``./harness bench ITERS REPEATS`` times ``invoke`` on one input with
    clock_gettime(CLOCK_MONOTONIC) and prints the median ns per inference.
    """
    P = prefix.upper()
    return f"""#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "{prefix}.h"

static double now_ns(void)
{{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}}

static int cmp(const void *a, const void *b)
{{
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}}

int main(int argc, char **argv)
{{
  if (argc >= 3 && strcmp(argv[1], "run") == 0) {{
    long n = atol(argv[2]);
    int8_t x[{P}_INPUT_SIZE];
    int32_t y[{P}_OUTPUT_SIZE];
    for (long i = 0; i < n; ++i) {{
      if (fread(x, 1, sizeof x, stdin) != sizeof x) return 3;
      {prefix}_run(x, y);
      fwrite(y, sizeof y[0], {P}_OUTPUT_SIZE, stdout);
    }}
    return 0;
  }}
  if (argc >= 4 && strcmp(argv[1], "bench") == 0) {{
    long iters = atol(argv[2]), reps = atol(argv[3]);
    double *t = malloc(sizeof(double) * (size_t)reps);
    volatile int32_t sink = 0;
    int8_t *x = {prefix}_input();
    for (int k = 0; k < {P}_INPUT_SIZE; ++k) x[k] = (int8_t)((k * 37) % 255 - 127);
    for (long i = 0; i < iters; ++i) {prefix}_invoke();
    for (long r = 0; r < reps; ++r) {{
      double t0 = now_ns();
      for (long i = 0; i < iters; ++i) {{
        {prefix}_invoke();
        sink += {prefix}_output()[0];
      }}
      t[r] = (now_ns() - t0) / (double)iters;
    }}
    qsort(t, (size_t)reps, sizeof(double), cmp);
    printf("%.1f\\n", t[reps / 2]);
    free(t);
    return 0;
  }}
  fprintf(stderr, "usage: %s run N < inputs | %s bench ITERS REPEATS\\n", argv[0], argv[0]);
  return 2;
}}
"""


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise ExportError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return proc


def build_host(
    src_dir: Path, prefix: str, cc: str = "gcc", opt: str = "-O2", extra: tuple[str, ...] = ()
) -> Path:
    """Compile the model and the host harness with ``cc``; returns the executable."""
    if shutil.which(cc) is None:
        raise ExportError(f"no C compiler {cc!r} on PATH")
    harness = src_dir / f"{prefix}_harness.c"
    harness.write_text(host_harness(prefix))
    exe = src_dir / f"{prefix}_harness"
    flags = ["-std=c99", opt, "-Wall", "-Wextra", "-Werror", "-pedantic", *extra]
    _run([cc, *flags, "-o", str(exe), str(src_dir / f"{prefix}.c"), str(harness)])
    return exe


def run_host(exe: Path, net: QuantizedNet, x_codes: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x_codes, dtype=np.int8)
    proc = _run([str(exe), "run", str(len(x))], input=x.tobytes())
    return np.frombuffer(proc.stdout, dtype="<i4").reshape(len(x), net.output_size)


def bench_host(exe: Path, iters: int, repeats: int = 15) -> float:
    """Median seconds per inference, timed inside the harness."""
    proc = _run([str(exe), "bench", str(iters), str(repeats)])
    return float(proc.stdout.decode().strip()) * 1e-9


# ---------------------------------------------------------------------------- Cortex-M
ARM_GCC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
CM4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", "-std=c99", "-O2")
# A descriptor's capability.cpu spelled as vendors do -> GCC's -mcpu name (the FPU suffix is
# irrelevant here: the model is integer-only and built with -mfloat-abi=soft).
_GCC_CORTEX_M = {
    "cortex-m4f": "cortex-m4",
    "cortex-m7f": "cortex-m7",
    "cortex-m0+": "cortex-m0plus",
}


def cortex_m_cpu(cpu: str) -> str | None:
    """GCC's ``-mcpu`` for a descriptor's ``capability.cpu``, or None if it is no Cortex-M."""
    name = cpu.strip().lower()
    if not name.startswith("cortex-m"):
        return None
    return _GCC_CORTEX_M.get(name, name)


def cortex_m_flags(mcpu: str = "cortex-m4") -> tuple[str, ...]:
    """The firmware compile flags for one Cortex-M (:data:`CM4_FLAGS` for the Cortex-M4)."""
    return (f"-mcpu={mcpu}", *CM4_FLAGS[1:])


def arm_gcc_supports(mcpu: str) -> bool:
    """Whether this arm-none-eabi-gcc accepts ``-mcpu=mcpu`` (asked by preprocessing nothing)."""
    if not shutil.which(ARM_GCC):
        return False
    proc = subprocess.run(
        [ARM_GCC, *cortex_m_flags(mcpu), "-E", "-x", "c", "-o", os.devnull, os.devnull],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


# QEMU mps2-an386 (Cortex-M4): 4 MB SSRAM at 0x0 (code, data: loaded in place by QEMU), and
# SSRAM at 0x20000000 for the stack. One region for everything keeps .data where it is loaded.
QEMU_LINKER = """/* QEMU mps2-an386: image at 0x0, stack at the top of 0x20000000 + 4 MB. */
MEMORY
{
  SSRAM1 (rwx) : ORIGIN = 0x00000000, LENGTH = 4M
  SSRAM2 (rwx) : ORIGIN = 0x20000000, LENGTH = 4M
}
ENTRY(Reset_Handler)
SECTIONS
{
  .isr_vector : { KEEP(*(.isr_vector)) } > SSRAM1
  .text : { *(.text*) KEEP(*(.init)) KEEP(*(.fini)) } > SSRAM1
  .rodata : { *(.rodata*) } > SSRAM1
  .ARM.extab : { *(.ARM.extab* .gnu.linkonce.armextab.*) } > SSRAM1
  .ARM.exidx : { __exidx_start = .; *(.ARM.exidx*) __exidx_end = .; } > SSRAM1
  .preinit_array : { PROVIDE_HIDDEN(__preinit_array_start = .); KEEP(*(.preinit_array))
                     PROVIDE_HIDDEN(__preinit_array_end = .); } > SSRAM1
  .init_array : { PROVIDE_HIDDEN(__init_array_start = .); KEEP(*(SORT(.init_array.*)))
                  KEEP(*(.init_array)) PROVIDE_HIDDEN(__init_array_end = .); } > SSRAM1
  .fini_array : { PROVIDE_HIDDEN(__fini_array_start = .); KEEP(*(.fini_array))
                  PROVIDE_HIDDEN(__fini_array_end = .); } > SSRAM1
  .data : { *(.data*) } > SSRAM1
  .bss (NOLOAD) : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > SSRAM1
  end = .; PROVIDE(_end = .); PROVIDE(__end__ = .);
  __StackTop = ORIGIN(SSRAM2) + LENGTH(SSRAM2);
  PROVIDE(__stack = __StackTop);
}
"""


def cortex_m_vectors(
    stack: str, hard_fault: str = "Default_Handler", systick: str = "Default_Handler"
) -> str:
    """The 16-entry Cortex-M vector table (ARMv7-M ARM B1.5.2) every firmware here links:
    the initial stack pointer ``stack``, Reset_Handler, and ``Default_Handler`` (defined
    with it) except for the handlers named."""
    h = {"hf": hard_fault, "st": systick, "d": "Default_Handler"}
    entries = ["d", "hf", "d", "d", "d", 0, 0, 0, 0, "d", "d", 0, "d", "st"]
    slots = ", ".join("0" if e == 0 else f"(const void *){h[str(e)]}" for e in entries)
    return (
        "static void Default_Handler(void) { for (;;) {} }\n"
        '__attribute__((section(".isr_vector"), used))\n'
        f"const void *const vector_table[16] = {{\n  &{stack}, (const void *)Reset_Handler, "
        f"{slots},\n}};\n"
    )


# Reset_Handler of a firmware without libc: copy .data, zero .bss, call main.
RESET_COPY_DATA = """#include <stdint.h>
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
void Reset_Handler(void)
{
  uint32_t *src = &_sidata, *dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss;) *dst++ = 0u;
  (void)main();
  for (;;) {}
}
"""

QEMU_STARTUP = """/* Minimal vector table for QEMU mps2-an386: newlib's rdimon crt0 (_start)
 * does the rest: zeroes .bss, sets up the heap via semihosting, calls main, exits. */
#include <stdint.h>
extern void _start(void);
extern uint32_t __StackTop;
void Reset_Handler(void) { _start(); for (;;) {} }
""" + cortex_m_vectors("__StackTop")


def qemu_app(net: QuantizedNet, prefix: str, x_codes: np.ndarray) -> str:
    """A semihosting test app: the inputs are compiled in, outputs printed one per line."""
    x = np.asarray(x_codes, dtype=np.int8)
    P = prefix.upper()
    return f"""#include <stdio.h>
#include "{prefix}.h"
#define N_INPUTS {len(x)}
{_array("inputs", "int8_t", x.reshape(len(x), -1), 32)}
int main(void)
{{
  int32_t y[{P}_OUTPUT_SIZE];
  for (int n = 0; n < N_INPUTS; ++n) {{
    {prefix}_run(&inputs[n * {P}_INPUT_SIZE], y);
    for (int k = 0; k < {P}_OUTPUT_SIZE; ++k) printf("%ld\\n", (long)y[k]);
  }}
  printf("done\\n");
  return 0;
}}
"""


def build_qemu(src_dir: Path, net: QuantizedNet, prefix: str, x_codes: np.ndarray) -> Path:
    """Link model + test app for Cortex-M4 (newlib, rdimon semihosting) for mps2-an386."""
    (src_dir / "qemu_link.ld").write_text(QEMU_LINKER)
    (src_dir / "qemu_startup.c").write_text(QEMU_STARTUP)
    (src_dir / "qemu_app.c").write_text(qemu_app(net, prefix, x_codes))
    elf = src_dir / "qemu_app.elf"
    _run(
        [
            ARM_GCC,
            *CM4_FLAGS,
            "--specs=rdimon.specs",
            "-T",
            str(src_dir / "qemu_link.ld"),
            "-o",
            str(elf),
            str(src_dir / "qemu_startup.c"),
            str(src_dir / "qemu_app.c"),
            str(src_dir / f"{prefix}.c"),
            "-Wl,--gc-sections",
        ]
    )
    return elf


def run_qemu(elf: Path, net: QuantizedNet, n: int, timeout: float = 300.0) -> np.ndarray:
    cmd = [
        QEMU,
        "-M",
        "mps2-an386",
        "-nographic",
        "-monitor",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(elf),
    ]
    proc = _run(cmd, timeout=timeout)
    lines = proc.stdout.decode().split()
    if not lines or lines[-1] != "done":
        raise ExportError(f"QEMU run did not finish: {proc.stdout.decode()[-500:]}")
    return np.array([int(v) for v in lines[:-1]], dtype=np.int64).reshape(n, net.output_size)


# Firmware image for flash/RAM figures: no libc at all, a real reset handler (copies .data
# from flash, zeroes .bss), memories sized from the platform descriptor.
FIRMWARE_STARTUP = (
    "/* Cortex-M startup for the size build: copy .data, zero .bss, main. */\n"
    + RESET_COPY_DATA
    + cortex_m_vectors("_estack")
)


def firmware_linker(
    flash_bytes: int,
    ram_bytes: int,
    flash_origin: int = 0x0,
    ram_origin: int = 0x20000000,
    title: str = "Size build: flash at 0x0, RAM at 0x20000000, sizes from the platform.",
) -> str:
    """A Cortex-M linker script: .data copied from flash to RAM, stack at the top of RAM."""
    return f"""/* {title} */
MEMORY
{{
  FLASH (rx) : ORIGIN = {flash_origin:#010x}, LENGTH = {flash_bytes}
  RAM (rwx) : ORIGIN = {ram_origin:#010x}, LENGTH = {ram_bytes}
}}
ENTRY(Reset_Handler)
SECTIONS
{{
  .isr_vector : {{ KEEP(*(.isr_vector)) }} > FLASH
  .text : {{ *(.text*) }} > FLASH
  .rodata : {{ *(.rodata*) . = ALIGN(4); }} > FLASH
  _sidata = LOADADDR(.data);
  .data : {{ _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
  _estack = ORIGIN(RAM) + LENGTH(RAM);
  /DISCARD/ : {{ *(.ARM.exidx*) *(.ARM.extab*) }}
}}
"""


def firmware_main(prefix: str) -> str:
    return f"""#include "{prefix}.h"
int main(void)
{{
  for (;;) {prefix}_invoke();
}}
"""


def build_firmware(
    src_dir: Path, prefix: str, flash_bytes: int, ram_bytes: int, mcpu: str = "cortex-m4"
) -> tuple[Path, Path]:
    """Compile the model object and link a libc-free Cortex-M firmware (``-mcpu=mcpu``,
    Cortex-M4 by default); (object, elf)."""
    fw = src_dir / "cortex_m"
    fw.mkdir(exist_ok=True)
    (fw / "startup.c").write_text(FIRMWARE_STARTUP)
    (fw / "main.c").write_text(firmware_main(prefix))
    (fw / "link.ld").write_text(firmware_linker(flash_bytes, ram_bytes))
    obj = fw / f"{prefix}.o"
    common = [*cortex_m_flags(mcpu), "-ffreestanding", "-ffunction-sections", "-fdata-sections"]
    model_c = str(src_dir / f"{prefix}.c")
    _run([ARM_GCC, *common, "-Wall", "-Werror", "-c", "-o", str(obj), model_c])
    elf = fw / "firmware.elf"
    _run(
        [
            ARM_GCC,
            *common,
            "-nostdlib",
            "-I",
            str(src_dir),
            "-T",
            str(fw / "link.ld"),
            "-Wl,--gc-sections",
            "-o",
            str(elf),
            str(fw / "startup.c"),
            str(fw / "main.c"),
            str(obj),
            "-lgcc",
        ]
    )
    return obj, elf


def arm_tools() -> dict[str, str | None]:
    return {"gcc": shutil.which(ARM_GCC), "qemu": shutil.which(QEMU)}


# ---------------------------------------------------------------------------- ELF sizes
_SHF_WRITE, _SHF_ALLOC = 0x1, 0x2
_SHT_NOBITS = 8


def elf_sections(path: Path) -> list[dict[str, Any]]:
    """Sections of a 32- or 64-bit little-endian ELF file: name, type, flags, size."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        raise ExportError(f"{path} is not an ELF file")
    is64 = data[4] == 2
    if data[5] != 1:
        raise ExportError(f"{path}: only little-endian ELF is supported")
    if is64:
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        fmt = "<IIQQQQIIQQ"
    else:
        (shoff,) = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        fmt = "<IIIIIIIIII"
    heads = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    str_off = heads[shstrndx][4]
    out = []
    for h in heads:
        name_off, sh_type, flags, _addr, _off, size = h[:6]
        end = data.index(b"\0", str_off + name_off)
        name = data[str_off + name_off : end].decode()
        out.append({"name": name, "type": sh_type, "flags": flags, "size": size})
    return out


def elf_sizes(path: Path) -> dict[str, Any]:
    """Flash = allocated sections with contents (.text, .rodata, .data, vectors, ...);
    RAM = allocated writable sections (.data, .bss). Read from the ELF section headers."""
    secs = [s for s in elf_sections(path) if s["flags"] & _SHF_ALLOC and s["size"]]
    flash = sum(s["size"] for s in secs if s["type"] != _SHT_NOBITS)
    ram = sum(s["size"] for s in secs if s["flags"] & _SHF_WRITE)

    def group(prefix: str) -> int:
        return sum(s["size"] for s in secs if s["name"].startswith(prefix))

    return {
        "flash_bytes": int(flash),
        "ram_bytes": int(ram),
        "text": group(".text"),
        "rodata": group(".rodata"),
        "data": group(".data"),
        "bss": group(".bss"),
        "sections": {s["name"]: int(s["size"]) for s in secs},
    }
