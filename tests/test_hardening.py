"""Hostile and careless input across the CLI (issue 16): every malformed file, output path and
argument gets the one-paragraph ``error: ...`` and exit code 2 -- no traceback, no hang, no
silent wrong answer -- and the message names the file or the field.

A generated corpus of malformed files (bad encodings, duplicate keys, alias bombs, deep nesting,
huge integers, wrong types, crafted artifacts, bad output paths) plus hypothesis strategies over
the same surfaces. Runs in-process through ``inag.cli.main``; the cases that used to hang also
run as subprocesses with a timeout.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inag.cli import main
from inag.safe_io import (
    InputError,
    atomic_write_text,
    check_writable,
    load_json,
    load_yaml,
    read_text,
)

ROOT = Path(__file__).resolve().parents[1]
INAG = [sys.executable, "-c", "import sys; from inag.cli import main; sys.exit(main())"]

GOOD_SPACE = {
    "schema_version": 1,
    "name": "tiny",
    "kind": "mlp",
    "bits": [2, 4, 8],
    "dense": {"min_depth": 1, "max_depth": 2, "widths": [4, 8]},
    "input_shape": [1],
    "output_size": 1,
    "output_bits": 8,
}
GOOD_ARCH = {
    "kind": "mlp",
    "input_shape": [1],
    "output_size": 1,
    "output_bits": 8,
    "layers": [{"width": 8, "bits": 4}],
}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, one paragraph starting with 'error:', no traceback, every needle named."""
    assert code == 2, err
    assert "Traceback" not in err, err
    text = err.strip().splitlines()[-1] if err.strip() else ""
    assert text.startswith("error: "), err
    for n in needles:
        assert n.lower() in text.lower(), (n, err)


def space_text(**changes: object) -> str:
    return yaml.safe_dump({**GOOD_SPACE, **changes}, sort_keys=False)


def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- corpus: spaces
SPACE_CORPUS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "utf16": (space_text().encode("utf-16"), ("utf16.yaml", "UTF-8", "0xff 0xfe", "UTF-16")),
    "utf16_nobom": (space_text().encode("utf-16-le"), ("UTF-8", "NUL")),
    "latin1": ((space_text() + "description: caf\xe9\n").encode("latin-1"), ("0xe9", "UTF-8")),
    "binary": (bytes(range(256)) * 4, ("binary.yaml", "NUL")),
    "duplicate_key": (
        (space_text() + "bits: [2, 3]\n").encode(),
        ("duplicate key 'bits'", "on lines 4 and 18"),
    ),
    "duplicate_nested": (
        b"schema_version: 1\nkind: mlp\ndense:\n  max_depth: 2\n  max_depth: 3\n",
        ("duplicate key 'max_depth'", "lines 4 and 5"),
    ),
    "alias_bomb": (alias_bomb().encode(), ("alias_bomb.yaml", "alias")),
    "recursive_alias": (b"a: &a [1, *a]\n", ("recursive",)),
    "deep_flow": (b"[" * 5000 + b"]" * 5000, ("deep_flow.yaml", "nested")),
    "deep_block": ("".join(" " * i + "a:\n" for i in range(200)).encode(), ("nested",)),
    "huge_int": (space_text(output_size=int("9" * 4000)).encode(), ("digits",)),
    "huge_hex": (("output_size: 0x" + "f" * 600 + "\n").encode(), ("digits",)),
    "depth_is_string": (
        space_text(dense={"min_depth": 1, "max_depth": "2", "widths": [4]}).encode(),
        ("max_depth",),
    ),
    "min_dpeth": (
        space_text(dense={"min_dpeth": 1, "max_depth": 2, "widths": [4]}).encode(),
        ("min_dpeth", "min_depth", "max_depth", "widths"),
    ),
    "output_bitz": (space_text(output_bitz=4).encode(), ("output_bitz", "output_bits")),
    "output_bits_str": (space_text(output_bits="eight").encode(), ("output_bits",)),
    "output_bits_float": (space_text(output_bits=7.5).encode(), ("output_bits",)),
    "name_list": (space_text(name=[1, 2]).encode(), ("name",)),
    "bool_depth": (
        space_text(dense={"min_depth": True, "max_depth": 2, "widths": [4]}).encode(),
        ("min_depth",),
    ),
    "absurd_depth": (
        space_text(dense={"min_depth": 1, "max_depth": 10**9, "widths": [4]}).encode(),
        ("max_depth", "64"),
    ),
    "many_widths": (
        space_text(dense={"max_depth": 2, "widths": list(range(1, 5000))}).encode(),
        ("widths", "choices"),
    ),
    "huge_input": (space_text(input_shape=[1 << 20, 1 << 20]).encode(), ("input_shape",)),
    "huge_output": (space_text(output_size=10**12).encode(), ("output_size",)),
    "cnn_huge_side": (
        yaml.safe_dump(
            {
                **GOOD_SPACE,
                "kind": "cnn",
                "conv": {"max_depth": 2, "channels": [4], "kernels": [3]},
                "dense": {"max_depth": 1, "widths": [4]},
                "input_shape": [1, 2000, 2000],
            }
        ).encode(),
        ("input_shape", "1024"),
    ),
    "not_mapping": (b"- 1\n- 2\n", ("mapping",)),
    "empty": (b"", ("mapping",)),
    "syntax": (b"kind: mlp\nbits: [2, 3\n", ("malformed YAML",)),
    "tab_indent": (b"kind: mlp\n\tbits: [2]\n", ("malformed YAML",)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(SPACE_CORPUS))
