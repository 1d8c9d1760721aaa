"""Native kernels, compiled on first use with the machine's C compiler and cached.

The C engine of the trainer (``qat_cnn.c``, which includes ``qat_mlp.c``: one translation unit,
so the CNN kernels reuse the MLP's GEMM micro-kernels) is built with ``-march=native``: the cached
library is keyed by the source, the flags, the compiler's version and this CPU, so a shared
home directory never hands one machine another's binary. The cache is owner-only, the build
records the library's sha256 beside it, and a library that fails the check (hash, owner,
writable by others) is rebuilt, or refused where the cache cannot be written: never loaded.
Without a C compiler the library is unavailable and the trainer falls back to its PyTorch
engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_SRC = Path(__file__).with_name("qat_cnn.c")  # the one translation unit compiled
_SOURCES = (Path(__file__).with_name("qat_mlp.c"), _SRC)  # what the library is built from
# -fno-math-errno lets floorf/sqrtf become single instructions inside vectorized loops;
# -fno-trapping-math lets the compiler vectorize the loops with divisions and selects.
# No -ffast-math: it assumes no NaN/inf, and divergence is detected with isfinite.
FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
NATIVE = ["-march=native"]


class KernelUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here."""


class _Untrusted(Exception):  # noqa: N818 - internal: why a cached file is not loaded
    """A cached library (or its recorded hash) fails verification; the message says why."""


def cache_dir() -> Path:
    """``<INAG cache root>/kernels`` (``$INAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/inag``, else
    ``~/.cache/inag``: :func:`inag.hostinfo.cache_root`)."""
    from inag.hostinfo import cache_root

    return cache_root() / "kernels"


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


