"""Device measurement of exported TVM libraries: locally, or on a board over TVM RPC.

Both paths time ``main`` with TVM's own ``time_evaluator`` (the first call is a discarded
warm-up; each repeat averages ``number`` calls), so local and remote figures are comparable
and the clock is read on the device itself, not across the network. The result feeds
platform calibration (the measured latency next to the hardware model's prediction).
"""

from __future__ import annotations

import statistics
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summarize(where: str, batch: int, number: int, res: Any) -> Measurement:
    vals = tuple(float(v) for v in res.results)
    return Measurement(
        where,
        batch,
        number,
        len(vals),
        statistics.median(vals),
        statistics.fmean(vals),
        min(vals),
        vals,
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
    try:
        if tracker:
            t_host, _, t_port = tracker.rpartition(":")
            if not key:
                raise ExportError("an RPC tracker needs a device key (platform measure.rpc.key)")
            remote = rpc.connect_tracker(t_host, int(t_port)).request(
                key, session_timeout=session_timeout
            )
            where = f"tracker://{tracker}/{key}"
        else:
            remote = rpc.connect(host, port, session_timeout=session_timeout)
            where = f"rpc://{host}:{port}"
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error classes
        raise ExportError(f"cannot reach the TVM RPC server ({host}:{port}): {exc}") from None
    remote.upload(str(path))
    lib = remote.load_module(path.name)
    res = _time(lib, remote.cpu(), x_codes, number, repeats)
    return _summarize(where, len(x_codes), number, res)


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
