"""The measurement store: every measured latency is a row in an SQLite file.

A row says what was measured (arch, batch), where (platform name + descriptor hash, device,
runtime), how (warm-up, repeats, every sample), what the hardware model predicted at the time,
with which versions, and where the number comes from: ``device`` (a real board or this host),
``emulated`` (QEMU instruction counts: not device time) or ``model``. The file is WAL and a row
is written in one transaction once its measurement is complete, so a killed run loses at most
the net it was measuring and a re-run skips what is stored (resumable plans).

Plans: :func:`plan_archs` samples architectures spread over MACs and depth, so a calibration
fitted on a few of them covers the range the others test.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inag.arch import ArchSpec

FORMAT = "inag-measurements-v1"
ORIGINS = ("device", "emulated", "model")
UNITS = ("s", "cycles", "instructions")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    platform TEXT NOT NULL,
    platform_sha TEXT NOT NULL,
    device TEXT NOT NULL,
    runtime TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('device', 'emulated', 'model')),
    unit TEXT NOT NULL CHECK (unit IN ('s', 'cycles', 'instructions')),
    arch_id TEXT NOT NULL,
    arch TEXT NOT NULL,
    batch INTEGER NOT NULL,
    warmup INTEGER NOT NULL,
    repeats INTEGER NOT NULL,
    number INTEGER NOT NULL,
    samples TEXT NOT NULL,
    median REAL NOT NULL,
    predicted_s REAL,
    versions TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS by_key ON measurements (platform, device, runtime, arch_id, batch);
"""


class MeasurementError(ValueError):
    """A measurement store is missing, not ours, or a row is malformed."""


