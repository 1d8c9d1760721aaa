"""Tests for the dataset builder and its SQLite store (inag.dataset), on real training runs.

Budgets are tiny (2 epochs, one initialization) so the fast tests stay fast; the properties
checked -- resumability, determinism, refusal of a foreign file, crash safety -- do not depend
on the budget.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from inag.arch import ArchSpec
from inag.dataset import (
    CSV_COLUMNS,
    DatasetError,
    DatasetStore,
    LocalBackend,
    bind_to_task,
    build_dataset,
)
from inag.space import SpaceError, load_space
from inag.train.trainer import TrainerConfig

TINY = TrainerConfig(epochs=2, restarts=1)
N, CHUNK, SEED = 40, 8, 0
ROW_COLS = "arch_id, sample_index, status, performance, final_loss, reason, created"


def read_rows(db: Path) -> dict[str, tuple]:
    """arch_id -> (sample_index, status, performance, final_loss, reason, created)."""
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(f"SELECT {ROW_COLS} FROM runs")}
    finally:
        con.close()


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def build(db: Path, n: int = N, workers: int = 1, **kw):
    kw.setdefault("trainer", TINY)
    kw.setdefault("seed", SEED)
    kw.setdefault("chunk", CHUNK)
    task = kw.pop("task", "data_a")
    space = load_space(kw.pop("space", "mlp"))
    return build_dataset(db, task, space, n, backend=LocalBackend(workers), **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """One dataset, built once with a single in-process worker."""
    db = tmp_path_factory.mktemp("ds") / "data_a.sqlite"
    out = build(db)
    return db, out


def copy_db(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    with sqlite3.connect(src) as con:  # fold the WAL in, then copy one self-contained file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    shutil.copy(src, dst)
    return dst


# ---------------------------------------------------------------------------- building
def test_build_writes_n_distinct_rows_and_meta(built):
    db, out = built
    assert out == {"total": N, "done": N, "trained": N, "failed_now": 0}
    rows = read_rows(db)
    assert len(rows) == N
    assert sorted(r[0] for r in rows.values()) == list(range(N))  # sample indices
    assert integrity(db) == "ok"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(DISTINCT arch) FROM runs").fetchone()[0] == N
    (task, cfg_hash, seed, versions), *more = set(
        con.execute("SELECT task, config_hash, seed, versions FROM runs")
    )
    con.close()
    assert not more and task == "data_a" and cfg_hash == TINY.config_hash() and seed == SEED
    assert {"python", "torch", "numpy", "inag"} <= set(json.loads(versions))
    with DatasetStore(db) as store:
        meta = store.meta()
        archs, perf = store.archs_and_performance()
    assert meta["task"] == "data_a" and meta["seed"] == SEED and meta["data_seed"] == 0
    assert meta["config_hash"] == TINY.config_hash()
    assert meta["trainer"]["epochs"] == 2 and meta["schema_version"] == 1
    assert meta["space"]["name"] == "mlp" and meta["space"]["input_shape"] == [1]
    # the rows are the seeded Monte Carlo sample of the bound space, in order
    space = load_space("mlp").bind((1,), 1)
    want = space.sample_many(np.random.default_rng(SEED), N)
    assert [a.arch_id for a in archs] == [a.arch_id for a in want]
    assert np.all((perf >= 0) & (perf <= 1))


def test_rerun_skips_everything(built, tmp_path):
    db = copy_db(built[0], tmp_path)
    before = read_rows(db)
    out = build(db)
    assert out["trained"] == 0 and out["done"] == N
    assert read_rows(db) == before  # not even the timestamps move


def test_growing_n_extends(built, tmp_path):
    db = copy_db(built[0], tmp_path)
    before = read_rows(db)
    seen = []
    out = build(db, n=N + 8, progress=seen.append)
    assert out == {"total": N + 8, "done": N + 8, "trained": 8, "failed_now": 0}
    after = read_rows(db)
    assert len(after) == N + 8
    assert {k: after[k] for k in before} == before
    assert sorted(after[k][0] for k in set(after) - set(before)) == list(range(N, N + 8))
    assert seen[0].done == N and seen[-1].done == N + 8 and seen[-1].chunk_rows == 8


def test_same_seed_same_rows_with_two_workers(built, tmp_path):
    """A fresh DB from two worker processes holds exactly the in-process rows."""
    db = tmp_path / "two.sqlite"
    out = build(db, workers=2)
    assert out["trained"] == N
    a, b = read_rows(built[0]), read_rows(db)
    assert set(a) == set(b)
    assert {k: v[:5] for k, v in a.items()} == {k: v[:5] for k, v in b.items()}
    assert integrity(db) == "ok"


def test_other_seed_other_sample(tmp_path):
    out = build(tmp_path / "s1.sqlite", n=8, seed=1)
    assert out["trained"] == 8
    with DatasetStore(tmp_path / "s1.sqlite") as s:
        ids = {r["arch_id"] for r in s.rows(None)}
    want = load_space("mlp").bind((1,), 1).sample_many(np.random.default_rng(0), 8)
    assert ids != {a.arch_id for a in want}


@pytest.mark.parametrize(
    ("change", "label"),
    [
        ({"task": "data_b"}, "task"),
        ({"trainer": TrainerConfig(epochs=3, restarts=1)}, "trainer configuration"),
        ({"trainer": TrainerConfig(epochs=2, restarts=1, lr=0.02)}, "trainer configuration"),
        ({"seed": 1}, "sampling seed"),
        ({"data_seed": 7}, "data seed"),
    ],
)
def test_foreign_db_is_refused(built, change, label):
    db = built[0]
    before = read_rows(db)
    with pytest.raises(DatasetError, match=f"built with {label}") as err:
        build(db, **change)
    assert str(db) in str(err.value) and "use another --db" in str(err.value)
    assert read_rows(db) == before


def test_info_names_the_task_input_shape_and_the_space_one(tmp_path):
    """An MLP flattens an image task: info keeps both shapes (digits: 1x8x8 -> 64)."""
    db = tmp_path / "digits.sqlite"
    build(db, n=2, chunk=2, task="digits")
    with DatasetStore(db) as store:
        info = store.info()
    assert info["task_kind"] == "classification" and info["task_input_shape"] == [1, 8, 8]
    assert info["input_shape"] == [64] and info["output_size"] == 10 and info["space"] == "mlp"
    with DatasetStore(tmp_path / "old.sqlite", create=True) as store:
        store.bind({"task": "data_a"})  # a dataset written before the key existed
        assert store.info()["task_input_shape"] is None


# ---------------------------------------------------------------------------- bad input
def test_cnn_space_on_a_non_image_task_is_refused_naming_the_shapes(tmp_path):
    db = tmp_path / "x.sqlite"
    with pytest.raises(SpaceError) as err:
        build(db, n=2, task="data_a", space="cnn")
    msg = str(err.value)
    assert "input_shape: space 'cnn'" in msg and "(C, H, W)" in msg
    assert "task 'data_a' has input_shape (1,)" in msg
    assert not db.exists()  # refused before anything is written
    with pytest.raises(SpaceError, match=re.escape(msg)):
        bind_to_task("data_a", load_space("cnn"))  # the same check, for a caller to run first
    task, bound = bind_to_task("digits", load_space("mlp"))
    assert task.input_shape == (1, 8, 8) and bound.input_shape == (64,)


def test_cifar_directory_given_to_a_one_channel_space(tmp_path):
    from test_tasks import make_cifar

    folder = make_cifar(tmp_path, n=4)
    gray = tmp_path / "gray.yaml"
    gray.write_text(
        yaml.safe_dump(load_space("cnn").to_dict() | {"name": "gray", "input_channels": [1]})
    )
    db = tmp_path / "x.sqlite"
    with pytest.raises(SpaceError) as err:
        build(db, n=2, task=f"cifar10:{folder}", space=str(gray))
    msg = str(err.value)
    assert "input_shape: space 'gray' takes images with 1 channel(s)" in msg
    assert f"task 'cifar10:{folder}' has input_shape (3, 32, 32), 3 channel(s)" in msg
    assert not db.exists()


def test_info_and_csv_export(built, tmp_path):
    db = built[0]
    with DatasetStore(db) as store:
        info = store.info()
        n_csv = store.export_csv(tmp_path / "sub" / "out.csv")
        archs, perf = store.archs_and_performance()
    assert info["counts"] == {"ok": N, "failed": 0}
    assert info["task"] == "data_a" and info["space"] == "mlp"
    q = info["performance_quantiles"]
    assert list(q) == ["0.0", "0.1", "0.25", "0.5", "0.75", "0.9", "1.0"]
    assert q["0.0"] == pytest.approx(perf.min()) and q["1.0"] == pytest.approx(perf.max())
    assert q["0.5"] == pytest.approx(np.median(perf))
    assert info["performance_mean"] == pytest.approx(perf.mean())
    assert sum(info["depth_coverage"].values()) == N
    n_layers = sum(a.depth for a in archs)
    assert sum(info["bits_coverage"].values()) == n_layers
    assert sum(info["width_coverage"].values()) == n_layers
    assert set(info["bits_coverage"]) <= set(range(2, 9))
    assert info["train_seconds_per_net"] > 0 and info["trainer"]["epochs"] == 2
    assert n_csv == N
    with (tmp_path / "sub" / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N
    assert list(rows[0]) == list(CSV_COLUMNS)
    for r in rows:
        a = ArchSpec.from_json(r["arch"])
        assert a.arch_id == r["arch_id"] and int(r["depth"]) == a.depth
        assert r["widths"].split() == [str(layer.width) for layer in a.layers]
        assert r["bits"].split() == [str(layer.bits) for layer in a.layers]
    assert [int(r["sample_index"]) for r in rows] == list(range(N))


def test_diverging_candidates_are_recorded_as_failed(tmp_path):
    db = tmp_path / "diverge.sqlite"
    out = build(db, n=16, trainer=TrainerConfig(epochs=2, restarts=1, lr=1e4))
    assert out["done"] == 16 and 0 < out["failed_now"] < 16
    con = sqlite3.connect(db)
    failed = con.execute(
        "SELECT reason, performance, final_loss FROM runs WHERE status = 'failed'"
    ).fetchall()
    con.close()
    assert len(failed) == out["failed_now"]
    assert all(r.startswith("diverged: non-finite loss") and loss is None for r, _, loss in failed)
    with DatasetStore(db) as store:
        assert store.count() == {"ok": 16 - len(failed), "failed": len(failed)}
        assert len(store.rows()) == 16 - len(failed)  # default: ok rows only
    # resuming does not retry failed rows: they are finished work
    assert build(db, n=16, trainer=TrainerConfig(epochs=2, restarts=1, lr=1e4))["trained"] == 0


def test_not_a_dataset(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(DatasetError, match="not an INAG dataset"):
        DatasetStore(junk)
    with pytest.raises(DatasetError, match="not an INAG dataset"):
        build(junk, n=4)
    with pytest.raises(DatasetError, match="no dataset at"):
        DatasetStore(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


def test_a_cnn_dataset_on_digits_builds_and_resumes_to_the_same_rows(tmp_path):
    whole, parts = tmp_path / "whole.sqlite", tmp_path / "parts.sqlite"
    build(whole, n=12, task="digits", space="cnn", chunk=4)
    build(parts, n=6, task="digits", space="cnn", chunk=4)
    build(parts, n=12, task="digits", space="cnn", chunk=4)  # resumed
    rows = read_rows(whole)
    assert len(rows) == 12 and all(r[1] == "ok" for r in rows.values())
    assert {k: r[:4] for k, r in rows.items()} == {k: r[:4] for k, r in read_rows(parts).items()}
    with DatasetStore(whole) as store:
        archs, perf = store.archs_and_performance()
        assert store.meta()["task_input_shape"] == [1, 8, 8]
    assert all(a.kind == "cnn" and a.input_shape == (1, 8, 8) for a in archs)
    assert perf.min() >= 0.0 and perf.max() <= 1.0 and perf.std() > 0


# ---------------------------------------------------------------------------- crash safety
@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    """kill -9 the whole `inag sample` process group mid-run, then resume with the same command."""
    n, chunk = 240, 4
    db = tmp_path / "killed.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "inag.cli",
        "sample",
        "--task",
        "data_a",
        "--n",
        str(n),
        "--db",
        str(db),
        "--seed",
        "3",
        "--epochs",
        "4",
        "--restarts",
        "1",
        "--chunk",
        str(chunk),
        "--workers",
        "2",
    ]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows_at_kill = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    rows_at_kill = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                    con.close()
                except sqlite3.OperationalError:
                    rows_at_kill = 0  # schema not there yet, or busy
                if rows_at_kill >= 3 * chunk:
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    assert integrity(db) == "ok"
    before = read_rows(db)
    assert 3 * chunk <= len(before) < n, "the kill must land mid-run"
    # whole chunks only: each chunk's rows are one transaction
    per_chunk: dict[int, int] = {}
    for r in before.values():
        per_chunk[r[0] // chunk] = per_chunk.get(r[0] // chunk, 0) + 1
    assert set(per_chunk.values()) == {chunk}

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n}/{n} nets ({n - len(before)} trained now" in done.stdout
    assert integrity(db) == "ok"
    after = read_rows(db)
    assert len(after) == n
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(DISTINCT sample_index) FROM runs").fetchone()[0] == n
    con.close()
    assert sorted(r[0] for r in after.values()) == list(range(n))
    assert {k: after[k] for k in before} == before  # finished rows untouched, incl. created


# ---------------------------------------------------------------------------- Ray
def test_ray_backend_writes_the_same_rows(built, tmp_path):
    ray = pytest.importorskip("ray")
    from inag.dataset import RayBackend

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    db = tmp_path / "ray.sqlite"
    out = build_dataset(
        db, "data_a", load_space("mlp"), N, SEED, TINY, RayBackend(num_cpus=2), chunk=CHUNK
    )
    assert not ray.is_initialized()  # the backend shut its local Ray down
    assert out == {"total": N, "done": N, "trained": N, "failed_now": 0}
    local, remote = read_rows(built[0]), read_rows(db)
    assert set(local) == set(remote)
    # one torch thread per chunk on both sides: the numbers are bit for bit the same
    assert {k: v[:5] for k, v in local.items()} == {k: v[:5] for k, v in remote.items()}
    assert integrity(db) == "ok"


# ---------------------------------------------------------------------------- tampered files
def _tamper(src: Path, dst_dir: Path, sql: str, *args: object) -> Path:
    db = copy_db(src, dst_dir)
    with sqlite3.connect(db) as con:
        con.execute(sql, args)
    con.close()
    return db


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("space", '"cnn"', "'space' must be an object, found 'cnn'"),
        ("task", "42", "'task' must be a task spec string, found 42"),
        ("task_kind", '"weird"', "'task_kind' must be 'regression' or 'classification'"),
        ("trainer", '"junk"', "'trainer' must be an object of trainer settings"),
        ("seed", "1.5", "'seed' must be an int, found 1.5"),
    ],
)
def test_a_tampered_meta_entry_is_refused_naming_it(built, tmp_path, key, value, expect):
    db = _tamper(built[0], tmp_path, "UPDATE meta SET value = ? WHERE key = ?", value, key)
    for read in (lambda s: s.meta(), lambda s: s.info()):
        with DatasetStore(db) as store, pytest.raises(DatasetError) as exc:
            read(store)
        assert "corrupt meta entry" in str(exc.value) and expect in str(exc.value)


def test_a_tampered_space_field_is_refused_naming_it(built, tmp_path):
    with DatasetStore(built[0]) as store:
        space = store.meta()["space"]
    bad = {**space, "input_shape": "abc"}
    db = _tamper(built[0], tmp_path, "UPDATE meta SET value = ? WHERE key = 'space'",
                 json.dumps(bad))  # fmt: skip
    with DatasetStore(db) as store, pytest.raises(DatasetError, match="'space.input_shape' must"):
        store.meta()
    missing = {k: v for k, v in space.items() if k != "output_size"}
    (tmp_path / "m").mkdir()
    db = _tamper(built[0], tmp_path / "m", "UPDATE meta SET value = ? WHERE key = 'space'",
                 json.dumps(missing))  # fmt: skip
    with (
        DatasetStore(db) as store,
        pytest.raises(DatasetError, match="'space' lacks 'output_size'"),
    ):
        store.meta()


@pytest.mark.parametrize("value", ["abc", 1e308, None, -0.5, float("nan")])
def test_an_ok_row_whose_performance_is_not_a_label_is_refused(built, tmp_path, value):
    db = _tamper(
        built[0], tmp_path,
        "UPDATE runs SET performance = ? WHERE sample_index = 3 AND status = 'ok'", value,
    )  # fmt: skip
    with DatasetStore(db) as store, pytest.raises(DatasetError) as exc:
        store.archs_and_performance()
    assert "row 3" in str(exc.value) and "expected a number in [0, 1]" in str(exc.value)


def test_a_dataset_of_a_space_file_is_read_back_with_that_space(tmp_path):
    """The dataset stores the space's definition: `inag train` on it must not fall back to a
    bundled space of the same name (it did: a custom file named 'cnn' became the bundled cnn)."""
    from inag.cli import main

    text = load_space("cnn").to_dict()
    text["conv"]["channels"] = [4, 6]
    yaml_path = tmp_path / "narrow.yaml"
    yaml_path.write_text(yaml.safe_dump({**text, "name": "cnn"}))
    db = tmp_path / "n.sqlite"
    build(db, n=24, task="digits", space=str(yaml_path))
    with DatasetStore(db) as store:
        assert store.meta()["space_definition"]["conv"]["channels"] == [4, 6]
    build(db, n=26, task="digits", space=str(yaml_path))  # resumes: the same definition
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**text, "name": "cnn", "conv": {**text["conv"],
                                     "channels": [4, 8]}}))  # fmt: skip
    with pytest.raises(DatasetError, match=r"conv\.channels: the file's \[4, 6\], yours \[4, 8\]"):
        build(db, n=26, task="digits", space=str(other))
    model = tmp_path / "n.nagan"
    args = ["train", "--db", str(db), "--out", str(model), "--gan-steps", "10", "--enc-epochs",
            "2", "--ensemble", "0"]  # fmt: skip
    assert main(args) == 0
    from inag.nagan import Nagan

    nagan = Nagan.load(model)
    assert nagan.space.blocks[0].widths == (4, 6)
