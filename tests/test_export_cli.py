"""`inag train-net` and `inag export` end to end through the real CLI, and their errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from inag.arch import ArchSpec, LayerSpec
from inag.cli import main

ARCH = ArchSpec("mlp", (1,), 1, (LayerSpec(12, 4), LayerSpec(6, 7)))
OTHER = ArchSpec("mlp", (1,), 1, (LayerSpec(5, 3),))
SAFE_NAME = re.compile(r"^(manifest\.json|inag_[0-9a-f]{16}\.(onnx|so|tar|c|h|safetensors))$")


def export_argv(target: str, net: Path, platform: str, out: Path, *extra: str) -> list[str]:
    """`inag export` of a net file."""
    args = ["--target", target, "--net", str(net), "--platform", platform, "--out", str(out)]
    return ["export", *args, *extra]


# `inag train-net ARCH` for one epoch on data_a; append the output path
TRAIN_ONE_EPOCH = ["train-net", ARCH.to_json(), "--task", "data_a", "--epochs", "1", "--out"]


@pytest.fixture(scope="module")
def net_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("net") / "nets" / "a.safetensors"
    assert (
        main(["train-net", ARCH.to_json(), "--task", "data_a", "--epochs", "3", "--out", str(out)])
        == 0
    )
    return out


def check_manifest(out: Path, target: str) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "inag-export-manifest-v1" and m["target"] == target
    assert m["arch_id"] == ARCH.arch_id and m["arch"] == ARCH.to_dict()
    assert m["bits"] == [4, 7, 8]
    assert len(m["layers"]) == 3 and all("m0" in r and "shift" in r for r in m["layers"][:2])
    assert m["input"]["scale"] > 0 and m["output"]["scale"] > 0
    for role in ("energy", "latency", "flash", "sram"):
        assert m["predicted_costs"][role]["value"] > 0
    assert m["versions"]["numpy"]
    for name, rec in m["files"].items():
        path = out / name
        assert path.is_file()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    top = [p.name for p in out.iterdir() if p.is_file()]
    assert all(SAFE_NAME.match(n) for n in top), top
    return m


def test_train_net_reports_both_performances(net_file, capsys):
    assert net_file.is_file()
    out = net_file.parent / "b.safetensors"
    assert main([*TRAIN_ONE_EPOCH, str(out)]) == 0
    out = capsys.readouterr().out
    assert "QAT performance" in out and "integer model" in out


@pytest.mark.parametrize("target", ["onnx", "c"])
def test_export_onnx_and_c(net_file, tmp_path, target, capsys):
    out = tmp_path / "art"
    assert main(export_argv(target, net_file, "host_cpu", out)) == 0
    m = check_manifest(out, target)
    assert m["self_check"] == {
        "ran": True,
        "runtime": m["self_check"]["runtime"],
        "inputs": 64,
        "bit_exact": True,
    }
    assert "self-check: bit-exact" in capsys.readouterr().out


def test_export_tvm_host_with_measurement(net_file, tmp_path):
    pytest.importorskip("tvm")
    out = tmp_path / "tvm"
    assert main(export_argv("tvm", net_file, "host_cpu", out, "--measure")) == 0
    m = check_manifest(out, "tvm")
    assert m["target_info"]["library"].endswith(".so") and m["self_check"]["bit_exact"]
    assert m["measured"]["where"] == "local" and m["measured"]["median_s"] > 0


def test_export_c_for_cortex_m_records_elf_sizes(net_file, tmp_path):
    from export.c_export import arm_tools

    out = tmp_path / "cm"
    assert main(export_argv("c", net_file, "cortex_m", out)) == 0
    m = check_manifest(out, "c")
    cm = m["target_info"]["cortex_m"]
    if arm_tools()["gcc"] is None:
        assert "skipped" in cm
        return
    fw = cm["firmware_elf"]
    assert fw["flash_bytes"] == sum(
        fw["sections"].get(s, 0) for s in (".isr_vector", ".text", ".rodata", ".data")
    )
    assert fw["ram_bytes"] == fw["data"] + fw["bss"]
    assert cm["model_object"]["bss"] == m["target_info"]["arena_bytes"]
    # the arena is the sram_peak model's figure, rounded up to whole int32 words
    predicted = int(m["predicted_costs"]["sram"]["value"])
    assert m["target_info"]["arena_bytes"] == (predicted + 3) // 4 * 4


def test_select_json_rank_trains_then_exports(tmp_path):
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"selected": [{"arch": OTHER.to_dict()}, {"arch": ARCH.to_dict()}]}))
    out = tmp_path / "o"
    assert (
        main(
            [
                "export",
                "--target",
                "onnx",
                "--arch",
                f"{sel}#1",
                "--task",
                "data_a",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--platform",
                "bitfusion",
            ]
        )
        == 0
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["arch_id"] == OTHER.arch_id
    assert (out / f"inag_{OTHER.arch_id}.safetensors").is_file()
    assert f"inag_{OTHER.arch_id}.safetensors" in m["files"]


# ---------------------------------------------------------------------------- errors
def run_err(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0, err
    return err


def test_tvm_on_bare_metal_points_to_c(net_file, tmp_path, capsys):
    err = run_err(
        [
            "export",
            "--target",
            "tvm",
            "--net",
            str(net_file),
            "--platform",
            "cortex_m",
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert "bare-metal" in err and "--target c" in err
    assert not (tmp_path / "x").exists()  # refused before touching the disk


def test_unknown_target(net_file, tmp_path, capsys):
    err = run_err(
        ["export", "--target", "tflite", "--net", str(net_file), "--out", str(tmp_path)], capsys
    )
    assert "not a target" in err


def test_missing_and_corrupt_net_files(tmp_path, capsys):
    err = run_err(
        [
            "export",
            "--target",
            "onnx",
            "--net",
            str(tmp_path / "none.safetensors"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "no net file" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    err = run_err(
        ["export", "--target", "onnx", "--net", str(bad), "--out", str(tmp_path / "o")], capsys
    )
    assert "corrupt or truncated" in err


def test_unwritable_output_dir(net_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = run_err(
        ["export", "--target", "onnx", "--net", str(net_file), "--out", str(blocker / "sub")],
        capsys,
    )
    assert "cannot write to output directory" in err
    out = str(blocker / "n.safetensors")
    err = run_err([*TRAIN_ONE_EPOCH, out], capsys)
    assert "cannot write to output directory" in err


def test_unsupported_bit_width_for_platform(net_file, tmp_path, capsys):
    from inag.platform import resolve_platform_path

    text = resolve_platform_path("host_cpu").read_text()
    text = re.sub(r"supported_bits: \[[^\]]*\]", "supported_bits: [8]", text)
    plat = tmp_path / "int8_only.yaml"
    plat.write_text(text)
    err = run_err(
        [
            "export",
            "--target",
            "onnx",
            "--net",
            str(net_file),
            "--platform",
            str(plat),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "4-bit" in err and "does not support" in err


def test_bad_architecture_inputs(tmp_path, capsys):
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"selected": [{"arch": ARCH.to_dict()}]}))
    err = run_err(
        ["train-net", f"{sel}#3", "--task", "data_a", "--out", str(tmp_path / "n.safetensors")],
        capsys,
    )
    assert "rank 3 out of range" in err
    # a claimed arch_id that is not the content hash (e.g. a path) is refused
    forged = {**ARCH.to_dict(), "arch_id": "../../etc/x"}
    err = run_err(
        [
            "train-net",
            json.dumps(forged),
            "--task",
            "data_a",
            "--out",
            str(tmp_path / "n.safetensors"),
        ],
        capsys,
    )
    assert "arch_id" in err
    wrong = ArchSpec("mlp", (3,), 1, (LayerSpec(4, 4),))
    err = run_err(
        [
            "train-net",
            wrong.to_json(),
            "--task",
            "data_a",
            "--out",
            str(tmp_path / "n.safetensors"),
        ],
        capsys,
    )
    assert "takes 3 inputs" in err
    cnn = ArchSpec("cnn", (1, 28, 28), 10, (LayerSpec(4, 4, "conv", kernel=3),))
    err = run_err(
        ["train-net", cnn.to_json(), "--task", "digits", "--out", str(tmp_path / "n.safetensors")],
        capsys,
    )
    assert "takes (1, 28, 28), task has (1, 8, 8)" in err


@pytest.mark.parametrize("target", ["onnx", "c"])
def test_a_cnn_trains_and_exports_bit_exact_from_the_cli(tmp_path, target, capsys):
    cnn = ArchSpec.from_summary("c6k3p2@6-c8k3@4-16@5 | head@8", (1, 8, 8), 10)
    net = tmp_path / "cnn.safetensors"
    assert main(["train-net", cnn.to_json(), "--task", "digits", "--epochs", "3", "--out",
                 str(net)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    qat = float(out.split("QAT performance ")[1].split(",")[0])
    assert qat > 0.5  # 10 classes: well above chance after 3 epochs
    argv = ["export", "--target", target, "--net", str(net), "--out", str(tmp_path / target)]
    assert main([*argv, "--platform", "cortex_m"]) == 0
    assert "self-check: bit-exact vs the integer reference" in capsys.readouterr().out


def _mcu_descriptor(tmp_path: Path, name: str, cpu: str, isa: str) -> Path:
    """The bundled Cortex-M descriptor with another CPU (a RISC-V MCU, another Cortex-M)."""
    src = (
        Path(__file__).resolve().parents[1] / "inag" / "platforms" / "cortex_m.yaml"
    ).read_text()
    text = (
        src.replace("name: cortex_m\n", f"name: {name}\n")
        .replace("  cpu: cortex-m4f\n", f"  cpu: {cpu}\n")
        .replace("  isa: armv7e-m\n", f"  isa: {isa}\n")
    )
    assert text.count(cpu) >= 1 and f"name: {name}" in text
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_export_for_a_risc_v_mcu_reports_no_cortex_m_firmware(net_file, tmp_path, capsys):
    """A `kind: mcu` platform whose CPU is no Cortex-M: no Cortex-M4 firmware is built or
    reported; the manifest and the summary say firmware sizes are measured for Cortex-M only."""
    plat = _mcu_descriptor(tmp_path, "riscv_mcu", "rv32imac", "rv32imac")
    out = tmp_path / "out"
    argv = ["export", "--target", "c", "--net", str(net_file), "--platform", str(plat)]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = check_manifest(out, "c")
    info = m["target_info"]
    assert "cortex_m" not in info
    assert "Cortex-M CPUs only" in info["firmware"]["skipped"]
    assert "'rv32imac'" in info["firmware"]["skipped"]
    assert not (out / "cortex_m").exists()
    assert not any("cortex_m/" in f for f in m["files"])
    assert "Cortex-M4" not in text and "firmware sizes skipped" in text


def test_export_builds_firmware_for_the_descriptors_cortex_m(net_file, tmp_path, capsys):
    """A Cortex-M0+ descriptor: the firmware is built with -mcpu=cortex-m0plus, not the M4."""
    from export.c_export import arm_tools

    if arm_tools()["gcc"] is None:
        pytest.skip("no arm-none-eabi-gcc")
    plat = _mcu_descriptor(tmp_path, "m0_mcu", "cortex-m0+", "armv6-m")
    out = tmp_path / "out"
    argv = ["export", "--target", "c", "--net", str(net_file), "--platform", str(plat)]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    cm = check_manifest(out, "c")["target_info"]["cortex_m"]
    assert cm["cpu"] == "cortex-m0+" and "-mcpu=cortex-m0plus" in cm["flags"]
    assert cm["firmware_elf"]["flash_bytes"] > 0
    assert "cortex-m0+ firmware: flash" in text


def test_train_net_refuses_a_net_too_large_to_train(tmp_path, capsys):
    huge = ArchSpec("mlp", (1,), 1, (LayerSpec(1 << 20, 4), LayerSpec(1 << 20, 4)))
    out = tmp_path / "n.safetensors"
    assert main(["train-net", huge.to_json(), "--task", "data_a", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too large to train here" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("arg", "expect"),
    [("[1,2]", "is JSON but not an object"), ("null", "is JSON but not an object"),
     ("", "the architecture argument is empty")],
)  # fmt: skip
def test_train_net_names_an_arch_argument_that_is_no_architecture(tmp_path, capsys, arg, expect):
    out = tmp_path / "n.safetensors"
    assert main(["train-net", arg, "--task", "data_a", "--out", str(out)]) == 2
    assert expect in capsys.readouterr().err


def test_a_refused_export_writes_nothing(tmp_path, capsys, net_file):
    """--measure on a target no runtime times, and --arch with an unknown task, are refused
    before the output directory exists (both left files or an empty directory behind)."""
    out = tmp_path / "o"
    argv = ["export", "--target", "onnx", "--net", str(net_file), "--out", str(out), "--measure"]
    assert main(argv) == 2
    assert "--measure applies to targets" in capsys.readouterr().err and not out.exists()
    argv = [
        "export",
        "--target",
        "c",
        "--arch",
        ARCH.to_json(),
        "--task",
        "nope",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "unknown task" in capsys.readouterr().err and not out.exists()