@dataclass(frozen=True)
class MeasurementRow:
    """One measured network (``median`` and ``samples`` in ``unit``)."""

    platform: str
    platform_sha: str
    device: str
    runtime: str
    origin: str
    unit: str
    arch: ArchSpec
    batch: int
    warmup: int
    repeats: int
    number: int
    samples: tuple[float, ...]
    median: float
    predicted_s: float | None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    id: int | None = None

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise MeasurementError(f"origin must be one of {ORIGINS}, found {self.origin!r}")
        if self.unit not in UNITS:
            raise MeasurementError(f"unit must be one of {UNITS}, found {self.unit!r}")
        if not self.samples or not all(np.isfinite(self.samples)) or min(self.samples) <= 0:
            raise MeasurementError(f"samples must be finite and > 0, found {self.samples[:5]}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        d["arch_id"] = self.arch.arch_id
        d["samples"] = list(self.samples)
        return d


def descriptor_sha(platform: Any) -> str:
    """A stable hash of a validated descriptor (what the model predicted with)."""
    text = json.dumps(platform.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("inag", "numpy", "apache-tvm", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


class MeasurementStore:
    """An SQLite file of measurements (created on first write)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise MeasurementError(f"{self.path}: no measurement store there")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise MeasurementError(f"{self.path}: is a directory, expected an SQLite file")
        elif not _is_store(self.path):
            raise MeasurementError(
                f"{self.path}: not an INAG measurement store (an SQLite file written by "
                "`inag measure`); give a new path or the store's path"
            )
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            self._db.commit()
        except sqlite3.Error as exc:
            raise MeasurementError(f"{self.path}: cannot open as SQLite: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> MeasurementStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, row: MeasurementRow) -> int:
        """Store one complete measurement in one transaction; returns its id."""
        with self._db:
            cur = self._db.execute(
                "INSERT INTO measurements (created, platform, platform_sha, device, runtime, "
                "origin, unit, arch_id, arch, batch, warmup, repeats, number, samples, median, "
                "predicted_s, versions, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.created or time.time(),
                    row.platform,
                    row.platform_sha,
                    row.device,
                    row.runtime,
                    row.origin,
                    row.unit,
                    row.arch.arch_id,
                    row.arch.to_json(),
                    row.batch,
                    row.warmup,
                    row.repeats,
                    row.number,
                    json.dumps(list(row.samples)),
                    row.median,
                    row.predicted_s,
                    json.dumps(row.versions, sort_keys=True),
                    json.dumps(row.extra, sort_keys=True),
                ),
            )
        return int(cur.lastrowid or 0)

    def has(self, platform: str, device: str, runtime: str, arch_id: str, batch: int) -> bool:
        cur = self._db.execute(
            "SELECT 1 FROM measurements WHERE platform=? AND device=? AND runtime=? AND "
            "arch_id=? AND batch=? LIMIT 1",
            (platform, device, runtime, arch_id, batch),
        )
        return cur.fetchone() is not None

    def rows(
        self,
        platform: str | None = None,
        device: str | None = None,
        runtime: str | None = None,
        batch: int | None = None,
    ) -> list[MeasurementRow]:
        """Stored rows, oldest first, filtered by whatever is given."""
        where, args = [], []
        for col, val in (
            ("platform", platform),
            ("device", device),
            ("runtime", runtime),
            ("batch", batch),
        ):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM measurements" + (" WHERE " + " AND ".join(where) if where else "")
        cur = self._db.execute(sql + " ORDER BY id", args)
        names = [c[0] for c in cur.description]
        return [self._row(dict(zip(names, r, strict=True))) for r in cur.fetchall()]

    def get(self, row_id: int) -> MeasurementRow:
        if not -(2**63) <= row_id < 2**63:  # SQLite's INTEGER range
            raise MeasurementError(f"{self.path}: no measurement with id {row_id}")
        cur = self._db.execute("SELECT * FROM measurements WHERE id=?", (row_id,))
        r = cur.fetchone()
        if r is None:
            raise MeasurementError(f"{self.path}: no measurement with id {row_id}")
        names = [c[0] for c in cur.description]
        return self._row(dict(zip(names, r, strict=True)))

    def _row(self, d: dict[str, Any]) -> MeasurementRow:
        """A stored row, or an error naming the store, the row and the bad column: a tampered
        cell must not surface as a JSON or float traceback."""
        try:
            return _row(d)
        except (ValueError, TypeError, KeyError) as exc:  # MeasurementError is a ValueError
            raise MeasurementError(
                f"{self.path}: measurement {d.get('id')!r} is corrupt: {exc}"
            ) from None

    def groups(self) -> list[dict[str, Any]]:
        """One line per (platform, device, runtime, origin, unit, batch): counts and dates."""
        cur = self._db.execute(
            "SELECT platform, device, runtime, origin, unit, batch, COUNT(*), MIN(created), "
            "MAX(created) FROM measurements GROUP BY platform, device, runtime, origin, unit, "
            "batch ORDER BY platform, device, runtime"
        )
        keys = ("platform", "device", "runtime", "origin", "unit", "batch", "n", "first", "last")
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    def to_csv(self, rows: Sequence[MeasurementRow]) -> str:
        buf = io.StringIO()
        cols = ["id", "created", "platform", "platform_sha", "device", "runtime", "origin",
                "unit", "arch_id", "summary", "batch", "warmup", "repeats", "number", "median",
                "predicted_s", "samples", "arch"]  # fmt: skip
        w = csv.writer(buf)
        w.writerow(cols)
        for r in rows:
            d = r.to_dict()
            d["summary"] = r.arch.summary()
            d["samples"] = json.dumps(list(r.samples))
            d["arch"] = r.arch.to_json()
            w.writerow([d[c] for c in cols])
        return buf.getvalue()


def _is_store(path: Path) -> bool:
    """Read-only check that ``path`` is one of ours (never modifies a foreign file)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            r = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return r is not None and r[0] == FORMAT


def _json(d: dict[str, Any], key: str, kind: type) -> Any:
    try:
        value = json.loads(d[key])
    except (TypeError, ValueError):
        raise ValueError(f"column {key!r} is not JSON: {str(d[key])[:40]!r}") from None
    if not isinstance(value, kind):
        raise ValueError(f"column {key!r} must hold a JSON {kind.__name__}, found {value!r:.40}")
    return value


def _number(d: dict[str, Any], key: str, cast: type = float) -> Any:
    try:
        return cast(d[key])
    except (TypeError, ValueError):
        raise ValueError(f"column {key!r} must be a number, found {d[key]!r:.40}") from None


def _row(d: dict[str, Any]) -> MeasurementRow:
    samples = _json(d, "samples", list)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in samples):
        raise ValueError(f"column 'samples' must be a list of numbers, found {samples!r:.40}")
    return MeasurementRow(
        platform=d["platform"],
        platform_sha=d["platform_sha"],
        device=d["device"],
        runtime=d["runtime"],
        origin=d["origin"],
        unit=d["unit"],
        arch=ArchSpec.from_json(d["arch"]),
        batch=_number(d, "batch", int),
        warmup=_number(d, "warmup", int),
        repeats=_number(d, "repeats", int),
        number=_number(d, "number", int),
        samples=tuple(samples),
        median=_number(d, "median"),
        predicted_s=d["predicted_s"],
        versions=_json(d, "versions", dict),
        extra=_json(d, "extra", dict),
        created=_number(d, "created"),
        id=_number(d, "id", int),
    )


# ---------------------------------------------------------------------------- plans
def plan_archs(space: Any, n: int, seed: int, pool: int = 40) -> list[ArchSpec]:
    """``n`` distinct architectures of ``space`` spread over MACs and depth.

    Draws ``pool * n`` candidates, then takes one per cell of a depth x log-MAC grid in turn
    (the cell's candidate nearest to the cell's centre), so small and large, shallow and deep
    nets are all measured: a fit on a few of them must then hold for the rest.
    """
    from inag.ir import layer_table_many

    if n < 1:
        raise ValueError(f"a plan needs n >= 1, found {n}")
    rng = np.random.default_rng(seed)
    cands = space.sample_many(rng, max(n, pool * n))
    macs = layer_table_many(cands).macs.sum(axis=1)
    logm = np.log10(np.maximum(macs, 1.0))
    depth = np.array([a.depth for a in cands])
    edges = np.quantile(logm, np.linspace(0, 1, n + 1))
    picked: list[int] = []
    used = np.zeros(len(cands), bool)
    depths = sorted(set(depth.tolist()))
    for i in range(n):  # one per MAC quantile bin, depth cycling through the depths seen
        lo, hi = edges[i], edges[i + 1]
        want_d = depths[i % len(depths)]
        in_bin = (~used) & (logm >= lo) & (logm <= hi)
        if not in_bin.any():
            in_bin = ~used
        score = np.where(
            in_bin, np.abs(depth - want_d) * 10 + np.abs(logm - (lo + hi) / 2), np.inf
        )
        j = int(np.argmin(score))
        used[j] = True
        picked.append(j)
    return [cands[j] for j in sorted(picked, key=lambda j: (macs[j], depth[j]))]


def iter_rows_to_measure(
    store: MeasurementStore,
    archs: Sequence[ArchSpec],
    platform: str,
    device: str,
    runtime: str,
    batch: int,
) -> Iterator[ArchSpec]:
    """The plan's archs not yet in the store for this (platform, device, runtime, batch)."""
    for a in archs:
        if not store.has(platform, device, runtime, a.arch_id, batch):
            yield a
