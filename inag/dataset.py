"""The dataset builder: Monte Carlo sample architectures, QAT-train them, store the results.

This is the most expensive stage of INAG, so it is resumable and never loses finished work:

- The sample is a deterministic function of (space, task shape, seed): the i-th architecture
  is always the same, without duplicates, so re-running the same command skips what is done
  and ``--n`` can grow later.
- Architectures are trained in fixed chunks (slices of that sample); a chunk's rows are
  written in one SQLite transaction (WAL), by the driver only. Ctrl-C or ``kill -9`` loses at
  most the chunks in flight and never corrupts the file.
- Every chunk is trained the same way wherever it runs (one torch thread per worker, local
  processes or Ray tasks), so the local and Ray backends write the same rows.
- A database records its task, space, trainer configuration and data seed; opening it with
  another task or configuration is refused.
- One sampler per database: an advisory lock (``flock`` on ``DB.lock`` beside it) makes a
  second ``inag sample`` on the same file refuse, naming the first one's pid.
- Ctrl-C (SIGINT) or SIGTERM stops cleanly: chunks that already finished are written, the
  workers are killed, and :class:`SamplingInterrupted` says how far it got. Worker processes
  die with their parent even after ``kill -9`` (``PR_SET_PDEATHSIG`` on Linux, plus a
  parent-pid watchdog thread everywhere).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform as _platform
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inag.arch import ArchSpec
from inag.space import SearchSpace

if TYPE_CHECKING:
    from inag.tasks import TaskData

SCHEMA_VERSION = 1
DEFAULT_CHUNK = 128
# the columns of `inag dataset export-csv`, in order
CSV_COLUMNS = (
    "sample_index",
    "arch_id",
    "status",
    "performance",
    "final_loss",
    "reason",
    "seconds",
    "depth",
    "widths",
    "bits",
    "arch",
)


class DatasetError(ValueError):
    """A dataset file is missing, of another task/configuration, or not a dataset."""


class SamplingInterrupted(Exception):  # noqa: N818 - not an error: a requested stop
    """``build_dataset`` stopped on SIGINT/SIGTERM after writing every finished chunk."""

    def __init__(self, signal_name: str, done: int, total: int, trained: int):
        self.signal_name, self.done, self.total, self.trained = signal_name, done, total, trained
        super().__init__(
            f"interrupted by {signal_name}: {done}/{total} nets are in the dataset "
            f"({trained} trained now, every finished chunk kept); the same command resumes"
        )


@dataclass(frozen=True)
class Row:
    sample_index: int
    arch_id: str
    arch: str  # canonical JSON
    status: str
    performance: float
    final_loss: float
    reason: str
    seconds: float


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": _platform.python_version()}
    for pkg in ("inag", "torch", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# ---------------------------------------------------------------------------- store
class DatasetStore:
    """One SQLite file of trained candidates (``runs``) and what made them (``meta``)."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists() and not self.path.suffix:
            self.path = resolve_dataset(self.path)  # a bundled dataset by name (data_a)
        if self.path.is_dir():
            raise DatasetError(f"{self.path} is a directory; expected a dataset file (SQLite)")
        if not create and not self.path.is_file():
            raise DatasetError(f"no dataset at {self.path} (create one with `inag sample`)")
        if self.path.is_file():
            check_dataset_file(self.path, allow_empty=create)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS runs (
                    arch_id TEXT PRIMARY KEY,
                    sample_index INTEGER NOT NULL,
                    arch TEXT NOT NULL,
                    task TEXT NOT NULL,
                    config_hash TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
                    performance REAL,
                    final_loss REAL,
                    reason TEXT NOT NULL DEFAULT '',
                    seconds REAL NOT NULL,
                    seed INTEGER NOT NULL,
                    versions TEXT NOT NULL,
                    created REAL NOT NULL
                );
                """
            )
        except sqlite3.DatabaseError as exc:
            raise DatasetError(
                f"{self.path} is not an INAG dataset (SQLite said: {exc})"
            ) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> DatasetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ meta
    def meta(self) -> dict[str, Any]:
        """What the dataset was made of, each entry checked for its type: a tampered file
        is refused here, naming the entry, not deep inside a command."""
        from inag.safe_io import InputError, load_json

        out = {}
        for k, v in self.conn.execute("SELECT key, value FROM meta"):
            try:
                out[k] = load_json(v, f"{self.path}: meta {k!r}")
            except (InputError, TypeError) as exc:
                raise DatasetError(f"{self.path} has a corrupt meta entry: {exc}") from None
        problem = meta_problem(out)
        if problem:
            raise DatasetError(f"{self.path} has a corrupt meta entry: {problem}")
        return out

    def bind(self, meta: dict[str, Any]) -> None:
        """Record what this dataset is made of, or refuse if it was made of something else."""
        have = self.meta()
        if not have:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        (k, json.dumps(v, sort_keys=True))
                        for k, v in {**meta, "schema_version": SCHEMA_VERSION}.items()
                    ],
                )
            return
        checks = [("task", "task"), ("space", "search space")]
        if "space_definition" in have:  # files made before session 8 lack it
            checks.append(("space_definition", "search-space definition"))
        for key, label in (
            *checks,
            ("config_hash", "trainer configuration"),
            ("data_seed", "data seed"),
            ("seed", "sampling seed"),
        ):
            if _canon(have.get(key)) != _canon(meta.get(key)):  # as stored: lists, not tuples
                want = have.get(key)
                detail = ""
                if key == "space_definition":
                    detail = f" ({_first_difference(_canon(want), _canon(meta.get(key)))})"
                if key == "config_hash":
                    detail = (
                        f" (the file's: {json.dumps(have.get('trainer'))}; yours: "
                        f"{json.dumps(meta.get('trainer'))})"
                    )
                raise DatasetError(
                    f"{self.path} was built with {label} {_short(want)}, not "
                    f"{_short(meta.get(key))}{detail}; use another --db or the same options"
                )

    # ------------------------------------------------------------------ rows
    def done_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT arch_id FROM runs")}

    def insert(self, rows: Sequence[Row], meta: dict[str, Any]) -> None:
        versions = json.dumps(meta["versions"], sort_keys=True)
        now = time.time()
        with self.conn:  # one transaction per chunk
            self.conn.executemany(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.arch_id,
                        r.sample_index,
                        r.arch,
                        meta["task"],
                        meta["config_hash"],
                        r.status,
                        None if not math.isfinite(r.performance) else r.performance,
                        None if not math.isfinite(r.final_loss) else r.final_loss,
                        r.reason,
                        r.seconds,
                        meta["seed"],
                        versions,
                        now,
                    )
                    for r in rows
                ],
            )

    def rows(self, status: str | None = "ok") -> list[dict[str, Any]]:
        q = (
            "SELECT arch_id, sample_index, arch, status, performance, final_loss, reason, "
            "seconds FROM runs"
        )
        args: tuple = ()
        if status:
            q += " WHERE status = ?"
            args = (status,)
        q += " ORDER BY sample_index"
        cols = [
            "arch_id",
            "sample_index",
            "arch",
            "status",
            "performance",
            "final_loss",
            "reason",
            "seconds",
        ]
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(q, args)]

    def archs_and_performance(self) -> tuple[list[ArchSpec], np.ndarray]:
        """The trained ('ok') rows; every label must be a number in [0, 1] (R^2 clipped, or
        accuracy), so a tampered cell is refused naming its row."""
        rows = self.rows("ok")
        for r in rows:
            v = r["performance"]
            ok = isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0
            if not ok:  # NaN fails the comparison too
                raise DatasetError(
                    f"{self.path}: row {r['sample_index']} (arch {r['arch_id']}) is 'ok' but its "
                    f"performance is {v!r}; expected a number in [0, 1]"
                )
        return (
            [ArchSpec.from_json(r["arch"]) for r in rows],
            np.array([r["performance"] for r in rows], dtype=np.float64),
        )

    def count(self) -> dict[str, int]:
        out = {"ok": 0, "failed": 0}
        out.update(dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")))
        return out

    def info(self) -> dict[str, Any]:
        """Counts, performance quantiles, and bit-width / width coverage."""
        archs, perf = self.archs_and_performance()
        meta = self.meta()
        qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        bits: dict[int, int] = {}
        widths: dict[int, int] = {}
        depths: dict[int, int] = {}
        for a in archs:
            depths[a.depth] = depths.get(a.depth, 0) + 1
            for layer in a.layers:
                bits[layer.bits] = bits.get(layer.bits, 0) + 1
                widths[layer.width] = widths.get(layer.width, 0) + 1
        secs = [r["seconds"] for r in self.rows(None)]
        space = meta.get("space") or {}
        return {
            "path": str(self.path),
            "task": meta.get("task"),
            "task_kind": meta.get("task_kind"),
            "task_input_shape": meta.get("task_input_shape"),  # (C, H, W) before an MLP flattens
            "input_shape": space.get("input_shape"),
            "output_size": space.get("output_size"),
            "space": space.get("name"),
            "counts": self.count(),
            "performance_quantiles": (
                {str(q): float(np.quantile(perf, q)) for q in qs} if len(perf) else {}
            ),
            "performance_mean": float(perf.mean()) if len(perf) else None,
            "bits_coverage": dict(sorted(bits.items())),
            "width_coverage": dict(sorted(widths.items())),
            "depth_coverage": dict(sorted(depths.items())),
            "train_seconds_per_net": float(np.mean(secs)) if secs else None,
            "trainer": meta.get("trainer"),
            "versions": meta.get("versions"),
        }

    def export_csv(self, out: str | Path) -> int:
        from inag.safe_io import atomic_open

        rows = self.rows(None)
        with atomic_open(out) as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for r in rows:
                a = ArchSpec.from_json(r["arch"])
                writer.writerow(
                    [
                        r["sample_index"],
                        r["arch_id"],
                        r["status"],
                        r["performance"],
                        r["final_loss"],
                        r["reason"],
                        r["seconds"],
                        a.depth,
                        " ".join(str(layer.width) for layer in a.layers),
                        " ".join(str(layer.bits) for layer in a.layers),
                        r["arch"],
                    ]
                )
        return len(rows)


_TABLES = {"meta", "runs"}


def check_dataset_file(path: Path, allow_empty: bool = False) -> None:
    """Refuse a file that is not an INAG dataset, opening it read-only so it stays untouched.

    Opening read-write would add our tables to someone's unrelated SQLite file and switch it
    to WAL. ``allow_empty`` accepts an empty file or an SQLite file without tables (a new
    dataset is created in it).
    """
    from urllib.parse import quote

    if path.stat().st_size == 0:
        if allow_empty:
            return
        raise DatasetError(f"{path} is an empty file, not an INAG dataset")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            has_version = bool(tables >= _TABLES) and bool(
                conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone()
                or not conn.execute("SELECT 1 FROM meta").fetchone()
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise DatasetError(f"{path} is not an INAG dataset (SQLite said: {exc})") from None
    if not tables and allow_empty:
        return
    if not has_version:
        found = ", ".join(sorted(tables)[:10]) or "none"
        raise DatasetError(
            f"{path} is not an INAG dataset: expected the tables meta and runs written by "
            f"`inag sample`, found tables: {found}; the file was not modified"
        )


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    """Where two JSON values first differ, as "path: file's X, yours Y"."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    return f"{where or 'value'}: the file's {_short(a)}, yours {_short(b)}"


