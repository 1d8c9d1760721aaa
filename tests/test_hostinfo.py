"""The host platform describes the machine the tests run on, whatever it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inag import hostinfo
from inag.cli import main
from inag.platform import PlatformError, load_platform, platform_from_dict, read_descriptor


def _cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_host_cpu_is_this_machine():
    p = load_platform("host_cpu")
    cap = p.capability
    assert p.detected
    assert cap.cpu == hostinfo.cpu_info().model_name
    assert (
        cap.cores is not None
        and cap.cores.value == hostinfo.cores()
        and cap.cores.kind == "detected"
    )
    assert cap.memories.sram_bytes.value == hostinfo.memory_bytes()
    assert cap.memories.sram_bytes.kind == "detected"
    assert cap.clock_hz.value > 1e8 and cap.clock_hz.kind in ("detected", "guess")
    # every detected number says what it is and where it was found
    for s in (cap.cores, cap.clock_hz, cap.memories.sram_bytes, *cap.caches.values()):
        assert "on " in s.source and len(s.source) > 10


def test_features_and_target_follow_cpuinfo():
    flags = _cpuinfo_flags()
    info = hostinfo.cpu_info()
    table = hostinfo.X86_FEATURES if info.machine == "x86_64" else hostinfo.ARM_FEATURES
    target = load_platform("host_cpu").measure.tvm_target
    assert target is not None and target["kind"] == "llvm" and "mtriple" not in target
    if info.machine not in ("x86_64", "aarch64"):
        pytest.skip(f"no feature table for {info.machine}")
    mattr = set(target["mattr"])
    for llvm_name, flag in table.items():
        want = ("+" if flag in flags else "-") + llvm_name
        assert want in mattr, (want, sorted(mattr))
    if info.machine == "x86_64":
        assert ("avx2" in hostinfo.features()) == ("avx2" in flags)
        level = hostinfo.isa()
        assert level.startswith("x86-64")
        assert (level == "x86-64-v4") == all(
            f in flags for f in ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
        )


def test_llvm_cpu_is_tvms_host_cpu():
    tvm = pytest.importorskip("tvm")
    from tvm.target import codegen

    name = codegen.llvm_get_system_cpu()
    p = load_platform("host_cpu")
    if name != "generic":
        assert p.capability.llvm_cpu == name
        assert p.measure.tvm_target["mcpu"] == name
    tvm.target.Target(p.measure.tvm_target)  # LLVM accepts the target as written


def test_expensive_facts_are_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path))
    calls = []
    got = hostinfo._cached("probe", lambda: calls.append(1) or {"x": 1.5})
    assert got == {"x": 1.5} and calls == [1]
    assert hostinfo._cached("probe", lambda: calls.append(1) or {"x": 9}) == {"x": 1.5}
    assert calls == [1]
    files = list((tmp_path / "host").glob("*.json"))
    assert [f.stem for f in files] == [hostinfo.fingerprint()]
    files[0].write_text("{not json")  # a corrupt cache costs a recompute, not an error
    assert hostinfo._cached("probe", lambda: {"x": 2.0}) == {"x": 2.0}


def test_microbench_numbers_are_plausible(tmp_path, monkeypatch):
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path))
    mb = hostinfo.microbench()
    assert 0.05 < mb["macs_per_cycle"] < 1000
    assert 0.5 < mb["mem_bytes_per_cycle"] < 2000


def test_unknown_probe_lists_the_available_ones():
    _, data = read_descriptor("host_cpu")
    data["capability"]["cpu"] = {"detect": "cpu_nmae"}
    with pytest.raises(PlatformError) as err:
        platform_from_dict(data, "x.yaml")
    msg = str(err.value)
    assert "capability.cpu" in msg and "cpu_nmae" in msg and "cpu_name" in msg


def test_detect_writes_a_frozen_descriptor_that_validates(tmp_path, capsys):
    out = tmp_path / "sub" / "my_host.yaml"
    assert main(["platforms", "detect", "--out", str(out), "--name", "lab_pc"]) == 0
    data = yaml.safe_load(out.read_text())
    assert not hostinfo.has_markers(data)
    assert data["name"] == "lab_pc"
    assert data["capability"]["clock_hz"]["kind"] in ("detected", "guess")
    assert main(["platforms", "validate", str(out)]) == 0
    frozen = load_platform(out)
    live = load_platform("host_cpu")
    assert not frozen.detected
    assert frozen.capability == live.capability.model_copy(
        update={"memories": frozen.capability.memories}  # free disk moves between loads
    )
    assert frozen.measure.tvm_target == live.measure.tvm_target
    assert "ok:" in capsys.readouterr().out


def test_detect_refuses_a_directory(tmp_path, capsys):
    assert main(["platforms", "detect", "--out", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


def test_show_prints_the_detected_cpu(capsys):
    assert main(["platforms", "show", "host_cpu"]) == 0
    out = capsys.readouterr().out
    assert hostinfo.cpu_info().model_name in out and "detected on this machine" in out
    target = load_platform("host_cpu").measure.tvm_target
    assert target is not None
    if "mcpu" in target:
        assert f"LLVM CPU {target['mcpu']}" in out
