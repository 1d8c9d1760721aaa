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
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform as _platform
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inag.arch import ArchSpec
from inag.space import SearchSpace

SCHEMA_VERSION = 1
DEFAULT_CHUNK = 128


class DatasetError(ValueError):
    """A dataset file is missing, of another task/configuration, or not a dataset."""


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
        from inag.safe_io import InputError, load_json

        out = {}
        for k, v in self.conn.execute("SELECT key, value FROM meta"):
            try:
                out[k] = load_json(v, f"{self.path}: meta {k!r}")
            except (InputError, TypeError) as exc:
                raise DatasetError(f"{self.path} has a corrupt meta entry: {exc}") from None
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
        for key, label in (
            ("task", "task"),
            ("space", "search space"),
            ("config_hash", "trainer configuration"),
            ("data_seed", "data seed"),
            ("seed", "sampling seed"),
        ):
            if have.get(key) != meta.get(key):
                want = have.get(key)
                detail = ""
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
        rows = self.rows("ok")
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
        return {
            "path": str(self.path),
            "task": meta.get("task"),
            "space": (meta.get("space") or {}).get("name"),
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
            writer.writerow(
                [
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
                ]
            )
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


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return text if len(text) < 80 else text[:77] + "..."


# ---------------------------------------------------------------------------- training chunks
def train_chunk(payload: dict[str, Any]) -> list[Row]:
    """Train one chunk (runs in a worker process or a Ray task; one torch thread)."""
    import torch

    from inag.tasks import load_task
    from inag.trainer import BatchedMLPTrainer, TrainerConfig

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
    """Runs training chunks somewhere and yields their rows as they finish."""

    def run(self, payloads: Sequence[dict[str, Any]]) -> Iterator[list[Row]]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class LocalBackend(Backend):
    """Worker processes on this machine (one torch thread each)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or max(1, os.cpu_count() or 1)

    def run(self, payloads: Sequence[dict[str, Any]]) -> Iterator[list[Row]]:
        if self.workers == 1 or len(payloads) == 1:
            import torch

            threads = torch.get_num_threads()
            try:
                for p in payloads:
                    yield train_chunk(p)
            finally:
                torch.set_num_threads(threads)
            return
        import multiprocessing as mp

        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as ex:
            pending: set[Future] = set()
            it = iter(payloads)
            try:
                for p in it:
                    pending.add(ex.submit(train_chunk, p))
                    if len(pending) >= self.workers:
                        break
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.add(ex.submit(train_chunk, nxt))
            finally:
                for fut in pending:
                    fut.cancel()


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
            done, refs = self.ray.wait(refs, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        self.ray.shutdown()


def dataset_meta(
    task_spec: str, task_kind: str, space: SearchSpace, seed: int, data_seed: int, trainer: Any
) -> dict[str, Any]:
    return {
        "task": task_spec,
        "task_kind": task_kind,
        "space": {
            "name": space.name,
            "kind": space.kind,
            "input_shape": list(space.input_shape),
            "output_size": space.output_size,
            "size": space.size(),
            "dim": space.dim,
        },
        "seed": seed,
        "data_seed": data_seed,
        "trainer": asdict(trainer),
        "config_hash": trainer.config_hash(),
        "versions": library_versions(),
    }


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

    ``engine`` is the trainer engine (``inag.trainer.ENGINES``), resolved here once so every
    worker uses the same one; each row records it with the library versions.
    """
    from inag.tasks import load_task
    from inag.trainer import resolve_engine

    try:
        engine = resolve_engine(engine)
    except (ValueError, RuntimeError) as exc:
        raise DatasetError(str(exc)) from None

    task = load_task(task_spec, seed=data_seed)
    space = space.bind(task.input_shape, task.output_size)
    if space.kind != "mlp":
        raise DatasetError(
            f"space {space.name!r} is a {space.kind}; the batched trainer "
            "trains MLP spaces (CNN datasets are not supported yet)"
        )
    meta = dataset_meta(task_spec, task.kind, space, seed, data_seed, trainer)
    meta["versions"]["trainer_engine"] = engine
    archs = space.sample_many(np.random.default_rng(seed), n)
    with DatasetStore(db, create=True) as store:
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
        try:
            for rows in backend.run(payloads):
                store.insert(rows, meta)
                n_done += len(rows)
                failed += sum(r.status == "failed" for r in rows)
                if progress:
                    progress(BuildProgress(n_done, n, len(rows), failed))
        finally:
            backend.close()
        return {
            "total": n,
            "done": n_done,
            "trained": n_done - len(done & ids),
            "failed_now": failed,
        }
