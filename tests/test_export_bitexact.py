"""Bit-exactness: the numpy reference, onnxruntime, TVM (host) and the standalone C build agree
on every output of 256 inputs for 20 random architectures (MLP and CNN, bits 2..8).

The nets come from ``QuantizedNet.random`` (calibrated scales, so every layer has live and
clamped codes); the inputs span the whole int8 range including -128 (which every backend
clamps to -127). Each backend test compares all 20 x 256 x outputs with the reference, so all
four agree transitively.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from export import c_export, onnx_export, reference
from export.qnet import QuantizedNet
from inag.arch import ArchSpec, LayerSpec
from inag.platform import load_platform
from inag.space import load_space

N_INPUTS = 256


def random_archs() -> list[ArchSpec]:
    """20 architectures: sampled MLPs and CNNs plus hand-picked shape edge cases."""
    rng = np.random.default_rng(2024)
    mlps = load_space("mlp").bind((5,), 3).sample_many(rng, 9)
    cnns = load_space("cnn").sample_many(rng, 8)
    extra = [
        # an MLP over an image-shaped input (flattened first)
        ArchSpec("mlp", (2, 4, 4), 4, (LayerSpec(12, 3), LayerSpec(7, 8)), output_bits=5),
        # stride 2, kernel 5, a pool of 3 that leaves a remainder, 3 input channels
        ArchSpec(
            "cnn",
            (3, 9, 9),
            6,
            (
                LayerSpec(5, 7, "conv", kernel=5, stride=2, pool=1),
                LayerSpec(6, 2, "conv", kernel=3, stride=1, pool=3),
                LayerSpec(9, 4),
            ),
            output_bits=3,
        ),
        # conv only (the head flattens a feature map), stride 3 with kernel 1
        ArchSpec(
            "cnn",
            (2, 7, 6),
            2,
            (
                LayerSpec(3, 6, "conv", kernel=1, stride=3),
                LayerSpec(4, 5, "conv", kernel=3, pool=2),
            ),
            output_bits=2,
        ),
    ]
    return [*mlps, *cnns, *extra]


@pytest.fixture(scope="module")
def cases() -> list[tuple[QuantizedNet, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for arch in random_archs():
        net = QuantizedNet.random(arch, rng)
        x = rng.integers(-128, 128, (N_INPUTS, *arch.input_shape)).astype(np.int8)
        out.append((net, x, reference.run(net, x)))
    return out


def test_the_archs_cover_the_space(cases):
    archs = [net.arch for net, _, _ in cases]
    assert len(archs) == 20
    assert {a.kind for a in archs} == {"mlp", "cnn"}
    assert set().union(*({u.bits for u in net.units} for net, _, _ in cases)) == set(range(2, 9))
    assert any(layer.pool > 1 for a in archs for layer in a.layers)
    assert any(layer.stride > 1 for a in archs for layer in a.layers)


def test_random_nets_are_not_degenerate(cases):
    """Bit-exactness means little on constant outputs: most nets must vary, and across the
    suite the requantization must hit both clamps (0 and 2^b - 1) and the interior."""
    varied = sum(len(np.unique(y)) > 10 for _, _, y in cases)
    assert varied >= 17, varied
    zeros = tops = interior = 0
    for net, x, _ in cases:
        a = np.clip(x.astype(np.int64), -127, 127)
        for u in net.units[:-1]:
            a = reference.run_unit(u, a)
            zeros += int(np.sum(a == 0))
            tops += int(np.sum(a == u.qmax))
            interior += int(np.sum((a > 0) & (a < u.qmax)))
    assert zeros > 0 and tops > 0 and interior > zeros / 4


def _compare(name: str, got: np.ndarray, want: np.ndarray, net: QuantizedNet) -> None:
    got = np.asarray(got).reshape(want.shape)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (
        f"{name} differs from the reference on {len(bad)} of {want.size} outputs of "
        f"{net.arch.summary()}; first at {bad[0].tolist()}: {got[tuple(bad[0])]} vs "
        f"{want[tuple(bad[0])]}"
    )


def test_onnxruntime_matches_reference(cases):
    for net, x, want in cases:
        sess = onnx_export.session(onnx_export.build_onnx(net))
        _compare("onnxruntime", onnx_export.run_codes(sess, net, x), want, net)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")
def test_c_build_matches_reference(cases, tmp_path: Path):
    for net, x, want in cases:
        d = tmp_path / net.arch_id
        d.mkdir()
        cs, _ = c_export.write_c(net, d)
        exe = c_export.build_host(d, cs.prefix)
        _compare("C (gcc)", c_export.run_host(exe, net, x), want, net)


@pytest.mark.slow
def test_tvm_host_matches_reference(cases, tmp_path: Path):
    pytest.importorskip("tvm")
    from export import tvm_export

    # all 20 nets as functions of one module: one build instead of 20 (same code per net),
    # exported as a shared library and loaded back: the artifact path, not an in-memory JIT
    # built for the detected host target (LLVM's CPU name + this CPU's features), as
    # `inag export --target tvm --platform host_cpu` builds it
    target = tvm_export.check_target(load_platform("host_cpu"))
    mod = tvm_export.build_relax_many({f"net{i}": net for i, (net, _, _) in enumerate(cases)})
    ex = tvm_export.compile_module(mod, target)
    lib = tvm_export.export_library(ex, tmp_path, "all", target)
    assert lib["library"] == "all.so" and lib["linked"]
    loaded = tvm_export.load_library(tmp_path / lib["library"])
    for i, (net, x, want) in enumerate(cases):
        _compare("TVM (exported .so)", tvm_export.run_vm(loaded, x, func=f"net{i}"), want, net)


# ---------------------------------------------------------------------------- edge cases
def _edge_net(m0: int, shift: int, bias: int) -> QuantizedNet:
    """A 1-input MLP whose first unit has a hand-set multiplier and bias."""
    arch = ArchSpec("mlp", (1,), 1, (LayerSpec(4, 8), LayerSpec(3, 2)))
    net = QuantizedNet.random(arch, np.random.default_rng(0))
    u0 = dataclasses.replace(
        net.units[0],
        weight=np.array([[1, -1, 127, -127]], np.int8),
        bias=np.full(4, bias, np.int32),
        m0=m0,
        shift=shift,
    )
    return QuantizedNet(arch, net.input_scale, (u0, *net.units[1:]), net.source)


@pytest.mark.parametrize(
    ("m0", "shift", "bias"),
    [
        (1 << 30, 31, 0),  # M = 0.5: odd accumulators are exact ties -> round half up
        (1 << 30, 31, 1),
        ((1 << 31) - 1, 30, -5),  # M just under 2: saturates early
        (1 << 30, 62, 123456),  # the largest shift: everything rounds to 0
        (0, 62, 7),  # a multiplier that underflowed to M0 = 0
        (1518500250, 45, 2**20),  # large bias, tiny multiplier
    ],
)
def test_rounding_ties_and_extremes_agree(m0, shift, bias, tmp_path):
    net = _edge_net(m0, shift, bias)
    x = np.arange(-128, 128, dtype=np.int8).reshape(-1, 1)
    want = reference.run(net, x)
    # the unit-0 codes themselves follow quant.requantize's rule (ties up, clamp at 0 and 255)
    acc = np.clip(x.astype(np.int64), -127, 127) @ net.units[0].weight.astype(np.int64) + bias
    codes = reference.run_unit(net.units[0], np.clip(x.astype(np.int64), -127, 127))
    exact = acc * m0 / 2.0**shift
    np.testing.assert_array_equal(codes, np.clip(np.floor(exact + 0.5), 0, 255))
    sess = onnx_export.session(onnx_export.build_onnx(net))
    _compare("onnxruntime", onnx_export.run_codes(sess, net, x), want, net)
    if shutil.which("gcc"):
        cs, _ = c_export.write_c(net, tmp_path)
        exe = c_export.build_host(tmp_path, cs.prefix)
        _compare("C (gcc)", c_export.run_host(exe, net, x), want, net)


def test_pack_bits_roundtrip():
    rng = np.random.default_rng(3)
    for bits in range(2, 9):
        q = (1 << (bits - 1)) - 1
        codes = rng.integers(-q, q + 1, 101)
        packed = c_export.pack_bits(codes, bits)
        assert len(packed) == (101 * bits + 7) // 8 + 1  # real bits + one padding byte
        np.testing.assert_array_equal(c_export.unpack_bits(packed, bits, 101), codes)
    # the documented layout: little-endian bitstream, two's complement
    assert c_export.pack_bits(np.array([1, -1, 0, -2]), 2) == bytes([0b10_00_11_01, 0])