def _canon(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True))


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) < 80 else text[:77] + "..."


# ---------------------------------------------------------------------------- bundled datasets
# A shipped dataset decompresses to a few MB; more means a corrupt or hostile archive.
MAX_BUNDLED_BYTES = 256 * 1024 * 1024
BUNDLED_SUFFIX = ".sqlite.gz"


def dataset_hash(archs: Sequence[ArchSpec], perf: np.ndarray) -> str:
    """Content hash of (architecture, label) pairs: a generator records the one it learned."""
    import hashlib

    h = hashlib.sha256()
    for a, p in zip(archs, perf, strict=True):
        h.update(f"{a.arch_id}:{p:.9g};".encode())
    return h.hexdigest()[:16]


def bundled_datasets() -> dict[str, Path]:
    """The datasets the bundled generators were trained on, by name: ``inag/models/NAME``
    ``.sqlite.gz`` beside ``NAME.nagan`` (gzip of the finished SQLite file)."""
    from importlib import resources

    root = Path(str(resources.files("inag").joinpath("models")))
    return {
        p.name.removesuffix(BUNDLED_SUFFIX): p for p in sorted(root.glob(f"*{BUNDLED_SUFFIX}"))
    }


def resolve_dataset(ref: str | Path) -> Path:
    """A dataset file by path, or a bundled dataset by bare name (``data_a``), unpacked once
    into the cache (``<cache>/datasets/NAME-<sha>.sqlite``, keyed by the archive's content)."""
    path = Path(ref)
    if path.exists() or path.suffix or path.parent != Path("."):
        return path
    bundled = bundled_datasets()
    if str(path) not in bundled:
        raise DatasetError(
            f"no dataset at {path} and no bundled dataset of that name (bundled: "
            f"{', '.join(bundled) or 'none'})"
        )
    return _unpack(bundled[str(path)])