# ---------------------------------------------------------------------------- trust
# The library is machine code this process runs: a file someone else could write is never
# loaded. The cache directory is owner-only (0700), the library and its recorded sha256 are
# owner-only (0600), and before ctypes loads it the library's owner, mode and hash are checked
# on the very file descriptor that is then loaded (/proc/self/fd/N), so a swap between the
# check and the load cannot slip in.
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _hash_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _check_owner(st: os.stat_result, what: str, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise _Untrusted(f"{path} ({what}) is not a regular file")
    if st.st_uid != os.getuid():
        raise _Untrusted(f"{path} ({what}) belongs to uid {st.st_uid}, not to you ({os.getuid()})")
    if st.st_mode & 0o022:
        raise _Untrusted(
            f"{path} ({what}) is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
        )


def _prepare_dir(d: Path) -> None:
    """Create the cache directory owner-only; refuse one that another user could write."""
    try:
        d.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        st = d.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(d, _DIR_MODE)
            st = d.stat()
    except OSError as exc:
        raise KernelUnavailable(
            f"cannot use the kernel cache {d} ({exc.strerror or exc}); set INAG_CACHE_DIR to "
            "a directory of yours"
        ) from None
    try:
        if not stat.S_ISDIR(st.st_mode):
            raise _Untrusted(f"{d} is not a directory")
        _check_owner(st, "the kernel cache directory", d)
    except _Untrusted as why:
        raise KernelUnavailable(
            f"refusing the kernel cache: {why}, so the libraries in it cannot be trusted; "
            "set INAG_CACHE_DIR to a directory of yours"
        ) from None


def _open_verified(lib: Path) -> int:
    """A read-only descriptor of ``lib`` after checking its owner, its mode and its sha256
    against the one recorded when it was built; :class:`_Untrusted` says what failed."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    side = _hash_path(lib)
    try:
        sfd = os.open(side, flags)
    except FileNotFoundError:
        raise _Untrusted(f"{lib} has no recorded sha256 ({side.name} is missing)") from None
    except OSError as exc:
        raise _Untrusted(f"cannot open {side} ({exc.strerror or exc})") from None
    try:
        _check_owner(os.fstat(sfd), "the recorded sha256", side)
        recorded = os.read(sfd, 200).decode("ascii", "replace").split()
    finally:
        os.close(sfd)
    if not recorded or len(recorded[0]) != 64:
        raise _Untrusted(f"{side} does not hold a sha256")
    try:
        fd = os.open(lib, flags)
    except OSError as exc:
        raise _Untrusted(f"cannot open {lib} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Untrusted(f"{lib} is not a regular file")
        _check_owner(st, "the kernel library", lib)
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != recorded[0]:
            raise _Untrusted(
                f"{lib} has sha256 {digest.hexdigest()[:16]}..., not the "
                f"{recorded[0][:16]}... recorded when it was built (modified since)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _dir_lock(d: Path) -> Iterator[None]:
    """Exclusive ``flock`` on the cache directory itself while a library is (re)built."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _discard(lib: Path, why: _Untrusted) -> None:
    """Remove a library that failed verification (and its hash), or refuse if we cannot."""
    try:
        for path in (lib, _hash_path(lib)):
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise KernelUnavailable(
            f"refusing to load the cached C kernel library: {why}; it cannot be rebuilt "
            f"because {lib.parent} is not writable ({exc.strerror or exc}). Remove it or set "
            "INAG_CACHE_DIR to a directory of yours"
        ) from None


def _build(cc: str, flags: list[str], lib: Path) -> subprocess.CompletedProcess[str]:
    """Compile into a temporary file beside ``lib``, record its sha256, rename it in place."""
    try:
        fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    except OSError as exc:
        raise KernelUnavailable(
            f"cannot build the C kernels in {lib.parent} ({exc.strerror or exc}); set "
            "INAG_CACHE_DIR to a writable directory of yours"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = _compile(cc, flags, tmp)
        if proc.returncode == 0:
            os.chmod(tmp, _FILE_MODE)  # the linker re-creates its output with 0777 & ~umask
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
            from inag.safe_io import InputError, atomic_write_text

            try:
                atomic_write_text(_hash_path(lib), f"{digest}  {lib.name}\n", mode=_FILE_MODE)
            except InputError as exc:
                raise KernelUnavailable(str(exc)) from None
            os.replace(tmp, lib)
        return proc
    finally:
        tmp.unlink(missing_ok=True)


@cache
def library_path() -> Path:
    """Path of the compiled kernel library, verified, building it if the cache lacks it (or
    holds one that fails verification)."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    out_dir = cache_dir()
    for flags in (FLAGS + NATIVE, FLAGS):  # some compilers/CPUs reject -march=native
        key = hashlib.sha256(
            "\0".join(
                [
                    *(src.read_text() for src in _SOURCES),
                    " ".join(flags),
                    version.stdout,
                    _cpu_id(),
                    platform.machine(),
                ]
            ).encode()
        ).hexdigest()[:16]
        lib = out_dir / f"qat-{key}.so"
        _prepare_dir(out_dir)
        with _dir_lock(out_dir):
            if lib.exists() or _hash_path(lib).exists():
                try:
                    os.close(_open_verified(lib))
                    return lib
                except _Untrusted as why:
                    _discard(lib, why)
            proc = _build(cc, flags, lib)
        if proc.returncode == 0:
            return lib
        err = proc.stderr.strip()
    raise KernelUnavailable(f"compiling {_SRC.name} with {cc} failed:\n{err}")


def _load_verified(lib: Path) -> ctypes.CDLL:
    """ctypes-load ``lib`` from the descriptor that was verified (no swap in between)."""
    fd = _open_verified(lib)
    try:
        proc_fd = Path(f"/proc/self/fd/{fd}")
        return ctypes.CDLL(str(proc_fd) if proc_fd.exists() else str(lib))
    finally:
        os.close(fd)


@cache
def qat_library() -> ctypes.CDLL:
    """The loaded C trainer kernels, with argument types declared.

    The library is verified (owner, mode, sha256 recorded at build time) right before it is
    loaded; one that changed since :func:`library_path` checked it is rebuilt once.
    """
    try:
        lib = _load_verified(library_path())
    except _Untrusted:
        library_path.cache_clear()
        try:
            lib = _load_verified(library_path())
        except _Untrusted as why:
            raise KernelUnavailable(
                f"refusing to load the cached C kernel library: {why}"
            ) from None
    i, f, lng = ctypes.c_int, ctypes.c_float, ctypes.c_long
    p = ctypes.c_void_p
    lib.inag_qat_train.restype = i
    lib.inag_qat_train.argtypes = [
        i, p, p, p, p, p, f, p, p, p, i, p, i, i, p, lng, f, f, p,
    ]  # fmt: skip
    lib.inag_qat_predict.restype = i
    lib.inag_qat_predict.argtypes = [i, p, p, p, p, p, f, p, i, i, p]
    lib.inag_qat_train_cnn.restype = i
    lib.inag_qat_train_cnn.argtypes = lib.inag_qat_train.argtypes
    lib.inag_qat_predict_cnn.restype = i
    lib.inag_qat_predict_cnn.argtypes = lib.inag_qat_predict.argtypes
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
