"""TVM export: target checks, cross export, and measurement over a real TVM RPC server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from tvm_servers import free_port, start, stop  # noqa: E402

from export import reference, tvm_export  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.measure import Measurement, measure_local, measure_rpc  # noqa: E402
from export.qnet import QuantizedNet  # noqa: E402
from inag.arch import ArchSpec, LayerSpec  # noqa: E402
from inag.platform import load_platform  # noqa: E402

AARCH64 = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a72",
    "mattr": ["+neon"],
}


@pytest.fixture(scope="module")
def net() -> QuantizedNet:
    arch = ArchSpec("mlp", (4,), 3, (LayerSpec(16, 5), LayerSpec(8, 3)))
    return QuantizedNet.random(arch, np.random.default_rng(0))


@pytest.fixture(scope="module")
def host_lib(net, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tvm")
    ex = tvm_export.compile_net(net, {"kind": "llvm"})
    info = tvm_export.export_library(ex, d, f"inag_{net.arch_id}", {"kind": "llvm"})
    return d / info["library"]


def test_bare_metal_platform_points_to_c():
    with pytest.raises(ExportError) as err:
        tvm_export.check_target(load_platform("cortex_m"))
    msg = str(err.value)
    assert "bare-metal" in msg and "microTVM" in msg and "--target c" in msg


def test_platform_without_tvm_target():
    with pytest.raises(ExportError, match="no measure.tvm_target"):
        tvm_export.check_target(load_platform("bitfusion"))


def test_platform_targets_are_dicts():
    assert tvm_export.check_target(load_platform("host_cpu"))["kind"] == "llvm"
    target = tvm_export.check_target(load_platform("cortex_a"))
    assert target["mtriple"].startswith("aarch64") and tvm_export.is_cross(target)
    assert not tvm_export.is_cross({"kind": "llvm"})


HOST_EXPORT = """
import sys
import numpy as np
from export import reference, tvm_export
from export.artifacts import export_artifacts
from export.qnet import QuantizedNet
from inag.arch import ArchSpec, LayerSpec
from inag.platform import load_platform

plat = load_platform("host_cpu")
archs = {
    "mlp": ArchSpec("mlp", (6,), 3, (LayerSpec(24, 5), LayerSpec(12, 8))),
    "cnn": ArchSpec("cnn", (1, 12, 12), 4, (LayerSpec(8, 8, "conv", kernel=3, pool=2),
                                            LayerSpec(16, 6, "conv", kernel=3), LayerSpec(16, 4))),
}
for name, arch in archs.items():
    net = QuantizedNet.random(arch, np.random.default_rng(3))
    out = sys.argv[1] + "/" + name
    m = export_artifacts(net, "tvm", out, plat)
    assert m["self_check"]["bit_exact"], m["self_check"]
    lib = tvm_export.load_library(out + "/" + m["target_info"]["library"])
    x = np.random.default_rng(4).integers(-128, 128, (64, *arch.input_shape)).astype(np.int8)
    np.testing.assert_array_equal(tvm_export.run_vm(lib, x), reference.run(net, x))
    print(name, m["target_info"]["target"])
"""


def test_host_platform_export_runs_bit_exact_for_mlp_and_cnn(tmp_path):
    """`--target tvm --platform host_cpu` builds for the detected CPU: the code runs here.

    In a child process: code built for another CPU dies with SIGILL, which must fail this
    test, not kill the test run."""
    res = subprocess.run(
        [sys.executable, "-c", HOST_EXPORT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 0, f"exit {res.returncode} (-4 is SIGILL)\n{res.stderr[-3000:]}"
    lines = res.stdout.split("\n")
    assert any(line.startswith("mlp ") for line in lines) and any(
        line.startswith("cnn ") for line in lines
    ), res.stdout
    target = load_platform("host_cpu").measure.tvm_target
    assert target is not None and target["kind"] == "llvm"


def test_invalid_target_is_a_clear_error(net):
    with pytest.raises(ExportError, match="invalid TVM target"):
        tvm_export.compile_net(net, {"kind": "no-such-kind"})


def test_host_library_runs_bit_exact(net, host_lib):
    assert host_lib.suffix == ".so"
    x = np.random.default_rng(1).integers(-128, 128, (33, 4)).astype(np.int8)
    got = tvm_export.run_vm(tvm_export.load_library(host_lib), x)
    np.testing.assert_array_equal(got, reference.run(net, x))
    assert got.dtype == np.int32


def test_relax_graph_is_integer_only(net):
    text = tvm_export.build_relax(net).script()
    assert "float" not in text
    assert 'out_dtype="int32"' in text and "right_shift" in text


@pytest.mark.slow
def test_aarch64_cross_export(net, tmp_path):
    ex = tvm_export.compile_net(net, AARCH64)
    info = tvm_export.export_library(ex, tmp_path, "lib", AARCH64)
    path = tmp_path / info["library"]
    assert path.is_file()
    if shutil.which("aarch64-linux-gnu-gcc"):
        assert info["linked"] and path.suffix == ".so"
        assert path.read_bytes()[18] == 183  # e_machine EM_AARCH64
    else:
        assert not info["linked"] and path.suffix == ".tar" and "cross compiler" in info["note"]
        with tarfile.open(path) as tar:
            objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
            assert objs
            head = tar.extractfile(objs[0]).read(20)  # type: ignore[union-attr]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183


def test_measure_local(net, host_lib):
    m = measure_local(host_lib, np.zeros((1, 4), np.int8), number=5, repeats=3)
    assert isinstance(m, Measurement) and m.where == "local" and m.repeats == 3
    assert 0 < m.min_s <= m.median_s < 1.0


@pytest.mark.slow
def test_measure_over_rpc(net, host_lib, tmp_path):
    """A real TVM RPC server on 127.0.0.1: upload the library, run ``time_evaluator`` there."""
    port = free_port()
    log = tmp_path / "rpc_server.log"
    proc = start("rpc_server", port, log)
    try:
        x = np.zeros((1, 4), np.int8)
        m = measure_rpc(host_lib, x, host="127.0.0.1", port=port, number=10, repeats=3)
        assert m.where == f"rpc://127.0.0.1:{port}" and len(m.results_s) == 3
        assert 0 < m.median_s < 1.0
        assert "load_module" in log.read_text()  # the server really loaded the upload
    finally:
        stop(proc)


def test_rpc_unreachable_is_a_clear_error(host_lib):
    with pytest.raises(ExportError, match="cannot reach the TVM RPC server"):
        measure_rpc(host_lib, np.zeros((1, 4), np.int8), port=free_port(), session_timeout=5)