def _unpack(gz: Path) -> Path:
    import gzip
    import hashlib
    import io

    from inag.hostinfo import cache_root
    from inag.safe_io import atomic_write_bytes

    data = gz.read_bytes()
    name = gz.name.removesuffix(BUNDLED_SUFFIX)
    out = cache_root() / "datasets" / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.sqlite"
    if out.is_file():
        return out
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        raw = f.read(MAX_BUNDLED_BYTES + 1)
    if len(raw) > MAX_BUNDLED_BYTES:
        raise DatasetError(f"{gz}: expands beyond {MAX_BUNDLED_BYTES:,} bytes; reinstall inag")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, raw)
    return out


def pack_dataset(src: str | Path, out: str | Path) -> Path:
    """Write ``src`` as a shippable archive (``NAME.sqlite.gz``): one self-contained SQLite
    file (WAL checkpointed, journal mode DELETE, vacuumed), gzip'd reproducibly (mtime 0)."""
    import gzip
    import shutil
    import tempfile

    from inag.safe_io import atomic_write_bytes

    with DatasetStore(src) as store:
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "d.sqlite"
        shutil.copy(src, copy)
        con = sqlite3.connect(copy)
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("VACUUM")
        con.close()
        return atomic_write_bytes(out, gzip.compress(copy.read_bytes(), 9, mtime=0))


