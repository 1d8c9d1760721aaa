"""What this machine is: CPU, ISA features, cores, clock, caches, memory, and its LLVM target.

The ``host_cpu`` platform describes whatever machine it is loaded on (the machines that run
INAG change from day to day: Intel or AMD, with or without AVX-512, x86-64 or arm64). Its YAML
marks detected fields ``{detect: PROBE}``; :func:`resolve` replaces each marker with what the
probe finds here, as a ``{value, source, kind: detected}`` number or a plain value. Cheap facts
(procfs, sysfs, ``os``) are read on every load; the expensive ones (LLVM's host CPU name, which
needs TVM, and two micro-benchmarks) are computed once per machine and cached, keyed by the
CPU's identity, under the INAG cache directory.

The TVM target is never a guess: ``mcpu`` is LLVM's name for this CPU, and ``mattr`` switches
every SIMD extension on or off as ``/proc/cpuinfo`` reports it, so a hypervisor that hides
AVX-512 from a Zen 4 guest gives code without AVX-512 (a CPU name alone would imply it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _pf
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CACHE_VERSION = 1
# LLVM feature name -> the /proc/cpuinfo flag that reports it (x86-64). Only ISA extensions a
# code generator may emit; tuning flags are LLVM's business.
X86_FEATURES = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "popcnt": "popcnt",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "lzcnt": "abm",
    "movbe": "movbe",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "sha": "sha_ni",
    "gfni": "gfni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}
# LLVM feature -> /proc/cpuinfo "Features" entry (aarch64).
ARM_FEATURES = {
    "neon": "asimd",
    "fullfp16": "asimdhp",
    "dotprod": "asimddp",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}
# The features a user asks about (platform `features`, `inag platforms show`), by family.
SHOWN = {
    "x86_64": ("avx2", "fma", "avxvnni", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
               "avx512bf16", "avx512fp16", "amx-int8"),
    "aarch64": ("neon", "dotprod", "i8mm", "sve", "sve2"),
}  # fmt: skip
# x86-64 micro-architecture levels (the psABI), by the cpuinfo flags each adds.
X86_LEVELS = (
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
    ("x86-64-v3", ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")),
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
)


class HostInfoError(ValueError):
    """A ``{detect: ...}`` marker names no probe, or a probe cannot run here."""


@dataclass(frozen=True)
class CpuInfo:
    """What procfs says about the CPU (cheap; read on every call)."""

    machine: str  # x86_64 | aarch64 | ...
    vendor: str
    model_name: str
    flags: frozenset[str]  # /proc/cpuinfo "flags" (x86) or "Features" (arm)
    identity: str  # family/model/stepping or implementer/part: what LLVM names a CPU by


def _machine() -> str:
    m = _pf.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


@cache
def cpu_info() -> CpuInfo:
    text = _read("/proc/cpuinfo") or ""
    first: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip() not in first:
            first[key.strip()] = val.strip()
    flags = first.get("flags") or first.get("Features") or ""
    machine = _machine()
    ident_keys = ("cpu family", "model", "stepping", "CPU implementer", "CPU part", "CPU variant")
    identity = ",".join(f"{k}={first[k]}" for k in ident_keys if k in first)
    vendor = first.get("vendor_id") or first.get("CPU implementer") or _pf.processor() or ""
    name = first.get("model name") or first.get("Model") or first.get("Hardware") or ""
    if not name and "CPU part" in first:
        name = f"{machine} CPU (implementer {vendor}, part {first['CPU part']})"
    return CpuInfo(machine, vendor, name or machine, frozenset(flags.split()), identity)


def fingerprint() -> str:
    """What code generation and the micro-benchmarks depend on: CPU identity and flags, and
    the TVM release that names the CPU. A cache entry never crosses machines."""
    info = cpu_info()
    tvm_version = ""
    try:
        from importlib.metadata import version

        tvm_version = version("apache-tvm")
    except Exception:  # noqa: BLE001 - not installed
        pass
    key = "\n".join(
        [info.machine, info.vendor, info.model_name, info.identity, " ".join(sorted(info.flags)),
         tvm_version, str(CACHE_VERSION)]
    )  # fmt: skip
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_root() -> Path:
    """``$INAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/inag``, else ``~/.cache/inag``."""
    root = os.environ.get("INAG_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "inag"


# ---------------------------------------------------------------------------- cheap facts
def features() -> list[str]:
    """LLVM names of the SIMD/ISA extensions this CPU reports (all of them, sorted)."""
    info = cpu_info()
    table = X86_FEATURES if info.machine == "x86_64" else ARM_FEATURES
    return sorted(f for f, flag in table.items() if flag in info.flags)


def isa() -> str:
    info = cpu_info()
    if info.machine == "x86_64":
        level = "x86-64"
        for name, needed in X86_LEVELS:
            if not all(f in info.flags for f in needed):
                break
            level = name
        return level
    if info.machine == "aarch64":
        return "armv9-a" if "sve2" in info.flags else "armv8-a"
    return info.machine


def cores() -> int:
    """Cores this process may run on (affinity and cgroup quota respected)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = (_read("/sys/fs/cgroup/cpu.max") or "").split()
    if len(quota) == 2 and quota[0] != "max":
        n = min(n, max(1, int(int(quota[0]) / int(quota[1]))))
    return max(1, n)


