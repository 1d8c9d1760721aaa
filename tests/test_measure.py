"""Closing the loop: the measurement store, plans, calibration fits, and real measurements
(C on the host, TVM through a real RPC tracker with two servers on 127.0.0.1)."""

from __future__ import annotations

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
from conftest import FROZEN_HOST
from tvm_servers import free_port, start, stop

from hwmodels import build_models
from hwmodels.calibrate import choose_fit_set, fit, fittable_values, with_values
from inag import hostinfo
from inag.arch import ArchSpec, LayerSpec
from inag.cli import main
from inag.ir import layer_table_many
from inag.measurements import (
    MeasurementError,
    MeasurementRow,
    MeasurementStore,
    plan_archs,
)
from inag.platform import load_platform
from inag.space import load_space

ROOT = Path(__file__).resolve().parents[1]
ARCH = ArchSpec("mlp", (4,), 1, (LayerSpec(8, 4),))


def _row(arch: ArchSpec = ARCH, **kw) -> MeasurementRow:
    base = dict(
        platform="p", platform_sha="abc", device="host:x", runtime="c", origin="device",
        unit="s", arch=arch, batch=1, warmup=1, repeats=3, number=10,
        samples=(1e-5, 2e-5, 3e-5), median=2e-5, predicted_s=1.5e-5,
    )  # fmt: skip
    base.update(kw)
    return MeasurementRow(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the store
def test_store_round_trip_and_resume_key(tmp_path):
    db = tmp_path / "m.sqlite"
    with MeasurementStore(db) as store:
        i = store.add(_row())
        assert store.has("p", "host:x", "c", ARCH.arch_id, 1)
        assert not store.has("p", "host:x", "tvm", ARCH.arch_id, 1)
        got = store.get(i)
        assert got.arch == ARCH and got.samples == (1e-5, 2e-5, 3e-5) and got.median == 2e-5
        assert [g["n"] for g in store.groups()] == [1]
        csv = store.to_csv(store.rows())
        assert ARCH.arch_id in csv and "median" in csv.splitlines()[0]
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_are_validated():
    with pytest.raises(MeasurementError, match="origin"):
        _row(origin="guessed")
    with pytest.raises(MeasurementError, match="samples"):
        _row(samples=(float("nan"),))


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(MeasurementError, match="not an INAG measurement store"):
        MeasurementStore(other)
    assert other.read_bytes() == before and not Path(f"{other}-wal").exists()
    with pytest.raises(MeasurementError, match="directory"):
        MeasurementStore(tmp_path)


# ---------------------------------------------------------------------------- plans
def test_plan_spans_macs_and_depth_and_is_seeded():
    space = load_space("mlp").bind((8,), 1)
    plan = plan_archs(space, 24, seed=3)
    assert plan == plan_archs(space, 24, seed=3) and plan != plan_archs(space, 24, seed=4)
    assert len({a.arch_id for a in plan}) == 24
    macs = layer_table_many(plan).macs.sum(axis=1)
    pool = layer_table_many(space.sample_many(np.random.default_rng(9), 2000)).macs.sum(axis=1)
    assert macs.min() <= np.quantile(pool, 0.05) and macs.max() >= np.quantile(pool, 0.95)
    max_depth = sum(b.max_depth for b in space.blocks)
    assert {a.depth for a in plan} == set(range(1, max_depth + 1))


def test_fit_set_spans_the_plan():
    plan = plan_archs(load_space("mlp").bind((8,), 1), 30, seed=0)
    ids = choose_fit_set(plan, 8)
    macs = layer_table_many(plan).macs.sum(axis=1)
    assert len(ids) == 8 and int(np.argmin(macs)) in ids and int(np.argmax(macs)) in ids


# ---------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("space_name", ["mlp", "cnn"])
def test_calibration_recovers_known_parameters(space_name):
    """Measurements synthesised by the model with known parameters give those parameters."""
    plat = load_platform(FROZEN_HOST)
    model = build_models(plat)["latency"]
    space = load_space(space_name)
    space = space.bind((8,), 1) if space_name == "mlp" else space
    archs = plan_archs(space, 30, seed=1)
    truth = {
        ("macs_per_cycle", "8"): 1.0,
        ("conv_macs_per_cycle", "8"): 0.4,
        ("mem_bytes_per_cycle",): 2.0,  # both bounds bind in some units
        ("overhead_cycles_per_layer",): 700.0,
        ("overhead_cycles_per_inference",): 5000.0,
    }
    table = layer_table_many(archs)
    y = with_values(model, truth).total(table)
    res = fit(model, "latency", archs, y, max_fit=10)
    assert res.within(0.01) == (20, 20)
    recovered = 0
    for slot, value in truth.items():
        moved = with_values(model, {**truth, slot: value * 1.2}).total(table)
        if np.max(np.abs(moved / y - 1)) < 0.02:
            continue  # the measurements hardly depend on it (e.g. conv throughput, MLP plan)
        name = slot[0] + (f"[{slot[1]}]" if len(slot) > 1 else "")
        assert res.after[name] == pytest.approx(value, rel=0.03), name
        recovered += 1
    assert recovered >= 3


def test_plugins_declare_what_is_fittable():
    plat = load_platform("cortex_m")
    models = build_models(plat)
    assert set(fittable_values(models["latency"])) >= {("macs_per_cycle", "8")}
    assert set(fittable_values(models["flash"])) == {("per_layer_bytes",), ("runtime_bytes",)}
    assert fittable_values(models["storage"]) == {}


# ---------------------------------------------------------------------------- CLI, real C
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")
def test_measure_c_on_the_host_then_calibrate(tmp_path, capsys):
    db = tmp_path / "m.sqlite"
    argv = ["measure", "run", "--platform", "host_cpu", "--runtime", "c", "--space", "mlp",
            "--input-shape", "8", "--output-size", "1", "-n", "14", "--repeats", "5",
            "--db", str(db)]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0  # resumed: nothing left to measure
    assert "14 already in" in capsys.readouterr().out
    with MeasurementStore(db) as store:
        rows = store.rows()
    assert len(rows) == 14 and all(r.origin == "device" and r.unit == "s" for r in rows)
    assert all(len(r.samples) == 5 and r.predicted_s and r.predicted_s > 0 for r in rows)
    out = tmp_path / "cal" / "host_cal.yaml"
    assert main(["calibrate", "-p", "host_cpu", "--db", str(db), "--fit", "6",
                 "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "held-out within ±10 %:" in text and out.with_suffix(".png").stat().st_size > 1000
    cal = load_platform(out)
    assert cal.calibration.calibrated and cal.calibration.runtime == "c"
    lat = cal.cost_models["latency"].params
    assert lat["overhead_cycles_per_layer"]["kind"] == "measured"
    assert "held-out" in lat["overhead_cycles_per_layer"]["source"]
    assert main(["platforms", "validate", str(out)]) == 0
    # the fit lowers the error on the nets it did not see
    res = yaml.safe_load(out.read_text())["calibration"]["residuals"]
    assert res["held_out_nets"] == 8
    assert main(["measure", "export", "--db", str(db), "--csv", str(tmp_path / "m.csv")]) == 0
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 15
    assert main(["measure", "ls", "--db", str(db)]) == 0
    assert "14 nets" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")
def test_passes_time_each_net_again_and_calibrate_takes_the_median(tmp_path, capsys):
    """--passes 3 builds each net once and times the plan three times, interleaved; every pass
    is a row, and calibrate fits each net's median over its rows."""
    from inag.cli.measure import group_by_arch

    db = tmp_path / "m.sqlite"
    assert main(["measure", "run", "-p", "host_cpu", "--runtime", "onnxruntime", "--space",
                 "mlp", "--input-shape", "8", "--output-size", "1", "-n", "5", "--repeats",
                 "3", "--passes", "3", "--db", str(db)]) == 0  # fmt: skip
    with MeasurementStore(db) as store:
        rows = store.rows()
    assert len(rows) == 15
    # interleaved: pass 1 of every net, then pass 2 of every net, ...
    assert [r.extra["pass"] for r in rows] == [1] * 5 + [2] * 5 + [3] * 5
    assert [r.arch.arch_id for r in rows[:5]] == [r.arch.arch_id for r in rows[5:10]]
    groups = group_by_arch(rows)
    assert len(groups) == 5 and all(len(g) == 3 for g in groups)
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", "-p", "host_cpu", "--db", str(db), "--fit", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    cal = yaml.safe_load(out.read_text())["calibration"]
    assert cal["runtime"] == "onnxruntime" and cal["residuals"]["held_out_nets"] == 2
    # the fit is the one on each net's median over its three passes
    import statistics

    medians = [statistics.median(r.median for r in g) for g in groups]
    want = fit(build_models(load_platform("host_cpu"))["latency"], "latency",
               [g[0].arch for g in groups], medians, max_fit=3, runtime="onnxruntime")  # fmt: skip
    assert cal["coefficients"] == {
        k: float(f"{v:.6g}") for k, v in want.after.items() if k not in want.undetermined
    }


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")
def test_calibration_lowers_the_held_out_error_on_real_measurements(tmp_path):
    db = tmp_path / "m.sqlite"
    assert main(["measure", "run", "-p", "host_cpu", "--runtime", "c", "--space", "mlp",
                 "--input-shape", "8", "--output-size", "1", "-n", "16", "--seed", "5",
                 "--repeats", "5", "--db", str(db)]) == 0  # fmt: skip
    plat = load_platform("host_cpu")
    with MeasurementStore(db) as store:
        rows = store.rows()
    res = fit(build_models(plat)["latency"], "latency", [r.arch for r in rows],
              [r.median for r in rows], max_fit=6)  # fmt: skip
    before = np.median(np.abs(res.rel_err(after=False)))
    after = np.median(np.abs(res.rel_err()))
    assert after < before / 2, (before, after)  # host C timings are noisy: a loose bound


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")
def test_kill_9_loses_no_stored_row_and_the_plan_resumes(tmp_path):
    db = tmp_path / "m.sqlite"
    argv = [sys.executable, "-m", "inag.cli", "measure", "run", "-p", "host_cpu", "--runtime",
            "c", "--space", "mlp", "--input-shape", "4", "-n", "8", "--repeats", "3",
            "--db", str(db)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                if MeasurementStore(db, create=False).rows():
                    break
            except (MeasurementError, sqlite3.Error):
                pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with MeasurementStore(db, create=False) as store:
        kept = store.rows()
    assert all(len(r.samples) == 3 for r in kept)
    assert subprocess.run(argv, cwd=ROOT, capture_output=True).returncode == 0
    with MeasurementStore(db, create=False) as store:
        rows = store.rows()
    assert len(rows) == 8 and len({r.arch.arch_id for r in rows}) == 8


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["measure", "run", "--runtime", "tvm", "--device", "rpc:/x"], "rpc://HOST:PORT"),
        (["measure", "run", "--runtime", "nope"], "--runtime"),
        (["measure", "run", "--runtime", "serial"], "--device"),
        (["measure", "run", "--runtime", "c", "--device", "rpc://127.0.0.1:9"], "this host"),
        (["measure", "run", "-p", "cortex_m", "--runtime", "c"], "times this host, not the"),
        (["measure", "ls", "--db", "/nonexistent/m.sqlite"], "no measurement store"),
        (["calibrate", "-p", "host_cpu", "--db", "DB", "--out", "OUT"], "no batch-1"),
    ],
)
def test_bad_input_is_one_paragraph(argv, needle, tmp_path, capsys):
    db = tmp_path / "empty.sqlite"
    MeasurementStore(db).close()
    argv = [str(db) if a == "DB" else str(tmp_path / "o.yaml") if a == "OUT" else a for a in argv]
    if argv[:2] == ["measure", "run"]:
        argv += ["--db", str(tmp_path / "m.sqlite"), "ARCH"]
        argv[-1] = ARCH.to_json()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------- TVM tracker
@pytest.mark.slow
def test_measure_through_a_real_tracker_with_two_servers(tmp_path, capsys):
    pytest.importorskip("tvm")
    pytest.importorskip("tornado")
    port = free_port()
    tracker = f"127.0.0.1:{port}"
    procs = [start("rpc_tracker", port, tmp_path / "tracker.log")]
    try:
        for i in range(2):
            log = tmp_path / f"server{i}.log"
            procs.append(
                start("rpc_server", free_port(), log, "--tracker", tracker, "--key", "board")
            )
        from tvm import rpc

        deadline = time.monotonic() + 60
        while (
            rpc.connect_tracker("127.0.0.1", port)
            .summary()["queue_info"]
            .get("board", {})
            .get("free", 0)
            < 2
        ):
            assert time.monotonic() < deadline, "servers did not register with the tracker"
            time.sleep(0.3)
        db = tmp_path / "m.sqlite"
        device = f"tracker://{tracker}/board"
        assert main(["measure", "run", "-p", "host_cpu", "--runtime", "tvm", "--device", device,
                     "--space", "mlp", "--input-shape", "4", "-n", "3", "--repeats", "3",
                     "--db", str(db)]) == 0  # fmt: skip
        with MeasurementStore(db, create=False) as store:
            rows = store.rows()
        assert len(rows) == 3 and {r.device for r in rows} == {device}
        assert all(r.extra["where"] == device and r.median > 0 for r in rows)
        served = sum("load_module" in (tmp_path / f"server{i}.log").read_text() for i in range(2))
        assert served >= 1
        # a key no server registered: a clear error, no row written
        code = main(["measure", "run", "-p", "host_cpu", "--runtime", "tvm", "--device",
                     f"tracker://{tracker}/nokey", ARCH.to_json(), "--db", str(db)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "no free device under key 'nokey'" in err
        with MeasurementStore(db, create=False) as store:
            assert len(store.rows()) == 3
        if shutil.which("aarch64-linux-gnu-gcc"):  # an aarch64 library on an x86-64 "board"
            code = main(["measure", "run", "-p", "cortex_a", "--runtime", "tvm", "--device",
                         device, ARCH.to_json(), "--db", str(db)])  # fmt: skip
            err = capsys.readouterr().err
            if hostinfo.cpu_info().machine != "aarch64":
                assert code == 2 and "could not load" in err and "architecture" in err, err
    finally:
        for p in procs:
            stop(p)


def test_unreachable_tracker_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("tvm")
    code = main(["measure", "run", "-p", "host_cpu", "--runtime", "tvm", "--device",
                 f"tracker://127.0.0.1:{free_port()}/k", ARCH.to_json(),
                 "--db", str(tmp_path / "m.sqlite")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the tracker" in err and "Traceback" not in err


@pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="needs qemu-system-arm and gcc-arm-none-eabi (Debian packages)",
)
def test_qemu_plan_calibrates_latency_and_flash(tmp_path, capsys):
    """Emulated measurements are labelled so, and the linked ELF sizes calibrate flash."""
    db = tmp_path / "q.sqlite"
    argv = ["measure", "run", "-p", "cortex_m", "--space", "mlp", "--input-shape", "8",
            "--output-size", "1", "-n", "12", "--repeats", "3", "--db", str(db)]  # fmt: skip
    assert main(argv) == 0
    with MeasurementStore(db, create=False) as store:
        rows = store.rows()
    assert len(rows) == 12
    assert {(r.runtime, r.origin, r.unit) for r in rows} == {("qemu", "emulated", "instructions")}
    assert all(r.extra["bit_exact"] and r.extra["model_sizes"]["flash_bytes"] > 0 for r in rows)
    lat = tmp_path / "cm_lat.yaml"
    assert main(["calibrate", "-p", "cortex_m", "--db", str(db), "--fit", "6",
                 "--out", str(lat)]) == 0  # fmt: skip
    both = tmp_path / "cm_both.yaml"
    assert main(["calibrate", "-p", str(lat), "--db", str(db), "--fit", "6", "--role", "flash",
                 "--out", str(both)]) == 0  # fmt: skip
    p = load_platform(both)
    assert p.calibration.origin == "emulated" and "not device time" in (p.calibration.source or "")
    assert p.calibration.flash and p.calibration.flash["residuals"]["held_out_nets"] == 6
    assert p.cost_models["flash"].params["per_layer_bytes"]["kind"] == "measured"
    assert p.cost_models["latency"].params["overhead_cycles_per_output"]["kind"] == "measured"
    # the flash fit predicts the held-out linked sizes better than the datasheet-derived model
    flash = build_models(p)["flash"]
    before = build_models(load_platform("cortex_m"))["flash"]
    t = layer_table_many([r.arch for r in rows])
    y = np.array([r.extra["model_sizes"]["flash_bytes"] for r in rows], float)
    assert np.median(np.abs(flash.total(t) / y - 1)) < np.median(np.abs(before.total(t) / y - 1))
    capsys.readouterr()
    assert main(["select", "-p", str(both), "-n", "300"]) == 0
    assert "latency model calibrated" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("column", "value", "expect"),
    [("samples", "garbage", "'samples' is not JSON"),
     ("samples", '{"a": 1}', "'samples' must hold a JSON list"),
     ("median", "abc", "'median' must be a number"),
     ("versions", "[1", "'versions' is not JSON")],
)  # fmt: skip
def test_a_tampered_measurement_cell_is_named_not_a_traceback(
    tmp_path, capsys, column, value, expect
):
    db = tmp_path / "m.sqlite"
    with MeasurementStore(db) as store:
        i = store.add(_row())
    con = sqlite3.connect(db)
    con.execute(f"UPDATE measurements SET {column} = ? WHERE id = ?", (value, i))
    con.commit()
    con.close()
    with MeasurementStore(db) as store, pytest.raises(MeasurementError) as exc:
        store.rows()
    assert f"measurement {i} is corrupt" in str(exc.value) and expect in str(exc.value)
    assert main(["measure", "show", "--db", str(db)]) == 2
    assert expect in capsys.readouterr().err
    assert main(["measure", "show", "--db", str(db), "--id", str(10**30)]) == 2
    assert "no measurement with id" in capsys.readouterr().err


def test_calibrate_refuses_to_overwrite_the_platform_it_calibrates(tmp_path, capsys):
    src = Path(__file__).resolve().parents[1] / "platforms" / "host_cpu.yaml"
    plat = tmp_path / "hc.yaml"
    plat.write_text(src.read_text())
    before = plat.read_text()
    db = tmp_path / "m.sqlite"
    MeasurementStore(db).close()
    argv = ["calibrate", "-p", str(plat), "--out", str(plat), "--db", str(db)]
    assert main(argv) == 2
    assert "is the platform file being calibrated" in capsys.readouterr().err
    assert plat.read_text() == before


def test_export_with_a_filter_that_matches_nothing_lists_what_is_there(tmp_path, capsys):
    db = tmp_path / "m.sqlite"
    with MeasurementStore(db) as store:
        store.add(_row())
    out = tmp_path / "m.csv"
    assert main(["measure", "export", "--db", str(db), "--csv", str(out), "-p", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no measurements match platform='nope'" in err and "p / host:x / c" in err
    assert not out.exists()
    assert main(["measure", "export", "--db", str(db), "--csv", str(out)]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