def model_dataset(meta: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """The dataset a generator learned from, and what was looked at: the file it recorded
    where it exists, else the bundled dataset of that file's name; either only if its content
    hash is the one the generator records (a different build of the same name is refused)."""
    recorded = meta.get("dataset")
    if not recorded:
        return None, ["the model records no dataset"]
    tried: list[str] = []
    candidates = [Path(recorded)]
    gz = bundled_datasets().get(Path(recorded).name.removesuffix(".sqlite"))
    if gz is not None:
        candidates.append(gz)
    for cand in candidates:
        if not cand.is_file():
            tried.append(f"{cand} (absent)")
            continue
        path = _unpack(cand) if cand.name.endswith(BUNDLED_SUFFIX) else cand
        with DatasetStore(path) as store:
            archs, perf = store.archs_and_performance()
        if dataset_hash(archs, perf) == meta.get("dataset_hash"):
            return path, tried
        tried.append(f"{cand} (other content: hash {dataset_hash(archs, perf)})")
    return None, tried


# ---------------------------------------------------------------------------- training chunks
def train_chunk(payload: dict[str, Any]) -> list[Row]:
    """Train one chunk (runs in a worker process or a Ray task; one torch thread)."""
    import torch

    from inag.tasks import load_task
    from inag.train.trainer import BatchedMLPTrainer, TrainerConfig

    torch.set_num_threads(1)
    task = load_task(payload["task"], seed=payload["data_seed"])
    config = TrainerConfig.from_record(payload["trainer"])
    archs = [ArchSpec.from_json(a) for a in payload["archs"]]
    trainer = BatchedMLPTrainer(task, config, engine=payload.get("engine", "auto"), threads=1)
    results = trainer.train(archs)
    return [
        Row(i, a.arch_id, a.to_json(), r.status, r.performance, r.final_loss, r.reason, r.seconds)
        for i, a, r in zip(payload["indices"], archs, results, strict=True)
    ]


@dataclass(frozen=True)
class BuildProgress:
    done: int  # rows in the database for this sample
    total: int
    chunk_rows: int  # rows the last chunk wrote (0 for the first report)
    failed: int


class Backend:
    """Runs training chunks somewhere and yields their rows as they finish.

    ``stop_event`` (set by :func:`build_dataset` on SIGINT/SIGTERM) asks :meth:`run` to yield
    the chunks that already finished, abandon the rest and return.
    """

    stop_event: threading.Event | None = None
    busy_in_process = False  # training in this process right now (a signal may interrupt it)

    def run(self, payloads: Sequence[dict[str, Any]]) -> Iterator[list[Row]]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this process exit when ``parent_pid`` (its parent) dies, even by ``kill -9``.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, delivered by the kernel when the parent
    exits. Everywhere (and as a fallback): a daemon thread that polls ``getppid()``, which
    changes when an orphan is re-parented. Checked once right away: the parent may have
    died before the call.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="inag-parent-watchdog", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    """Worker process set-up: die with the driver; leave Ctrl-C to the driver.

    A terminal's Ctrl-C reaches every process of the foreground group; the driver decides
    what to keep and then kills the workers, so they ignore SIGINT themselves.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)


def _kill_pool(ex: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, kill the workers, reap them."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(10)
    ex.shutdown(wait=True)


class LocalBackend(Backend):
    """Worker processes on this machine (one torch thread each)."""

    poll_s = 0.2  # how often the driver looks at the stop flag while chunks train

    def __init__(self, workers: int | None = None):
        self.workers = workers or max(1, os.cpu_count() or 1)

    def run(self, payloads: Sequence[dict[str, Any]]) -> Iterator[list[Row]]:
        if self.workers == 1 or len(payloads) == 1:
            import torch

            threads = torch.get_num_threads()
            try:
                for p in payloads:
                    if self._stopping():
                        return
                    self.busy_in_process = True
                    try:
                        rows = train_chunk(p)
                    finally:
                        self.busy_in_process = False
                    yield rows
            finally:
                torch.set_num_threads(threads)
            return
        import multiprocessing as mp

        ex = ProcessPoolExecutor(
            self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        finished = False
        pending: set[Future] = set()
        it = iter(payloads)
        try:
            for p in it:
                pending.add(ex.submit(train_chunk, p))
                if len(pending) >= self.workers:
                    break
            while pending:
                done, pending = wait(pending, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = None if self._stopping() else next(it, None)
                    if nxt is not None:
                        pending.add(ex.submit(train_chunk, nxt))
                if self._stopping():
                    # keep every chunk that finished meanwhile; abandon the ones training
                    for fut in [f for f in pending if f.done() and not f.cancelled()]:
                        pending.discard(fut)
                        if fut.exception() is None:
                            yield fut.result()
                    break
            finished = not pending
        finally:
            if finished:
                ex.shutdown(wait=True)
            else:
                _kill_pool(ex)


class RayBackend(Backend):
    """Ray tasks (``pip install 'inag[ray]'``); the driver alone writes to SQLite."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise DatasetError("the Ray backend needs Ray: pip install 'inag[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kw["address"] = address
            elif num_cpus:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)
        self._remote = ray.remote(num_cpus=1)(train_chunk)

    def run(self, payloads: Sequence[dict[str, Any]]) -> Iterator[list[Row]]:
        refs = [self._remote.remote(p) for p in payloads]
        while refs:
            done, refs = self.ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in done:
                yield self.ray.get(ref)
            if self._stopping():
                for ref in refs:
                    with contextlib.suppress(Exception):
                        self.ray.cancel(ref, force=True)
                return

    def close(self) -> None:
        self.ray.shutdown()


