"""Device measurement: TVM (local, RPC, tracker), onnxruntime and standalone C on the host.

The TVM paths time ``main`` with TVM's own ``time_evaluator`` (the first call is a discarded
warm-up; each repeat averages ``number`` calls), so local and remote figures are comparable
and the clock is read on the device itself, not across the network. onnxruntime is timed in
this process and the C build inside its harness (``clock_gettime``). :func:`measure_net`
runs any of them on a :class:`QuantizedNet` and says where the number came from; the results
feed ``inag calibrate`` (the measured latency next to the hardware model's prediction).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError


@dataclass(frozen=True)
class Measurement:
    """Batch latency of one library on one device, in seconds."""

    where: str  # "local" | "rpc://host:port" | "tracker://host:port/key"
    batch: int
    number: int
    repeats: int
    median_s: float
    mean_s: float
    min_s: float
    results_s: tuple[float, ...]
    runtime: str = "tvm"  # tvm | onnxruntime | c | qemu | serial
    origin: str = "device"  # device (a real board or this host) | emulated | model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summarize(
    where: str, batch: int, number: int, res: Any, runtime: str = "tvm", origin: str = "device"
) -> Measurement:
    vals = tuple(float(v) for v in getattr(res, "results", res))
    return Measurement(
        where,
        batch,
        number,
        len(vals),
        statistics.median(vals),
        statistics.fmean(vals),
        min(vals),
        vals,
        runtime,
        origin,
    )


def _time(lib: Any, dev: Any, x_codes: np.ndarray, number: int, repeats: int) -> Any:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(lib, dev)
    x = tvm.runtime.tensor(np.ascontiguousarray(x_codes, dtype=np.int8), dev)
    return vm.time_evaluator("main", dev, number=number, repeat=repeats)(x)


def measure_local(
    lib_path: str | Path, x_codes: np.ndarray, number: int = 100, repeats: int = 20
) -> Measurement:
    """Time a host library in this process."""
    try:
        import tvm
    except ImportError as exc:
        raise ExportError("measuring needs apache-tvm: pip install 'inag[tvm]'") from exc
    lib = tvm.runtime.load_module(str(lib_path))
    res = _time(lib, tvm.cpu(), x_codes, number, repeats)
    return _summarize("local", len(x_codes), number, res)


def measure_rpc(
    lib_path: str | Path,
    x_codes: np.ndarray,
    host: str = "127.0.0.1",
    port: int = 9090,
    key: str | None = None,
    tracker: str | None = None,
    number: int = 100,
    repeats: int = 20,
    session_timeout: float = 60.0,
) -> Measurement:
    """Upload a library to a TVM RPC server (directly, or via a tracker and a key), load it
    there, and time ``main`` on the remote CPU.

    A ``.tar`` of objects (cross-compiled without a local cross gcc) is linked by the
    server on upload; a ``.so`` must already be built for the device.
    """
    try:
        from tvm import rpc
    except ImportError as exc:
        raise ExportError("measuring over RPC needs apache-tvm: pip install 'inag[tvm]'") from exc
    path = Path(lib_path)
    if not path.is_file():
        raise ExportError(f"no library {str(path)!r} to measure")
    _reachable(*(tracker.rpartition(":")[::2] if tracker else (host, port)), tracker)
    try:
        if tracker:
            t_host, _, t_port = tracker.rpartition(":")
            if not key:
                raise ExportError("an RPC tracker needs a device key (platform measure.rpc.key)")
            session = rpc.connect_tracker(t_host, int(t_port))
            queue = session.summary().get("queue_info", {})
            if not queue.get(key, {}).get("free"):
                known = ", ".join(f"{k} ({v.get('free', 0)} free)" for k, v in queue.items())
                raise ExportError(
                    f"tracker {tracker}: no free device under key {key!r} (keys: "
                    f"{known or 'none registered'}); start a server with `python -m "
                    f"tvm.exec.rpc_server --tracker {tracker} --key {key}` or wait for one"
                )
            remote = session.request(key, session_timeout=session_timeout)
            where = f"tracker://{tracker}/{key}"
        else:
            remote = rpc.connect(host, port, session_timeout=session_timeout)
            where = f"rpc://{host}:{port}"
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes
        what = f"tracker {tracker}" if tracker else f"TVM RPC server {host}:{port}"
        raise ExportError(
            f"cannot reach the {what}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
            "check that it runs and listens there"
        ) from None
    try:
        remote.upload(str(path))
        lib = remote.load_module(path.name)
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ExportError(
            f"{where}: the device could not load {path.name} ({first}); is the library built "
            "for the device's architecture (the platform's measure.tvm_target)?"
        ) from None
    res = _time(lib, remote.cpu(), x_codes, number, repeats)
    return _summarize(where, len(x_codes), number, res)


def _reachable(host: str, port: str | int, tracker: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message (TVM itself retries a refused connection for a minute
    and logs every attempt)."""
    import socket

    what = f"tracker {tracker}" if tracker else f"TVM RPC server {host}:{port}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        hint = (
            f"start it with `python -m tvm.exec.rpc_tracker --host {host} --port {port}`"
            if tracker
            else f"start it with `python -m tvm.exec.rpc_server --host {host} --port {port}`"
        )
        raise ExportError(
            f"cannot reach the {what}: {exc.strerror or exc}; check that it runs and listens "
            f"there ({hint})"
        ) from None


