"""End-to-end tests of `inag sample` and `inag dataset info|export` through the real CLI."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from inag.cli import main

TINY = ["--epochs", "2", "--restarts", "1", "--chunk", "6", "--workers", "1"]


def sample_args(db: Path, n: int = 12, *extra: str) -> list[str]:
    return ["sample", "--task", "data_a", "--n", str(n), "--db", str(db), *TINY, *extra]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "runs" / "a.sqlite"
    assert main(sample_args(path)) == 0
    return path


def test_sample_builds_then_resumes(db, capsys):
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 12
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert main(sample_args(db)) == 0
    out = capsys.readouterr().out
    assert f"{db}: 12/12 nets (0 trained now" in out
    assert main(sample_args(db, 14)) == 0  # grow
    assert "14/14 nets (2 trained now" in capsys.readouterr().out


def test_sample_reports_progress(tmp_path, capsys):
    assert main(sample_args(tmp_path / "p.sqlite", 6)) == 0
    cap = capsys.readouterr()
    assert "6/6 nets (6 trained now" in cap.out
    assert "training" in cap.err and "nets/s" in cap.err  # the rich progress bar, on stderr


def test_dataset_info(db, capsys):
    assert main(["dataset", "info", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"{db}: task data_a (regression, input shape 1, 1 output(s)), space mlp" in out
    assert "rows: " in out and "performance quantiles: q0=" in out
    for key in ("depth coverage", "width coverage", "bits coverage", "trainer:"):
        assert key in out
    assert main(["dataset", "info", str(db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    total = info["counts"]["ok"] + info["counts"]["failed"]
    assert total >= 12 and info["trainer"]["epochs"] == 2
    assert info["task_kind"] == "regression" and info["input_shape"] == [1]
    assert info["output_size"] == 1
    assert set(info["performance_quantiles"]) >= {"0.0", "0.5", "1.0"}


def test_dataset_export_csv(db, tmp_path, capsys):
    out_csv = tmp_path / "x" / "rows.csv"
    assert main(["dataset", "export", str(db), "--csv", str(out_csv)]) == 0
    msg = capsys.readouterr().out
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert f"wrote {len(rows)} rows to {out_csv}" in msg
    assert len(rows) >= 12
    assert {"sample_index", "arch_id", "status", "performance", "widths", "bits"} <= set(rows[0])
    assert len({r["arch_id"] for r in rows}) == len(rows)


def test_refused_db_exits_2(db, capsys):
    code = main(sample_args(db, 12, "--lr", "0.05"))
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "trainer configuration" in err and "use another --db" in err
    assert main(["sample", "--task", "data_b", "--n", "3", "--db", str(db), *TINY]) == 2
    assert "built with task 'data_a', not 'data_b'" in capsys.readouterr().err


def test_missing_db_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.sqlite"
    assert main(["dataset", "info", str(missing)]) == 2
    assert f"no dataset at {missing}" in capsys.readouterr().err
    assert main(["dataset", "export", str(missing), "--csv", str(tmp_path / "o.csv")]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "o.csv").exists()


def test_not_a_dataset_exits_2(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("hello, not sqlite\n" * 200)
    assert main(["dataset", "info", str(junk)]) == 2
    assert "not an INAG dataset" in capsys.readouterr().err


def test_unknown_task_lists_available(tmp_path, capsys):
    db = tmp_path / "t.sqlite"
    assert main(["sample", "--task", "nonsense", "--n", "3", "--db", str(db), *TINY]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nonsense'" in err
    for name in ("data_a", "data_b", "digits", "diabetes", "mnist:DIR", "csv:FILE.csv"):
        assert name in err
    assert not db.exists()  # nothing is created for a task that does not load


def test_bad_backend_exits_2(tmp_path, capsys):
    code = main(sample_args(tmp_path / "b.sqlite", 3, "--backend", "spark"))
    assert code == 2
    assert "--backend must be 'local' or 'ray'" in capsys.readouterr().err


def test_engine_is_recorded_and_either_resumes(tmp_path, capsys):
    """Rows record the trainer engine that ran; the engine is not part of the trainer
    hash, so a build begun with one engine resumes with the other."""
    from inag.train import kernels

    db = tmp_path / "e.sqlite"
    assert main(sample_args(db, 3, "--engine", "torch")) == 0
    first = "c" if kernels.available() else "torch"
    assert main(sample_args(db, 5, "--engine", "auto")) == 0
    con = sqlite3.connect(db)
    engines = [
        json.loads(v)["trainer_engine"] for (v,) in con.execute("SELECT versions FROM runs")
    ]
    con.close()
    assert sorted(engines) == sorted(["torch"] * 3 + [first] * 2)
    capsys.readouterr()
    assert main(sample_args(tmp_path / "x.sqlite", 3, "--engine", "cuda")) == 2
    assert "unknown trainer engine 'cuda'; available: auto, c, torch" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


def test_restart_score_is_recorded_and_checked(tmp_path, capsys):
    """The default label is the mean over restarts; 'best' is another recipe (another trainer
    hash), so resuming a mean-built DB with --restart-score best is refused, not mixed."""
    db = tmp_path / "r.sqlite"
    assert main(sample_args(db, 3)) == 0
    capsys.readouterr()
    assert main(["dataset", "info", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainer"]["restart_score"] == "mean"
    assert main(sample_args(db, 3, "--restart-score", "best")) == 2
    assert "trainer configuration" in capsys.readouterr().err
    assert main(sample_args(tmp_path / "x.sqlite", 3, "--restart-score", "median")) == 2
    assert "restart_score must be 'best' or 'mean', found 'median'" in capsys.readouterr().err


def test_sample_as_a_subprocess(tmp_path):
    """The installed entry point, in its own process: exit codes and streams as a user sees."""
    db = tmp_path / "sub.sqlite"
    cmd = [sys.executable, "-m", "inag.cli", *sample_args(db, 4)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "4/4 nets (4 trained now" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "inag.cli", *sample_args(db, 4, "--epochs", "3")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "trainer configuration" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_dataset_info_shows_the_task_shape_and_the_space_input(tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    assert main(["sample", "--task", "digits", "-n", "2", "--db", str(db), "--epochs", "1",
                 "--restarts", "1", "--workers", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["dataset", "info", str(db)]) == 0
    assert "input shape 1x8x8, mlp space input 64" in capsys.readouterr().out
    assert main(["dataset", "info", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task_input_shape"] == [1, 8, 8]


def test_sample_refuses_a_cnn_space_on_tabular_data_before_any_work(tmp_path, capsys):
    db = tmp_path / "d.sqlite"
    assert main(["sample", "--task", "data_a", "--space", "cnn", "-n", "2", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "needs (C, H, W) image input" in err and "training" not in err
    assert not db.exists()


@pytest.mark.parametrize(("space", "restarts"), [("mlp", 16), ("cnn", 4)])
def test_sample_default_restarts_follow_the_space(tmp_path, capsys, space, restarts):
    """Without --restarts a CNN dataset takes 4 restarts (as repeatable as the MLPs' 16, at a
    quarter of the cost); an explicit --restarts wins."""
    db = tmp_path / "d.sqlite"
    base = ["sample", "--task", "digits", "--space", space, "-n", "1", "--db", str(db),
            "--epochs", "1", "--workers", "1"]  # fmt: skip
    assert main(base) == 0
    capsys.readouterr()
    assert main(["dataset", "info", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainer"]["restarts"] == restarts
    other = tmp_path / "e.sqlite"
    assert main([*base[:8], str(other), *base[9:], "--restarts", "2"]) == 0
    capsys.readouterr()
    assert main(["dataset", "info", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainer"]["restarts"] == 2
    resume = [*base[:6], "2", *base[7:8], str(other), *base[9:]]  # 2 rows, no --restarts
    assert main(resume) == 0, capsys.readouterr().err
    assert "2/2 nets (1 trained now" in capsys.readouterr().out


def test_sample_refuses_a_space_whose_largest_net_cannot_be_trained(tmp_path, capsys):
    """65536-channel convs load as a space, but training its largest net would take terabytes:
    refused before any training, naming the net and the memory."""
    from importlib import resources

    text = resources.files("inag").joinpath("spaces/cnn.yaml").read_text()
    assert "channels: [4, 8, 16, 24, 32]" in text
    space = tmp_path / "huge.yaml"
    space.write_text(text.replace("channels: [4, 8, 16, 24, 32]", "channels: [65536]"))
    db = tmp_path / "h.sqlite"
    args = ["sample", "--task", "digits", "--space", str(space), "-n", "2", "--db", str(db)]
    assert main([*args, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "too large to train here" in err and "c65536k5" in err and "GiB" in err