def _is_shape(v: Any) -> bool:
    return (
        isinstance(v, list)
        and 0 < len(v) <= 3
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    )


def _is_int(v: Any, lo: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)


def meta_problem(meta: dict[str, Any]) -> str:
    """What is wrong with a dataset's meta entries ("" if nothing): each present entry must
    have the type `dataset_meta` writes."""
    want: dict[str, tuple[Any, str]] = {
        "task": (lambda v: isinstance(v, str) and v != "", "a task spec string"),
        "task_kind": (lambda v: v in ("regression", "classification"),
                      "'regression' or 'classification'"),
        "task_input_shape": (_is_shape, "a list of 1-3 positive ints"),
        "space": (lambda v: isinstance(v, dict), "an object"),
        "space_definition": (lambda v: isinstance(v, dict), "an object (the space's YAML form)"),
        "seed": (_is_int, "an int"),
        "data_seed": (_is_int, "an int"),
        "trainer": (lambda v: isinstance(v, dict), "an object of trainer settings"),
        "config_hash": (lambda v: isinstance(v, str), "a string"),
        "versions": (lambda v: isinstance(v, dict), "an object"),
        "schema_version": (_is_int, "an int"),
    }  # fmt: skip
    for key, (ok, what) in want.items():
        if key in meta and not ok(meta[key]):
            return f"{key!r} must be {what}, found {_short(meta[key])}"
    space = meta.get("space")
    if isinstance(space, dict):
        fields: dict[str, tuple[Any, str]] = {
            "name": (lambda v: isinstance(v, str) and v != "", "a name"),
            "kind": (lambda v: v in ("mlp", "cnn"), "'mlp' or 'cnn'"),
            "input_shape": (_is_shape, "a list of 1-3 positive ints"),
            "output_size": (lambda v: _is_int(v, 1), "a positive int"),
        }
        for key, (ok, what) in fields.items():
            if key not in space:
                return f"'space' lacks {key!r} ({what})"
            if not ok(space[key]):
                return f"'space.{key}' must be {what}, found {_short(space[key])}"
    return ""