def measure_platform(
    lib_path: str | Path, platform: Any, x_codes: np.ndarray, number: int = 100
) -> Measurement:
    """Measure where the platform says: ``tvm_local`` here, ``tvm_rpc`` over its RPC."""
    m = platform.measure
    if m.runtime == "tvm_local":
        return measure_local(lib_path, x_codes, number, m.repeats)
    if m.runtime == "tvm_rpc":
        r = m.rpc
        if r is None:
            raise ExportError(f"platform {platform.name!r} has runtime tvm_rpc but no rpc section")
        return measure_rpc(lib_path, x_codes, r.host, r.port, r.key, r.tracker, number, m.repeats)
    raise ExportError(f"platform {platform.name!r} measures with {m.runtime!r}, not a TVM runtime")


# ---------------------------------------------------------------------------- any runtime
RUNTIMES = ("tvm", "onnxruntime", "c")
HOST_WHERE = "local"


def _calls_per_sample(fn: Any, min_s: float = 2e-3) -> int:
    """Calls per timing sample so one sample lasts about ``min_s`` (timer resolution)."""
    import time

    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(100_000, int(min_s / dt)))


def _time_python(fn: Any, warmup: int, repeats: int) -> tuple[int, list[float]]:
    import time

    for _ in range(max(1, warmup)):
        fn()
    number = _calls_per_sample(fn)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t0) / number)
    return number, out


def measure_net(
    net: Any,
    runtime: str,
    work_dir: str | Path,
    *,
    platform: Any = None,
    device: str | None = None,
    batch: int = 1,
    warmup: int = 2,
    repeats: int = 20,
) -> Measurement:
    """Batch latency of ``net`` through ``runtime``, built into ``work_dir``.

    ``tvm`` builds for the platform's TVM target and times it here, or on ``device``
    (``rpc://host:port`` or ``tracker://host:port/key``); ``onnxruntime`` and ``c`` run on this
    host (one thread). Inputs are fixed pseudo-random codes: latency does not depend on them.
    """
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ExportError(f"batch and repeats must be >= 1, warmup >= 0 (found {batch}, "
                          f"{repeats}, {warmup})")  # fmt: skip
    return prepare_net(
        net, runtime, work_dir, platform=platform, device=device, batch=batch, warmup=warmup
    )(repeats)


Timer = Callable[[int], Measurement]