def test_malformed_space_files(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, needles = SPACE_CORPUS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(data)
    for argv in (["space", "info", "--space", path], ["space", "sample", "--space", path]):
        code, _, err = run(capsys, *argv)
        assert_error(code, err, *needles)


def test_space_path_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "space", "info", "--space", tmp_path)
    assert_error(code, err, str(tmp_path), "directory")


def test_space_info_prints_a_huge_but_valid_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(space_text(dense={"max_depth": 64, "widths": list(range(1, 257))}))
    code, out, err = run(capsys, "space", "info", "--space", path)
    assert code == 0, err
    assert "e+" in out and "encoding length 192" in out


def test_alias_bomb_and_absurd_depth_do_not_hang_as_a_process(tmp_path: Path) -> None:
    for name, text in (
        ("bomb.yaml", alias_bomb(12)),
        ("deep.yaml", space_text(dense={"min_depth": 1, "max_depth": 10**12, "widths": [4]})),
    ):
        path = tmp_path / name
        path.write_text(text)
        proc = subprocess.run(
            [*INAG, "space", "info", "--space", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert_error(proc.returncode, proc.stderr, name)
        assert len(proc.stderr) < 2000  # the expanded value is never formatted


# ---------------------------------------------------------------------------- corpus: arch JSON
ARCH_CORPUS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "utf16": (json.dumps(GOOD_ARCH).encode("utf-16"), ("utf16.json", "UTF-16")),
    "latin1": (b'{"kind": "ml\xe9"}', ("latin1.json", "0xe9")),
    "nul": (b'{"kind": "mlp"}\x00\x00', ("NUL",)),
    "deep": (b"[" * 100000 + b"]" * 100000, ("nested",)),
    "deep_object": (b'{"a":' * 3000 + b"1" + b"}" * 3000, ("nested",)),
    "huge_int": (
        json.dumps(GOOD_ARCH).replace('"output_size": 1', '"output_size": ' + "7" * 5000).encode(),
        ("digits",),
    ),
    "empty": (b"\n\n", ("empty",)),
    "not_json": (b"kind: mlp\n", ("not valid JSON",)),
    "width_string": (
        json.dumps({**GOOD_ARCH, "layers": [{"width": "8", "bits": 4}]}).encode(),
        ("width",),
    ),
    "bits_nan": (b'{"kind": "mlp", "input_shape": [1], "output_size": 1, "layers": '
                 b'[{"width": 8, "bits": NaN}]}', ("bits",)),
    "lines_bad_second": (
        (json.dumps(GOOD_ARCH) + "\n" + "[" * 500 + "\n").encode(),
        ("line 2",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ARCH_CORPUS))
def test_malformed_arch_files(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, needles = ARCH_CORPUS[case]
    path = tmp_path / f"{case}.json"
    path.write_bytes(data)
    code, _, err = run(capsys, "cost", path, "--json")
    assert_error(code, err, *needles)


def test_arch_path_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cost", tmp_path)
    assert_error(code, err, str(tmp_path), "directory")


def test_selection_json_for_export_is_read_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.errors import ExportError
    from inag.cli.export import read_arch

    for name, data, needle in (
        ("utf16.json", json.dumps({"selected": []}).encode("utf-16"), "UTF-16"),
        ("deep.json", b"[" * 10000 + b"]" * 10000, "nested"),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ExportError, match=needle):
            read_arch(f"{path}#1")


# ---------------------------------------------------------------------------- corpus: task files
def _csv_cases() -> dict[str, tuple[bytes, tuple[str, ...]]]:
    good = "x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(20))
    return {
        "utf16": (good.encode("utf-16"), ("utf16.csv", "UTF-16")),
        "latin1": (("x,y,caf\xe9\n" + good).encode("latin-1"), ("latin1.csv", "0xe9")),
        "binary": (bytes(range(256)), ("binary.csv", "NUL")),
    }


@pytest.mark.parametrize("case", sorted(_csv_cases()))
def test_malformed_csv_tasks(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, needles = _csv_cases()[case]
    path = tmp_path / f"{case}.csv"
    path.write_bytes(data)
    db = tmp_path / "d.sqlite"
    code, _, err = run(capsys, "sample", "--task", f"csv:{path}?target=y", "-n", 2, "--db", db)
    assert_error(code, err, *needles)
    assert not db.exists()


def _write_mnist(folder: Path, images: bytes, labels: bytes) -> None:
    folder.mkdir()
    for split, n in (("train", 4), ("t10k", 2)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(images)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">iI", 2049, n) + bytes(n))
    del labels


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("case", "needle"),
    [("gzip_expands_beyond_header", "more bytes"), ("header_claims_terabytes", "accepted")],
)
def test_mnist_gzip_bombs(
    case: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case == "gzip_expands_beyond_header":
        images = gzip.compress(struct.pack(">iIII", 2051, 4, 2, 2) + bytes(64 << 20))
    else:
        images = gzip.compress(struct.pack(">iIII", 2051, 10**9, 1000, 1000) + bytes(16))
    folder = tmp_path / "mnist"
    _write_mnist(folder, images, b"")
    code, _, err = run(capsys, "sample", "--task", f"mnist:{folder}", "-n", 2, "--db",
                       tmp_path / "d.sqlite")  # fmt: skip
    assert_error(code, err, "train-images-idx3-ubyte.gz", needle)


# ---------------------------------------------------------------------------- corpus: .nagan
def _craft_nagan(
    dest: Path,
    meta_edit: Callable[[dict[str, str]], None] = lambda m: None,
    tensor_edit: Callable[[dict], None] = lambda t: None,
    rehash: bool = True,
) -> Path:
    """A copy of the bundled data_a generator, edited, with its hashes recomputed (a crafted
    file, not a corrupt one: only the semantic checks can refuse it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from inag.nagan import _content_hash, _meta_hash, bundled_models

    src = bundled_models()["data_a"]
    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(str(src))
    tensor_edit(tensors)
    meta_edit(meta)
    if rehash:
        meta["content_sha256"] = _content_hash(tensors)
        if "meta_sha256" in meta:
            meta["meta_sha256"] = _meta_hash(meta)
    save_file(tensors, str(dest), metadata=meta)
    return dest


def _set(key: str, value: str) -> Callable[[dict[str, str]], None]:
    return lambda m: m.__setitem__(key, value)


def _config(**changes: object) -> Callable[[dict[str, str]], None]:
    def edit(m: dict[str, str]) -> None:
        m["config"] = json.dumps({**json.loads(m["config"]), **changes})

    return edit


def _nan_weight(tensors: dict) -> None:
    name = next(k for k in sorted(tensors) if k.startswith("generator"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")


NAGAN_CORPUS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "no_meta_hash": (
        {"meta_edit": lambda m: (m.pop("meta_sha256"), m.__setitem__("p_min", "-5.0"))},
        ("meta_sha256",),
    ),
    "p_range_zero": ({"meta_edit": _set("p_range", "0.0")}, ("p_range",)),
    "p_range_negative": ({"meta_edit": _set("p_range", "-1.0")}, ("p_range",)),
    "p_range_nan": ({"meta_edit": _set("p_range", "nan")}, ("p_range",)),
    "p_min_inf": ({"meta_edit": _set("p_min", "inf")}, ("p_min",)),
    "p_min_text": ({"meta_edit": _set("p_min", "low")}, ("metadata",)),
    "terabyte_config": ({"meta_edit": _config(enc_hidden=10**7)}, ("enc_hidden",)),
    "huge_latent": ({"meta_edit": _config(latent_dim=2**40)}, ("latent_dim",)),
    "config_type": ({"meta_edit": _config(g_hidden="128")}, ("g_hidden",)),
    "config_unknown": ({"meta_edit": _config(g_hiden=128)}, ("g_hiden",)),
    "huge_ensemble": ({"meta_edit": _config(ensemble=10**6)}, ("config.ensemble",)),
    "one_member": ({"meta_edit": _config(ensemble=1)}, ("config.ensemble",)),
    "ensemble_without_scale": (
        {"meta_edit": lambda m: m.__setitem__("info", json.dumps(
            {k: v for k, v in json.loads(m["info"]).items() if k != "interval"}))},
        ("kappa",),
    ),
    "deep_info": ({"meta_edit": _set("info", "[" * 5000 + "]" * 5000)}, ("nested",)),
    "huge_int_space": (
        {"meta_edit": lambda m: m.__setitem__("space", m["space"].replace(
            '"output_size": 1', '"output_size": ' + "9" * 5000))},
        ("digits",),
    ),
    "space_typo": (
        {"meta_edit": lambda m: m.__setitem__("space", m["space"].replace(
            '"output_bits"', '"output_bitz"'))},
        ("output_bitz",),
    ),
    "nan_weights": ({"tensor_edit": _nan_weight}, ("NaN",)),
    "not_rehashed": ({"meta_edit": _set("p_min", "0.5"), "rehash": False}, ("hash",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NAGAN_CORPUS))
def test_crafted_nagan_artifacts(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs, needles = NAGAN_CORPUS[case]
    path = _craft_nagan(tmp_path / f"{case}.nagan", **kwargs)
    code, _, err = run(capsys, "generate", "--model", path, "--condition", 0.5, "-n", 5)
    assert_error(code, err, f"{case}.nagan", *needles)


def test_nagan_is_a_directory_or_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "g.nagan"
    garbage.write_bytes(b"\xff" * 64)
    for model in (tmp_path, garbage):
        code, _, err = run(capsys, "generate", "--model", model, "--condition", 0.5)
        assert_error(code, err, str(model))


# ---------------------------------------------------------------------------- output paths
def _bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    ro = tmp_path / "readonly.json"
    ro.write_text("keep me\n")
    ro.chmod(0o444)
    afile = tmp_path / "afile"
    afile.write_text("x")
    return {
        "directory": (tmp_path, "directory"),
        "readonly": (ro, "read-only"),
        "proc": (Path("/proc/inag-out.json"), "/proc"),
        "sys": (Path("/sys/inag/out.json"), "/sys"),
        "parent_is_a_file": (afile / "out.json", "not a directory"),
    }


def _output_commands(tmp_path: Path) -> dict[str, Callable[[Path], list[object]]]:
    db = tmp_path / "none.sqlite"
    return {
        "select --json": lambda p: ["select", "--json", p],
        "select --plot": lambda p: ["select", "--plot", p],
        "generate --out": lambda p: ["generate", "--model", "data_a", "--condition", 0.5,
                                     "--out", p],
        "dataset export --csv": lambda p: ["dataset", "export", db, "--csv", p],
        "sample --db": lambda p: ["sample", "--db", p, "-n", 2],
        "train --out": lambda p: ["train", "--db", db, "--out", p],
        "baseline --json": lambda p: ["baseline", "--method", "ga", "--evaluator", "encoder",
                                      "--model", "data_a", "--budget-evals", 5, "--json", p],
    }  # fmt: skip


@pytest.mark.timeout(120)
def test_bad_output_paths_fail_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    outs = _bad_outputs(tmp_path)
    for command, argv in _output_commands(tmp_path).items():
        for case, (path, needle) in outs.items():
            t0 = time.perf_counter()
            code, _, err = run(capsys, *argv(path))
            assert_error(code, err, needle)
            assert str(path) in err or needle in ("/proc", "/sys"), (command, case, err)
            assert time.perf_counter() - t0 < 10, (command, case)  # refused before the work
    assert (tmp_path / "readonly.json").read_text() == "keep me\n"
    assert not (tmp_path / "none.sqlite").exists()


def test_evaluate_out_dir_is_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, needle in ((afile, "not a directory"), (Path("/proc/inag-report"), "/proc")):
        code, _, err = run(capsys, "evaluate", "--model", "data_a", "--out", out)
        assert_error(code, err, needle)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    from inag.safe_io import atomic_open

    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    atomic_write_text(tmp_path / "new" / "b.txt", "new")
    assert (tmp_path / "new" / "b.txt").read_text() == "new"


def test_check_writable_accepts_new_files_under_missing_dirs(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "x" / "y" / "z.json", "it") == tmp_path / "x" / "y" / "z.json"
    assert not (tmp_path / "x").exists()  # checking creates nothing


# ---------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["select", "--step", "0"], ("--step",)),
        (["select", "--step", "-0.1"], ("--step",)),
        (["select", "--step", "nan"], ("--step",)),
        (["select", "--floor", "2"], ("--floor",)),
        (["select", "--perf", "2.0"], ("--perf", "range")),
        (["select", "--perf", "-7"], ("--perf", "range")),
        (["select", "--condition", "100"], ("--condition", "[0, 1]")),
        (["select", "--condition", "-0.2"], ("--condition", "[0, 1]")),
        (["select", "--condition", "nan"], ("--condition",)),
        (["select", "-n", "100000000"], ("-n", "memory", "GB")),
        (["generate", "--model", "data_a", "--condition", "0.5", "-n", "100000001"],
         ("-n", "GB of JSON lines", "424 bytes per architecture", "memory")),
        (["select", "-n", "1000001"], ("-n", "1.1 GB", "1.2 KB per generated architecture")),
        (["generate", "--model", "data_a", "--perf", "5"], ("--perf", "range")),
        (["generate", "--model", "data_a", "--condition", "1.2"], ("--condition",)),
        (["sample", "--workers", "0", "-n", "2"], ("--workers",)),
        (["sample", "--workers", "-3", "-n", "2"], ("--workers",)),
        (["train", "--db", "x.sqlite", "--out", "x.nagan", "--limit", "-5"], ("--limit",)),
    ],
)  # fmt: skip
def test_bad_arguments(
    argv: list[str],
    needles: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert_error(code, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_select_step_zero_does_not_hang_as_a_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*INAG, "select", "--step", "0", "--condition", "1.0", "--max-storage", "0.000001"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert_error(proc.returncode, proc.stderr, "--step")


def test_two_platforms_with_one_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = (ROOT / "inag" / "platforms" / "cortex_m.yaml").read_text()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(src)
    b.write_text(src)
    code, _, err = run(capsys, "select", "-p", a, "-p", b, "-n", 50)
    assert_error(code, err, "cortex_m", "a.yaml", "b.yaml")
    code, _, err = run(capsys, "select", "-p", "cortex_m", "-p", "cortex_m", "-n", 50)
    assert_error(code, err, "cortex_m")


# ---------------------------------------------------------------------------- foreign SQLite
@pytest.mark.parametrize(
    "argv",
    [
        lambda db, out: ["dataset", "info", db],
        lambda db, out: ["dataset", "export", db, "--csv", out / "o.csv"],
        lambda db, out: ["train", "--db", db, "--out", out / "m.nagan"],
        lambda db, out: ["sample", "--db", db, "-n", 2],
    ],
)
def test_foreign_sqlite_is_refused_untouched(
    argv: Callable[[Path, Path], list[object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "contacts.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.execute("INSERT INTO people VALUES ('ada')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    code, _, err = run(capsys, *argv(db, tmp_path))
    assert_error(code, err, "contacts.sqlite", "not an INAG dataset", "people")
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.sqlite"]  # no -wal, no -shm
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
    conn.close()


def test_not_sqlite_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "junk.sqlite"
    db.write_bytes(b"\x00\xff" * 600)
    for argv in (["dataset", "info", db], ["train", "--db", db, "--out", tmp_path / "m.nagan"]):
        code, _, err = run(capsys, *argv)
        assert_error(code, err, "junk.sqlite", "not an INAG dataset")


# ---------------------------------------------------------------------------- readers, directly
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: 1\nb:\n  c: 1\n  c: 2\n", "duplicate key 'c' on lines 3 and 4"),
        (alias_bomb(), "alias"),
        ("x: " + "1" * 101, "101 digits"),
        ("[" * 70 + "]" * 70, "nested"),
        ("a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40, "nest"),
    ],
)
def test_load_yaml_refusals(text: str, needle: str) -> None:
    with pytest.raises(InputError, match="src.yaml") as info:
        load_yaml(text, "src.yaml")
    assert needle in str(info.value)
    assert len(str(info.value)) < 600


def test_load_yaml_keeps_merge_keys_and_small_aliases() -> None:
    data = load_yaml("base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\nl: [*b, *b]\n", "ok.yaml")
    assert data == {"base": {"x": 1}, "d": {"x": 1, "y": 2}, "l": [{"x": 1}, {"x": 1}]}
    assert load_yaml("n: " + "9" * 100, "ok.yaml") == {"n": int("9" * 100)}


def test_load_json_refusals_and_strings_with_brackets() -> None:
    assert load_json('{"a": "[[[[{{{{' + "[" * 100 + '"}', "s") == {"a": "[[[[{{{{" + "[" * 100}
    with pytest.raises(InputError, match="digits"):
        load_json("[" + "1" * 200 + "]", "s")
    with pytest.raises(InputError, match="nested"):
        load_json('{"a": ' * 65 + "1" + "}" * 65, "s")


def test_read_text_refuses_large_files_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.truncate(10 << 20)  # sparse: nothing is written or read
    with pytest.raises(InputError, match="big.yaml.*more than the 1,024 accepted"):
        read_text(path, "a YAML file", max_bytes=1024)


def test_read_text_refuses_devices_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        read_text("/dev/zero", "a YAML file")
    with pytest.raises(InputError, match="no such file"):
        read_text(tmp_path / "missing.yaml", "a YAML file")


# ---------------------------------------------------------------------------- hypothesis
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
SPACE_KEYS = [*GOOD_SPACE, "conv", "min_dpeth", "widths", "max_depth", "junk"]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _clean(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("error: "), err


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(["utf-16", "latin-1", "utf-32"]).map(
            lambda enc: space_text(description="c\xe9").encode(enc)
        ),
    )
)
def test_fuzz_space_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    _clean(*run(capsys, "space", "info", "--space", path)[::2])


@FUZZ
@given(st.dictionaries(st.sampled_from(SPACE_KEYS), JSONISH, max_size=6), st.booleans())
def test_fuzz_space_structure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, merge: bool
) -> None:
    data = {**GOOD_SPACE, **changes} if merge else changes
    dense = changes.get("dense")
    if merge and isinstance(dense, dict):
        data["dense"] = {**GOOD_SPACE["dense"], **dense}
    path = tmp_path / "fuzz.yaml"
    path.write_text(json.dumps(data, allow_nan=True))  # JSON is YAML
    code, out, err = run(capsys, "space", "info", "--space", path)
    _clean(code, err)
    if code == 2:
        assert "fuzz.yaml" in err


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*GOOD_ARCH, "arch_id", "extra"]), JSONISH, max_size=5
    ),
    st.lists(st.dictionaries(st.sampled_from(["width", "bits", "kind", "pool"]), JSONISH),
             max_size=3),
)  # fmt: skip
def test_fuzz_arch_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, layers: list
) -> None:
    arch = {**GOOD_ARCH, **changes}
    if layers:
        arch["layers"] = layers
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(arch, allow_nan=True))
    code, _, err = run(capsys, "cost", path, "--json")
    assert code in (0, 1, 2), err  # 1: a budget fails
    assert "Traceback" not in err
    if code == 2:
        assert err.strip().startswith("error: ")


@FUZZ
@given(st.integers(min_value=1, max_value=200), st.sampled_from("[{"), st.booleans())
def test_fuzz_nesting_never_recurses(depth: int, bracket: str, as_yaml: bool) -> None:
    close = "]" if bracket == "[" else "}"
    inner = "1" if bracket == "[" else ""
    opener = bracket if bracket == "[" else '{"k":'
    text = opener * depth + (inner if bracket == "[" else "1") + close * depth
    loader = load_yaml if as_yaml else load_json
    try:
        loader(text, "n")
    except InputError as exc:
        assert depth > 60 and "nest" in str(exc)
    else:
        assert depth <= 64


# ------------------------------------------------------------------------ inag sample processes
SAMPLE = ["sample", "--task", "data_a", "-n", "20000", "--chunk", "8", "--workers", "2",
          "--epochs", "20", "--restarts", "1"]  # fmt: skip


def _proc_state(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a live process, None if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in "ZX" else (int(fields[1]), fields[0])


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _proc_state(int(entry.name))):
            parents[int(entry.name)] = st[0]
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sampler(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `inag sample` in its own process group; kills the whole group at the end."""
    import os
    import signal

    started: list[subprocess.Popen[str]] = []

    def start(db: Path, workers: int = 2) -> subprocess.Popen[str]:
        argv = [*SAMPLE[: SAMPLE.index("--workers") + 1], str(workers)]
        argv += SAMPLE[SAMPLE.index("--workers") + 2 :]
        proc = subprocess.Popen(
            [*INAG, *argv, "--db", str(db)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        # running: the workers started and at least one chunk committed
        need = workers if workers > 1 else 0
        _wait_for(lambda: len(_descendants(proc.pid)) >= need and _rows(db) > 0, 90, "training")
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_sample_workers_die_with_their_parent(
    sig: str, tmp_path: Path, sampler: Callable[..., subprocess.Popen[str]]
) -> None:
    """kill -9 (or SIGTERM) of the driver alone: no worker process outlives it."""
    import os
    import signal

    db = tmp_path / "d.sqlite"
    proc = sampler(db)
    workers = _descendants(proc.pid)
    os.kill(proc.pid, getattr(signal, sig))
    code = proc.wait(30)
    _wait_for(lambda: not any(_proc_state(w) for w in workers), 15, f"workers {workers} to die")
    if sig == "SIGTERM":  # a clean stop: finished chunks kept, one line, exit 128 + 15
        err = proc.stderr.read() if proc.stderr else ""
        assert code == 143, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert "interrupted by SIGTERM" in last and f"{_rows(db)}/20000 nets" in last
        assert not (tmp_path / "d.sqlite.lock").exists()
    else:
        assert code == -signal.SIGKILL


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [2, 1])
def test_sample_ctrl_c_keeps_every_finished_row(
    workers: int, tmp_path: Path, sampler: Callable[..., subprocess.Popen[str]]
) -> None:
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it): exit 130 with a
    one-line message, the finished chunks are in the file, no worker is left, and the file is
    whole. With --workers 1 the chunk training in the driver itself is interrupted at once."""
    import os
    import signal

    db = tmp_path / "d.sqlite"
    proc = sampler(db, workers)
    workers = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(30)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    kept = _rows(db)
    assert kept > 0 and kept % 8 == 0  # whole chunks only
    assert last == (
        f"{db}: interrupted by SIGINT: {kept}/20000 nets are in the dataset ({kept} trained "
        "now, every finished chunk kept); the same command resumes"
    )
    _wait_for(lambda: not any(_proc_state(w) for w in workers), 15, "workers to exit")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    indices = [r[0] for r in conn.execute("SELECT sample_index FROM runs ORDER BY 1")]
    conn.close()
    assert len(set(indices)) == kept


@pytest.mark.timeout(120)
def test_two_samplers_on_one_db_the_second_refuses(
    tmp_path: Path,
    sampler: Callable[..., subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "d.sqlite"
    first = sampler(db)
    before = _rows(db)
    code, _, err = run(capsys, *SAMPLE, "--db", db)
    assert_error(code, err, str(db), "another `inag sample`", f"pid {first.pid}", "--db")
    assert first.poll() is None and _rows(db) >= before  # the first one goes on


def test_sampler_lock_in_process(tmp_path: Path) -> None:
    import os

    from inag.dataset import DatasetError, sampler_lock

    db = tmp_path / "sub" / "d.sqlite"
    with sampler_lock(db) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(DatasetError, match=f"pid {os.getpid()}"), sampler_lock(db):
            pass
    assert not lock.exists()
    lock.write_text("12345\n")  # stale: left by a process killed with -9; flock is free
    with sampler_lock(db):
        assert lock.read_text() == f"{os.getpid()}\n"


# ---------------------------------------------------------------------------- cached C kernels
@pytest.fixture(scope="module")
def built_kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build of the kernels (in a cache of its own) that each test copies."""
    root = tmp_path_factory.mktemp("kcache")
    env = {k: v for k, v in os.environ.items() if k != "INAG_CACHE_DIR"}
    subprocess.run(
        [sys.executable, "-c", "from inag.train import kernels; kernels.library_path()"],
        env={**env, "INAG_CACHE_DIR": str(root)},
        check=False,
        timeout=120,
    )
    return root


@pytest.fixture
def kernel_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built_kernel_cache: Path
) -> Iterator[Any]:
    """The kernels module on a cache of its own (a copy of one build), with a record of what
    ctypes loads (the sha256 of the bytes behind each path it is given)."""
    import ctypes
    import hashlib
    import shutil

    from inag.train import kernels

    if not kernels.available() or not any(built_kernel_cache.rglob("*.so")):
        pytest.skip("no C compiler here")
    shutil.copytree(built_kernel_cache, tmp_path / "cache")
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path / "cache"))
    caches = (kernels.library_path, kernels.qat_library, kernels.available)
    loaded: list[str] = []
    real = ctypes.CDLL

    def recording_cdll(name: str, *args: Any, **kw: Any) -> Any:
        loaded.append(hashlib.sha256(Path(name).read_bytes()).hexdigest())
        return real(name, *args, **kw)

    monkeypatch.setattr(kernels.ctypes, "CDLL", recording_cdll)
    kernels.loaded = loaded
    for f in caches:
        f.cache_clear()
    yield kernels
    for f in caches:
        f.cache_clear()
    del kernels.loaded