def dataset_meta(
    task_spec: str,
    task_kind: str,
    space: SearchSpace,
    seed: int,
    data_seed: int,
    trainer: Any,
    task_input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What a dataset is made of; ``task_input_shape`` is the task's own (an MLP space holds
    the flattened size)."""
    return {
        "task": task_spec,
        "task_kind": task_kind,
        "task_input_shape": list(task_input_shape or space.input_shape),
        "space": {
            "name": space.name,
            "kind": space.kind,
            "input_shape": list(space.input_shape),
            "output_size": space.output_size,
            "size": space.size(),
            "dim": space.dim,
        },
        # the whole (bound) space, so a dataset of a space file is read back with that space,
        # not with a bundled space of the same name (older datasets lack it)
        "space_definition": space.to_dict(),
        "seed": seed,
        "data_seed": data_seed,
        "trainer": asdict(trainer),
        "config_hash": trainer.config_hash(),
        "versions": library_versions(),
    }


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def sampler_lock(db: str | Path) -> Iterator[Path]:
    """Hold the advisory lock of one dataset file, or refuse naming the holder's pid.

    ``flock`` on ``DB.lock`` beside the database: the kernel releases it when the holder
    exits, however it exits, so a stale file never blocks anyone. The holder writes its pid
    in it and removes it when done; a lock file removed between our open and our ``flock`` is
    detected (another inode) and opened again.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks, no protection
        yield _lock_path(Path(db))
        return
    db = Path(db)
    lock = _lock_path(db)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise DatasetError(
                f"{db}: cannot create its lock file {lock} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DatasetError(
                f"{db} is being written by another `inag sample` (pid {holder}; lock file "
                f"{lock}); wait for it to finish or stop it, then run this again (it resumes "
                "where that one stopped), or use another --db"
            ) from None
        mine = os.fstat(fd)
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the previous holder removed the file as we opened it
    else:
        raise DatasetError(f"{db}: could not take its lock file {lock} (it keeps changing)")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # still holding the lock: nobody can be between open and flock
        os.close(fd)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, backend: Backend) -> Iterator[dict[str, str]]:
    """SIGINT/SIGTERM set ``stop`` (the backend finishes cleanly); a second one, or one that
    arrives while a chunk trains in this very process, raises KeyboardInterrupt."""
    got: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum: int, frame: Any) -> None:
        again = stop.is_set()
        got.setdefault("signal", signal.Signals(signum).name)
        stop.set()
        if again or backend.busy_in_process:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def bind_to_task(
    task_spec: str, space: SearchSpace, data_seed: int = 0
) -> tuple[TaskData, SearchSpace]:
    """The task and ``space`` bound to it, or the error a build would raise (a space that
    cannot take the task's input) before any work starts."""
    from inag.tasks import load_task

    task = load_task(task_spec, seed=data_seed)
    bound = space.bind(task.input_shape, task.output_size, what=f"task {task_spec!r}")
    return task, bound


