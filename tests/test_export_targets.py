"""Export targets behind one base class and registry; every target runs the shipped
conformance suite (export.testing), and a plug-in target registers like a hardware model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export import testing as xtesting
from export.errors import ExportError
from export.qnet import QuantizedNet
from export.targets import ExportTarget, _registry, available_targets, get_target
from inag.cli import main
from inag.platform import load_platform


@pytest.mark.parametrize(
    ("target", "platform"),
    [("onnx", "host_cpu"), ("c", "host_cpu"), ("c", "cortex_m"), ("tvm", "host_cpu")],
)
def test_every_builtin_target_conforms(target, platform, tmp_path):
    if target == "tvm":
        pytest.importorskip("tvm")
    if target == "onnx":
        pytest.importorskip("onnxruntime")
    manifests = xtesting.check_target(target, load_platform(platform), tmp_path)
    if target != "c" or shutil.which("gcc"):
        assert all(m["self_check"]["ran"] for m in manifests)


def test_unknown_target_lists_the_available_ones():
    with pytest.raises(ExportError, match="available: c, onnx, tvm"):
        get_target("tflite")
    assert set(available_targets()) >= {"onnx", "tvm", "c"}


class NumpyTarget(ExportTarget):
    """A test-only target: the integer net as a .npz the reference interpreter runs."""

    name = "npz"
    summary = "the quantized net's integer tensors (test target)"

    def write(self, net: QuantizedNet, out: Path, stem: str, platform: Any, ctx: dict) -> Any:
        path = out / f"{stem}.npz"
        np.savez(path, **{f"w{u.index}": u.weight for u in net.units})
        return {"file": path.name}, [path]

    def runner(self, net: QuantizedNet, out: Path, info: dict) -> Any:
        from export import reference

        data = np.load(out / info["file"])
        assert all(np.array_equal(data[f"w{u.index}"], u.weight) for u in net.units)
        return (lambda x: reference.run(net, x)), "numpy reference"


@pytest.fixture
def npz_target(monkeypatch):
    monkeypatch.setitem(_registry(), "npz", NumpyTarget())
    return "npz"


class TestNumpyTargetConformance(xtesting.ExportTargetConformance):
    """What a plug-in author writes: the shipped test case, subclassed."""

    target = "npz"
    platform = load_platform("host_cpu")

    def setUp(self) -> None:
        _registry()["npz"] = NumpyTarget()
        self.addCleanup(_registry().pop, "npz", None)


def test_the_cli_takes_a_registered_target(npz_target, tmp_path, capsys):
    from inag.arch import ArchSpec, LayerSpec

    arch = ArchSpec("mlp", (1,), 1, (LayerSpec(8, 4),)).to_json()
    argv = ["export", "--target", npz_target, "--arch", arch, "--task", "data_a", "--epochs",
            "1", "--out", str(tmp_path / "o"), "--platform", "host_cpu"]  # fmt: skip
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "self-check: bit-exact" in out.out and (tmp_path / "o" / "manifest.json").is_file()
    code = main(["export", "--target", "npz", "--arch", arch, "--task", "data_a", "--epochs",
                 "1", "--out", str(tmp_path / "m"), "--measure"])  # fmt: skip
    assert code == 2 and "--measure applies to targets" in capsys.readouterr().err


def test_a_broken_target_fails_the_suite(monkeypatch, tmp_path):
    class OffByOne(NumpyTarget):
        name = "offbyone"

        def runner(self, net, out, info):
            from export import reference

            return (lambda x: reference.run(net, x) + 1), "broken"

    monkeypatch.setitem(_registry(), "offbyone", OffByOne())
    with pytest.raises(ExportError, match="self-check failed"):
        xtesting.check_target("offbyone", load_platform("host_cpu"), tmp_path)