def _recorded(lib: Path) -> str:
    return lib.with_name(lib.name + ".sha256").read_text().split()[0]


def test_kernel_cache_is_owner_only_and_records_the_hash(kernel_cache: Any) -> None:
    import hashlib
    import stat

    from inag.hostinfo import cache_root

    lib = kernel_cache.library_path()
    assert lib.parent == cache_root() / "kernels" == kernel_cache.cache_dir()
    assert stat.S_IMODE(lib.parent.stat().st_mode) == 0o700
    for f in (lib, lib.with_name(lib.name + ".sha256")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert _recorded(lib) == hashlib.sha256(lib.read_bytes()).hexdigest()
    kernel_cache.qat_library()
    assert kernel_cache.loaded == [_recorded(lib)]


def _tamper(lib: Path, how: str) -> None:
    side = lib.with_name(lib.name + ".sha256")
    if how == "library_bytes":
        lib.write_bytes(lib.read_bytes() + b"\x90" * 16)
    elif how == "library_replaced":
        lib.write_bytes(b"\x7fELF not the library we built")
    elif how == "recorded_hash":
        side.write_text("0" * 64 + "  x.so\n")
    elif how == "hash_missing":
        side.unlink()
    elif how == "world_writable":
        lib.chmod(0o666)
    else:
        raise AssertionError(how)


KERNEL_TAMPERING = [
    "library_bytes",
    "library_replaced",
    "recorded_hash",
    "hash_missing",
    "world_writable",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", KERNEL_TAMPERING)
def test_tampered_kernel_library_is_rebuilt_never_loaded(kernel_cache: Any, how: str) -> None:
    """Tampered before the process starts (library_path) or after it checked (qat_library):
    either way the library is rebuilt and only a verified one is loaded."""
    import hashlib

    lib = kernel_cache.library_path()
    good = hashlib.sha256(lib.read_bytes()).hexdigest()
    _tamper(lib, how)
    if how in ("library_bytes", "recorded_hash"):  # behind the cached path's back
        kernel_cache.qat_library()
    else:  # before this process looked at the cache
        kernel_cache.library_path.cache_clear()
        assert kernel_cache.library_path() == lib
        kernel_cache.qat_library()
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == _recorded(lib)
    assert kernel_cache.loaded == [_recorded(lib)]
    assert _recorded(lib) == good  # the same build again, deterministic


@pytest.mark.timeout(120)
def test_tampered_kernel_in_a_cache_we_cannot_fix_is_refused(
    kernel_cache: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cache that is not ours (root: another user owns it) or not writable (others: mode
    0500) with a tampered library: refused with a clear message; auto falls back to torch."""
    import os

    lib = kernel_cache.library_path()
    _tamper(lib, "library_bytes")
    for f in (kernel_cache.library_path, kernel_cache.qat_library, kernel_cache.available):
        f.cache_clear()
    if os.getuid() == 0:
        os.chown(lib.parent, 65534, 65534)
        needle = "belongs to uid 65534"
    else:
        lib.parent.chmod(0o500)
        needle = "not writable"
    try:
        with pytest.raises(kernel_cache.KernelUnavailable, match="refusing") as info:
            kernel_cache.qat_library()
        assert needle in str(info.value) and "INAG_CACHE_DIR" in str(info.value)
        assert not kernel_cache.available()
        assert kernel_cache.loaded == []  # ctypes never saw it
        code, _, err = run(capsys, "sample", "--engine", "c", "-n", 2, "--db",
                           lib.parent.parent.parent / "d.sqlite")  # fmt: skip
        assert_error(code, err, "refusing", needle)
    finally:
        if os.getuid() == 0:
            os.chown(lib.parent, 0, 0)
        lib.parent.chmod(0o700)


# ---------------------------------------------------------------------------- generate -n streams
def _bag_in_one_piece(model: str, c: float, n: int, seed: int) -> str:
    """What `generate` wrote before it streamed: the whole bag at once."""
    from inag.cli.nagan import bag_lines
    from inag.nagan import load_model

    m = load_model(model)
    bag = m.generate(c, n, seed=seed)
    return bag_lines(m, bag, m.estimate(bag), c)


@pytest.mark.parametrize(
    ("model", "n", "chunk"),
    [("data_a", 1, 16), ("data_a", 300, 16), ("data_a", 5000, 4096), ("digits", 333, 32)],
)
def test_generate_streams_the_same_bag(
    model: str,
    n: int,
    chunk: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inag.cli.nagan

    monkeypatch.setattr(inag.cli.nagan, "GENERATE_CHUNK", chunk)
    out = tmp_path / "bag.jsonl"
    code, _, err = run(capsys, "generate", "--model", model, "--condition", 0.7, "-n", n,
                       "--seed", 3, "--out", out)  # fmt: skip
    assert code == 0, err
    assert out.read_text() == _bag_in_one_piece(model, 0.7, n, 3)
    code, stdout, _ = run(capsys, "generate", "--model", model, "--condition", 0.7, "-n", n,
                          "--seed", 3)  # fmt: skip
    assert stdout == out.read_text()


@pytest.mark.timeout(120)
def test_generate_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    """Peak RSS of `generate -n 40000` is within 35 MB of `-n 8192` (two chunks; the
    one-piece bag needed ~2.4 KB per architecture: ~76 MB more). What grows is the set of
    distinct ids counted for the summary line, capped at 250,000."""
    code = (
        "import resource, sys; from inag.cli import main; rc = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
        "sys.exit(rc)"
    )
    peaks = []
    for n in (8192, 40_000):
        proc = subprocess.run(
            [sys.executable, "-c", code, "generate", "--model", "data_a", "--condition", "0.5",
             "-n", str(n), "--out", str(tmp_path / "bag.jsonl")],
            capture_output=True, text=True, timeout=110, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stderr.strip().splitlines()[-1]))  # KB
    assert peaks[1] - peaks[0] < 35_000, peaks


# ---------------------------------------------------------------------------- CIFAR-10 batches
def _cifar_dir(root: Path, n: int = 4) -> Path:
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


class _HugePlaceholder:
    """Pickles as numpy's own _reconstruct asked for a 10^10-element array."""

    def __reduce__(self) -> tuple:
        import numpy as np
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (100_000, 100_000), b"b"))


class _Evil:
    def __reduce__(self) -> tuple:
        return (eval, ("1 + 1",))


def _cifar_cases() -> dict[str, tuple[Callable[[Path], None], tuple[str, ...]]]:
    import pickle

    import numpy as np

    def put(obj: object) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(pickle.dumps(obj, protocol=2))

    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def sparse(p: Path) -> None:
        with p.open("r+b") as fh:
            fh.truncate(200 << 20)  # nothing is written, nothing may be read

    good = {b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8)}
    return {
        "truncated": (truncate, ("not a readable CIFAR-10 python batch", "truncated")),
        "oversized": (sparse, ("more than the", "accepted")),
        "object_array": (
            put({**good, b"data": np.array([object()] * 2, dtype=object)}),
            ("Python objects",),
        ),
        "huge_placeholder": (put({**good, b"data": _HugePlaceholder()}), ("shape",)),
        "eval_global": (
            put({**good, b"labels": _Evil()}),
            (".eval, which a CIFAR-10 batch never does", "refusing"),
        ),
        "not_a_dict": (put([1, 2, 3]), ("holds a list",)),
        "wrong_columns": (put({**good, b"data": np.zeros((2, 100), np.uint8)}), ("columns",)),
        "labels_out_of_range": (put({**good, b"labels": [1, 12]}), ("outside 0..9",)),
        "garbage": (lambda p: p.write_bytes(b"\x80\x05garbage" * 10), ("not a readable",)),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(_cifar_cases()))