def build_dataset(
    db: str | Path,
    task_spec: str,
    space: SearchSpace,
    n: int,
    seed: int,
    trainer: Any,
    backend: Backend,
    data_seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[BuildProgress], None] | None = None,
    engine: str = "auto",
) -> dict[str, int]:
    """Sample ``n`` distinct architectures and train those not yet in ``db``.

    ``engine`` is the trainer engine (``inag.train.trainer.ENGINES``), resolved here once so every
    worker uses the same one; each row records it with the library versions.

    Holds ``db``'s advisory lock throughout (:func:`sampler_lock`). In the main thread,
    SIGINT and SIGTERM stop it cleanly: the finished chunks are written and
    :class:`SamplingInterrupted` is raised.
    """
    from inag.train.trainer import check_size, resolve_engine

    try:
        engine = resolve_engine(engine)
    except (ValueError, RuntimeError) as exc:
        raise DatasetError(str(exc)) from None

    task, space = bind_to_task(task_spec, space, data_seed)
    try:  # the space's largest net must be trainable here, or no sample is
        check_size(space.largest(), trainer.batch_size)
    except ValueError as exc:
        raise DatasetError(f"space {space.name!r}: its largest net {exc}") from None
    meta = dataset_meta(
        task_spec, task.kind, space, seed, data_seed, trainer, task_input_shape=task.input_shape
    )
    meta["versions"]["trainer_engine"] = engine
    archs = space.sample_many(np.random.default_rng(seed), n)
    stop = threading.Event()
    backend.stop_event = stop
    with sampler_lock(db), DatasetStore(db, create=True) as store:
        store.bind(meta)
        done = store.done_ids()
        payloads = []
        for start in range(0, n, chunk):
            part = [
                (i, a)
                for i, a in enumerate(archs[start : start + chunk], start)
                if a.arch_id not in done
            ]
            if part:
                payloads.append(
                    {
                        "task": task_spec,
                        "data_seed": data_seed,
                        "trainer": asdict(trainer),
                        "engine": engine,
                        "indices": [i for i, _ in part],
                        "archs": [a.to_json() for _, a in part],
                    }
                )
        ids = {a.arch_id for a in archs}
        n_done = len(done & ids)
        failed = 0
        if progress:
            progress(BuildProgress(n_done, n, 0, 0))
        with _stop_on_signals(stop, backend) as got:
            try:
                for rows in backend.run(payloads):
                    store.insert(rows, meta)
                    n_done += len(rows)
                    failed += sum(r.status == "failed" for r in rows)
                    if progress:
                        progress(BuildProgress(n_done, n, len(rows), failed))
            except KeyboardInterrupt:
                if not got:
                    raise
            finally:
                backend.close()
        if got:
            raise SamplingInterrupted(got["signal"], n_done, n, n_done - len(done & ids))
        return {
            "total": n,
            "done": n_done,
            "trained": n_done - len(done & ids),
            "failed_now": failed,
        }