def prepare_net(
    net: Any,
    runtime: str,
    work_dir: str | Path,
    *,
    platform: Any = None,
    device: str | None = None,
    batch: int = 1,
    warmup: int = 2,
) -> Timer:
    """Build ``net`` for ``runtime`` once; the returned ``timer(repeats)`` measures it (with
    its warm-up) as often as asked, so a plan can be timed in several interleaved passes
    without rebuilding (``inag measure run --passes``)."""
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}; available: {', '.join(RUNTIMES)}")
    if batch < 1 or warmup < 0:
        raise ExportError(f"batch must be >= 1 and warmup >= 0 (found {batch}, {warmup})")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).integers(-127, 128, (batch, *net.input_shape)).astype(np.int8)
    if runtime == "tvm":
        return _prepare_tvm(net, work, platform, device, x, warmup)
    if device not in (None, HOST_WHERE):
        raise ExportError(f"runtime {runtime!r} runs on this host only; found device {device!r}")
    if runtime == "onnxruntime":
        from export import onnx_export

        sess = onnx_export.session(onnx_export.build_onnx(net))
        xf = (x.astype(np.float32) * np.float32(net.input_scale)).astype(np.float32)

        def time_ort(repeats: int) -> Measurement:
            _check_repeats(repeats)
            number, vals = _time_python(lambda: sess.run(["y_int"], {"x": xf}), warmup, repeats)
            return _summarize(HOST_WHERE, batch, number, vals, "onnxruntime")

        return time_ort
    from export import c_export

    if batch != 1:
        raise ExportError("the standalone C harness times batch 1 only")
    cs, _ = c_export.write_c(net, work)
    exe = c_export.build_host(work, cs.prefix, opt="-O2")

    def time_c(repeats: int) -> Measurement:
        _check_repeats(repeats)
        one = c_export.bench_host(exe, 1, 3)
        iters = max(1, min(100_000, int(2e-3 / max(one, 1e-8))))
        c_export.bench_host(exe, max(1, warmup), 1)
        vals = [c_export.bench_host(exe, iters, 1) for _ in range(repeats)]
        return _summarize(HOST_WHERE, batch, iters, vals, "c")

    return time_c


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise ExportError(f"repeats must be >= 1, found {repeats}")


def _prepare_tvm(
    net: Any,
    work: Path,
    platform: Any,
    device: str | None,
    x: np.ndarray,
    warmup: int,
) -> Timer:
    from export import tvm_export

    if platform is None:
        raise ExportError("the tvm runtime needs a platform (its measure.tvm_target)")
    target = tvm_export.check_target(platform)
    stem = f"inag_{net.arch_id}"
    local = device in (None, HOST_WHERE)
    if local and tvm_export.is_cross(target):
        raise ExportError(
            f"platform {platform.name!r} targets {target.get('mtriple')}: give a device "
            "(--device rpc://HOST:PORT or tracker://HOST:PORT/KEY) to measure there"
        )
    lib = tvm_export.export_library(tvm_export.compile_net(net, target), work, stem, target)
    path = work / lib["library"]
    if local:
        import tvm

        loaded = tvm.runtime.load_module(str(path))

        def time_local(repeats: int) -> Measurement:
            _check_repeats(repeats)
            one = _time(loaded, tvm.cpu(), x, 1, max(1, warmup))
            number = max(1, min(100_000, int(2e-3 / max(min(one.results), 1e-8))))
            res = _time(loaded, tvm.cpu(), x, number, repeats)
            return _summarize(HOST_WHERE, len(x), number, res)

        return time_local
    host, port, key, tracker = parse_device(device)

    def time_remote(repeats: int) -> Measurement:
        _check_repeats(repeats)
        return measure_rpc(path, x, host, port, key, tracker, number=10, repeats=repeats)

    return time_remote


def parse_device(device: str) -> tuple[str, int, str | None, str | None]:
    """``rpc://host:port`` or ``tracker://host:port/key`` -> (host, port, key, tracker)."""
    import re

    m = re.fullmatch(r"(rpc|tracker)://([^:/]+):(\d{1,5})(?:/([^/]+))?", device or "")
    if not m or (m.group(1) == "tracker") != bool(m.group(4)):
        raise ExportError(
            f"device {device!r}: expected rpc://HOST:PORT (a TVM RPC server) or "
            "tracker://HOST:PORT/KEY (a TVM RPC tracker and the device key)"
        )
    kind, host, port, key = m.group(1), m.group(2), int(m.group(3)), m.group(4)
    if kind == "tracker":
        return host, port, key, f"{host}:{port}"
    return host, port, None, None