def clock() -> tuple[float, str, str]:
    """(Hz, source, kind): the highest clock the kernel reports, else a guess."""
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if khz and khz.strip().isdigit():
        return float(khz) * 1e3, "sysfs cpufreq/cpuinfo_max_freq", "detected"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":")[1])
            return mhz * 1e6, "/proc/cpuinfo 'cpu MHz' (no cpufreq: nominal/TSC rate)", "detected"
    return 2.0e9, "no cpufreq or 'cpu MHz' on this machine; 2 GHz assumed", "guess"


def caches() -> dict[str, int]:
    """Per-core L1 data and L2, shared L3, in bytes (sysfs; absent levels omitted)."""
    out: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.is_dir() else []:
        level, kind, size = (_read(str(d / f)) for f in ("level", "type", "size"))
        if not (level and kind and size):
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", size.strip())
        if not m or kind.strip() == "Instruction":
            continue
        nbytes = int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        out[f"l{level.strip()}{'d' if level.strip() == '1' else ''}_bytes"] = nbytes
    return out


def memory_bytes() -> int:
    """Physical memory, capped by a cgroup memory limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = (_read("/sys/fs/cgroup/memory.max") or "max").strip()
    return min(total, int(limit)) if limit.isdigit() else total


# ---------------------------------------------------------------------------- cached facts
def _cache_path() -> Path:
    return cache_root() / "host" / f"{fingerprint()}.json"


def _cached(key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per machine; a corrupt or unwritable cache only costs a recompute."""
    path = _cache_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    if key in data:
        return data[key]
    data[key] = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(data, f, indent=1)
        os.replace(f.name, path)
    except OSError:
        pass
    return data[key]


_LLVM_PROBE = (
    "import json\n"
    "from tvm.target import codegen\n"
    "print(json.dumps({'cpu': codegen.llvm_get_system_cpu(),"
    " 'llvm': codegen.llvm_version_major()}))\n"
)


def llvm_host_cpu() -> dict[str, Any] | None:
    """LLVM's name for this CPU (``znver5``, ``sapphirerapids``, ``neoverse-n1``) and the LLVM
    version, asked of TVM in a child process (importing TVM takes seconds); None without TVM."""

    def ask() -> dict[str, Any] | None:
        if _tvm_missing():
            return None
        try:
            res = subprocess.run(
                [sys.executable, "-c", _LLVM_PROBE], capture_output=True, text=True, timeout=120
            )
            return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    return _cached("llvm_host_cpu", ask)


def _tvm_missing() -> bool:
    from importlib.util import find_spec

    return find_spec("tvm") is None


def tvm_target() -> dict[str, Any]:
    """The TVM target dict for code that runs on this machine."""
    info = cpu_info()
    table = X86_FEATURES if info.machine == "x86_64" else ARM_FEATURES
    have = set(features())
    target: dict[str, Any] = {"kind": "llvm"}
    llvm = llvm_host_cpu()
    if llvm and llvm.get("cpu") and llvm["cpu"] != "generic":
        target["mcpu"] = llvm["cpu"]
    if info.machine in ("x86_64", "aarch64"):
        target["mattr"] = [("+" if f in have else "-") + f for f in sorted(table)]
    return target