def test_malformed_cifar_batches(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, needles = _cifar_cases()[case]
    folder = _cifar_dir(tmp_path)
    edit(folder / "data_batch_3")
    db = tmp_path / "d.sqlite"
    code, _, err = run(capsys, "sample", "--task", f"cifar10:{tmp_path}", "-n", 2, "--db", db)
    assert_error(code, err, "data_batch_3", *needles)
    assert not db.exists()


def test_space_sample_n_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "space", "sample", "-n", 10**9)
    assert_error(code, err, "-n 1,000,000,000", "GB of memory", "340 bytes per architecture")
    path = tmp_path / "tiny.yaml"
    path.write_text(space_text(dense={"min_depth": 1, "max_depth": 1, "widths": [4, 8]}))
    code, _, err = run(capsys, "space", "sample", "--space", path, "-n", 10**6)
    assert_error(code, err, "'tiny' holds only 6 distinct architectures", "-n 1,000,000")
    code, out, err = run(capsys, "space", "sample", "--space", path, "-n", 6)
    assert code == 0 and len(set(out.splitlines())) == 6, err


def test_generate_into_a_closed_pipe_stops_quietly() -> None:
    """`inag generate -n 200000 | head -1`: streamed, so it stops when the reader goes, with
    the shell's SIGPIPE status and no traceback."""
    proc = subprocess.Popen(
        [*INAG, "generate", "--model", "data_a", "--condition", "0.5", "-n", "200000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["condition"] == 0.5
    proc.stdout.close()
    code = proc.wait(60)
    err = proc.stderr.read()
    assert code == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_path_too_long_for_the_file_system_is_an_error_not_a_traceback(capsys):
    long = "a" * 300
    assert (
        main(["generate", "--model", "data_a", "-n", "2", "--condition", "0.5", "--out", long])
        == 2
    )
    assert "too long for this file system" in capsys.readouterr().err
    assert main(["dataset", "info", long]) == 2
    assert "too long for this file system" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["space", "sample", "-n", "1"], ["generate", "--model", "data_a", "-n", "2"],
     ["select", "--model", "data_a", "-n", "2", "--verify", "0"]],
)  # fmt: skip
def test_a_negative_seed_is_refused(capsys, args):
    assert main([*args, "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_select_refuses_a_step_too_small_to_move_the_condition(capsys):
    """--step 1e-9 rounded away at 6 decimals: the re-conditioning loop never ended."""
    args = ["select", "--model", "data_a", "-n", "20", "--verify", "0", "--refine", "0",
            "--max-storage", "0.0001", "--step", "1e-9"]  # fmt: skip
    assert main(args) == 2
    assert "--step must be in [1e-06, 1]" in capsys.readouterr().err


def test_a_directory_given_as_platform_is_named_as_such(tmp_path, capsys):
    assert (
        main(["select", "--model", "data_a", "-n", "2", "--verify", "0", "-p", str(tmp_path)]) == 2
    )
    assert "is a directory; expected a platform YAML file" in capsys.readouterr().err


def test_an_infinite_learning_rate_is_refused_before_training(tmp_path, capsys):
    arch = json.dumps({"kind": "mlp", "input_shape": [1], "output_size": 1,
                       "layers": [{"kind": "dense", "width": 4, "bits": 4}]})  # fmt: skip
    assert main(["train-net", arch, "--task", "data_a", "-o", str(tmp_path / "n.safetensors"),
                 "--lr", "inf"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--lr must be a finite" in err and "epoch 1/" not in err
    assert main(["sample", "--lr", "inf", "-n", "2", "--db", str(tmp_path / "d.sqlite")]) == 2
    assert "--lr must be a finite number > 0" in capsys.readouterr().err
