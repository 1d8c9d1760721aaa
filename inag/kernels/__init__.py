"""Native kernels, compiled on first use with the machine's C compiler and cached.

The C engine of the trainer (``qat_mlp.c``) is built with ``-march=native``: the cached
library is keyed by the source, the flags, the compiler's version and this CPU, so a shared
home directory never hands one machine another's binary. Without a C compiler the library is
unavailable and the trainer falls back to its PyTorch engine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

_SRC = Path(__file__).with_name("qat_mlp.c")
# -fno-math-errno lets floorf/sqrtf become single instructions inside vectorized loops;
# -fno-trapping-math lets the compiler vectorize the loops with divisions and selects.
# No -ffast-math: it assumes no NaN/inf, and divergence is detected with isfinite.
FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
NATIVE = ["-march=native"]


class KernelUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here."""


def cache_dir() -> Path:
    """``$INAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/inag``, else ``~/.cache/inag``."""
    root = os.environ.get("INAG_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inag" / "kernels"


def _compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise KernelUnavailable(
        "no C compiler found (tried $CC, cc, gcc, clang); install one (Debian: "
        "apt-get install gcc) to use the fast C trainer engine"
    )


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [
        line
        for line in text.splitlines()
        if line.startswith(("model name", "flags", "Features", "CPU part"))
    ]
    return "\n".join(sorted(set(keep)))


def _compile(cc: str, flags: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cc, *flags, str(_SRC), "-o", str(out), "-lm"],
        capture_output=True,
        text=True,
        check=False,
    )


@cache
def library_path() -> Path:
    """Path of the compiled kernel library, building it if the cache lacks it."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    for flags in (FLAGS + NATIVE, FLAGS):  # some compilers/CPUs reject -march=native
        key = hashlib.sha256(
            "\0".join(
                [_SRC.read_text(), " ".join(flags), version.stdout, _cpu_id(), platform.machine()]
            ).encode()
        ).hexdigest()[:16]
        out_dir = cache_dir()
        lib = out_dir / f"qat_mlp-{key}.so"
        if lib.exists():
            return lib
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        proc = _compile(cc, flags, Path(tmp))
        if proc.returncode == 0:
            os.replace(tmp, lib)  # atomic: concurrent builders just race to the same file
            return lib
        Path(tmp).unlink(missing_ok=True)
        err = proc.stderr.strip()
    raise KernelUnavailable(f"compiling {_SRC.name} with {cc} failed:\n{err}")


@cache
def qat_library() -> ctypes.CDLL:
    """The loaded C trainer kernels, with argument types declared."""
    lib = ctypes.CDLL(str(library_path()))
    i, f, lng = ctypes.c_int, ctypes.c_float, ctypes.c_long
    p = ctypes.c_void_p
    lib.inag_qat_train.restype = i
    lib.inag_qat_train.argtypes = [
        i, p, p, p, p, p, f, p, p, p, i, p, i, i, p, lng, f, f, p,
    ]  # fmt: skip
    lib.inag_qat_predict.restype = i
    lib.inag_qat_predict.argtypes = [i, p, p, p, p, p, f, p, i, i, p]
    return lib


@cache
def available() -> bool:
    """Whether the C kernels build and load on this machine (asked once per process: a
    failing build is not retried for every trainer)."""
    try:
        qat_library()
    except (KernelUnavailable, OSError):
        return False
    return True