def microbench() -> dict[str, Any]:
    """Throughput this machine really has, measured once and cached (well under a second):
    float32 GEMM MACs per cycle (numpy's BLAS, all threads) and copy bandwidth in bytes per
    cycle on a buffer that fits the L2 cache. Latency models start from these until
    ``inag calibrate`` fits them to measured networks."""

    def run() -> dict[str, Any]:
        import numpy as np

        hz = clock()[0]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((128, 256), dtype=np.float32)
        b = rng.standard_normal((256, 256), dtype=np.float32)
        out = np.empty((128, 256), np.float32)

        def best(fn: Callable[[], None], reps: int) -> float:
            fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        t_gemm = best(lambda: np.matmul(a, b, out=out), 60)
        src = rng.standard_normal(64 * 1024 // 4 * 2, dtype=np.float32)  # 128 KiB
        dst = np.empty_like(src)
        t_copy = best(lambda: np.copyto(dst, src), 200)
        return {
            "macs_per_cycle": 128 * 256 * 256 / t_gemm / hz,
            "mem_bytes_per_cycle": 2 * src.nbytes / t_copy / hz,
            "clock_hz": hz,
            "numpy": np.__version__,
            "when": time.strftime("%Y-%m-%d"),
        }

    return _cached("microbench", run)


# ---------------------------------------------------------------------------- probes
def _host() -> str:
    info = cpu_info()
    return f"{info.model_name} ({info.machine}, {cores()} cores)"


def _num(value: float, how: str, kind: str = "detected") -> dict[str, Any]:
    return {"value": float(value), "source": f"{how}; on {_host()}", "kind": kind}


def _probe_clock() -> dict[str, Any]:
    hz, how, kind = clock()
    return _num(hz, how, kind)


def _probe_caches() -> dict[str, Any]:
    return {k: _num(v, "sysfs cpu0/cache") for k, v in caches().items()}


def _probe_macs() -> dict[str, Any]:
    mb = microbench()
    return _num(
        mb["macs_per_cycle"],
        f"micro-benchmark {mb['when']}: numpy float32 GEMM 128x256x256, all threads, at "
        f"{mb['clock_hz'] / 1e9:.2f} GHz; int8 taken equal until `inag calibrate` fits it",
    )


def _probe_mem() -> dict[str, Any]:
    mb = microbench()
    return _num(
        mb["mem_bytes_per_cycle"],
        f"micro-benchmark {mb['when']}: numpy copy of a 128 KiB buffer (L2), read + write bytes",
    )


def _probe_disk() -> dict[str, Any]:
    home = Path.home()
    return _num(shutil.disk_usage(home).free, f"free disk under {home}")


def _probe_target() -> dict[str, Any]:
    return tvm_target()


PROBES: dict[str, Callable[[], Any]] = {
    "cpu_name": lambda: cpu_info().model_name,
    "llvm_cpu": lambda: (llvm_host_cpu() or {}).get("cpu") or "",
    "isa": isa,
    "features": lambda: [f for f in SHOWN.get(cpu_info().machine, ()) if f in features()],
    "cores": lambda: _num(cores(), "os.sched_getaffinity and the cgroup cpu.max quota"),
    "clock_hz": _probe_clock,
    "caches": _probe_caches,
    "memory_bytes": lambda: _num(memory_bytes(), "sysconf physical pages (cgroup limit applied)"),
    "disk_free_bytes": _probe_disk,
    "macs_per_cycle": _probe_macs,
    "mem_bytes_per_cycle": _probe_mem,
    "tvm_target": _probe_target,
}


def is_marker(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {"detect"}


def resolve(data: Any, where: str = "") -> Any:
    """``data`` with every ``{detect: PROBE}`` mapping replaced by what PROBE finds here."""
    if is_marker(data):
        name = data["detect"]
        if name not in PROBES:
            raise HostInfoError(
                f"{where or '(top level)'}: unknown detect probe {name!r}; available: "
                + ", ".join(sorted(PROBES))
            )
        return PROBES[name]()
    if isinstance(data, dict):
        return {k: resolve(v, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve(v, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


def has_markers(data: Any) -> bool:
    if is_marker(data):
        return True
    if isinstance(data, dict):
        return any(has_markers(v) for v in data.values())
    if isinstance(data, list):
        return any(has_markers(v) for v in data)
    return False
