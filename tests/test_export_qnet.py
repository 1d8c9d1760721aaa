"""QuantizedNet construction, net-file checking, and the reference interpreter itself."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from export import quant, reference
from export.errors import ExportError
from export.qnet import NET_FORMAT, QuantizedNet, read_net_file, save_net_file, unit_shapes
from inag.arch import ArchSpec, LayerSpec


def mlp() -> ArchSpec:
    return ArchSpec("mlp", (3,), 2, (LayerSpec(8, 4), LayerSpec(5, 7)), output_bits=6)


def cnn() -> ArchSpec:
    return ArchSpec(
        "cnn",
        (2, 7, 7),
        3,
        (LayerSpec(4, 5, "conv", kernel=3, stride=2, pool=2), LayerSpec(6, 3)),
    )


def float_net(arch: ArchSpec, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata shaped like inag.train.trainer.train_final's output."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, sh in enumerate(unit_shapes(arch)):
        tensors[f"unit{i}.weight"] = rng.normal(0, 0.5, sh["weight_shape"]).astype(np.float32)
        tensors[f"unit{i}.bias"] = rng.normal(0, 0.1, sh["out"]).astype(np.float32)
    tensors["act_max"] = rng.uniform(0.5, 3, arch.depth).astype(np.float32)
    meta = {
        "format": NET_FORMAT,
        "arch": arch.to_json(),
        "arch_id": arch.arch_id,
        "input_scale": repr(0.02),
        "task": "data_a",
        "task_kind": "regression",
        "qat_performance": "0.9",
        "trainer": "{}",
    }
    return tensors, meta


def test_net_format_matches_the_trainer():
    trainer = pytest.importorskip("inag.train.trainer")
    assert trainer.NET_FORMAT == NET_FORMAT


@pytest.mark.parametrize("make", [mlp, cnn])
def test_load_quantizes_by_the_scheme(make, tmp_path):
    arch = make()
    tensors, meta = float_net(arch)
    path = save_net_file(tmp_path / "n.safetensors", tensors, meta)
    net = QuantizedNet.load(path)
    assert net.arch == arch and net.input_scale == 0.02
    assert net.source["origin"] == "trained" and net.source["task"] == "data_a"
    s_in = 0.02
    for i, u in enumerate(net.units):
        w = tensors[f"unit{i}.weight"].astype(np.float64)
        q, s_w = quant.quantize_weights(w, u.bits)
        np.testing.assert_array_equal(u.weight, q)
        assert u.s_w == s_w and u.s_in == s_in
        np.testing.assert_array_equal(
            u.bias, quant.quantize_bias(tensors[f"unit{i}.bias"], s_in * s_w)
        )
        assert np.abs(u.weight).max() <= quant.weight_qmax(u.bits)
        if not u.head:
            s_out = quant.act_scale(float(tensors["act_max"][i]), u.bits)
            assert (u.m0, u.shift) == quant.quantize_multiplier(s_in * s_w / s_out)
            s_in = s_out
    assert net.output_scale == net.units[-1].s_in * net.units[-1].s_w


def test_dequantized_forward_tracks_the_float_model():
    """The integer model approximates the float net it came from (sanity, not exactness)."""
    arch = mlp()
    tensors, _ = float_net(arch, seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (500, 3))
    # calibrate activation ranges on the data like QAT's EMA would
    a = x.copy()
    act_max = []
    for i in range(arch.depth + 1):
        z = a @ tensors[f"unit{i}.weight"] + tensors[f"unit{i}.bias"]
        if i < arch.depth:
            act_max.append(float(z.max()))
            a = np.maximum(z, 0)
    ws = [tensors[f"unit{i}.weight"] for i in range(arch.depth + 1)]
    bs = [tensors[f"unit{i}.bias"] for i in range(arch.depth + 1)]
    net = QuantizedNet.from_float(arch, ws, bs, np.array(act_max), quant.input_scale(x))
    y = reference.forward(net, x)
    corr = np.corrcoef(y.ravel(), z.ravel())[0, 1]
    assert corr > 0.9


def test_reference_accumulators_match_torch():
    """An independent oracle for the reference's conv/dense arithmetic."""
    torch = pytest.importorskip("torch")
    net = QuantizedNet.random(cnn(), np.random.default_rng(1))
    rng = np.random.default_rng(2)
    a = rng.integers(-127, 128, (16, 2, 7, 7)).astype(np.int64)
    for u in net.units:
        got = reference.accumulate(u, a)
        t = torch.tensor(a.reshape(len(a), *u.in_shape), dtype=torch.float64)
        w = torch.tensor(u.weight.astype(np.float64))
        b = torch.tensor(u.bias.astype(np.float64))
        if u.kind == "conv":
            want = torch.nn.functional.conv2d(t, w, b, stride=u.stride, padding=u.pad)
        else:
            want = t @ w + b
        np.testing.assert_array_equal(got, want.numpy().astype(np.int64))
        a = reference.run_unit(u, a)
        if u.kind == "conv" and u.pool > 1:
            pre = quant.requantize(got, u.m0, u.shift, 0, u.qmax)
            pooled = torch.nn.functional.max_pool2d(torch.tensor(pre, dtype=torch.float64), u.pool)
            np.testing.assert_array_equal(a, pooled.numpy().astype(np.int64))


def test_int64_fallback_equals_blas_path():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (7, 300))
    w = rng.integers(-127, 128, (300, 5))
    np.testing.assert_array_equal(reference._matmul(a, w), a @ w)


def test_random_nets_have_calibrated_live_layers():
    net = QuantizedNet.random(cnn(), np.random.default_rng(0))
    x = np.random.default_rng(1).integers(-127, 128, (256, 2, 7, 7))
    a = x.astype(np.int64)
    for u in net.units[:-1]:
        a = reference.run_unit(u, a)
        assert 0.05 < np.mean(a > 0) < 0.95
        assert np.mean(a == u.qmax) < 0.2


def test_input_codes_are_checked_and_clamped():
    net = QuantizedNet.random(mlp(), np.random.default_rng(0))
    y_lo = reference.run(net, np.full((1, 3), -128, np.int8))
    np.testing.assert_array_equal(y_lo, reference.run(net, np.full((1, 3), -127, np.int8)))
    with pytest.raises(ExportError, match="shaped"):
        reference.run(net, np.zeros((2, 4), np.int8))
    with pytest.raises(ExportError, match="integers"):
        reference.run(net, np.zeros((2, 3), np.float32))
    with pytest.raises(ExportError, match="int8"):
        reference.run(net, np.full((1, 3), 300))


def test_int32_overflow_is_refused():
    net = QuantizedNet.random(mlp(), np.random.default_rng(0))
    u0 = dataclasses.replace(net.units[0], bias=np.full(8, 2**31 - 10, np.int32))
    with pytest.raises(ExportError, match="int32"):
        QuantizedNet(net.arch, net.input_scale, (u0, *net.units[1:]))


# ---------------------------------------------------------------------------- bad files
def write(tmp_path, tensors, meta, name="n.safetensors"):
    return save_net_file(tmp_path / name, tensors, meta)


def test_missing_file(tmp_path):
    with pytest.raises(ExportError, match="no net file"):
        QuantizedNet.load(tmp_path / "nope.safetensors")


def test_corrupt_and_truncated_files(tmp_path):
    tensors, meta = float_net(mlp())
    good = write(tmp_path, tensors, meta).read_bytes()
    for name, data in {
        "garbage": b"this is not a safetensors file at all",
        "empty": b"",
        "truncated": good[: len(good) - 40],
        "header-cut": good[:20],
        "bad-json": (10).to_bytes(8, "little") + b"{not json}" + b"\0" * 10,
    }.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(ExportError, match="corrupt or truncated"):
            QuantizedNet.load(p)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, m: m.update(format="something-else"), "format"),
        (lambda t, m: m.pop("format"), "format"),
        (lambda t, m: m.pop("arch"), "'arch'"),
        (lambda t, m: m.update(arch='{"kind": "mlp"}'), "not a valid architecture"),
        (lambda t, m: m.update(arch_id="0" * 16), "does not match"),
        (lambda t, m: m.update(input_scale="abc"), "not a number"),
        (lambda t, m: m.update(input_scale="-1.0"), "finite and > 0"),
        (lambda t, m: t.pop("unit1.bias"), "missing"),
        (lambda t, m: t.update(extra=np.zeros(1, np.float32)), "unexpected"),
        (lambda t, m: t.update({"unit0.weight": np.zeros((3, 9), np.float32)}), "shape"),
        (lambda t, m: t.update({"unit0.weight": np.zeros((3, 8), np.float64)}), "float32"),
        (lambda t, m: t["unit2.weight"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda t, m: t.update(act_max=-np.ones(2, np.float32)), "act_max"),
        (lambda t, m: m.update(qat_performance="abc"), "'qat_performance' must be a finite"),
        (lambda t, m: m.update(task_kind="weird"), "'task_kind' must be 'regression'"),
        (lambda t, m: m.update(trainer="{{"), "'trainer' must be a JSON object"),
    ],
)
def test_bad_contents_give_clear_errors(edit, match, tmp_path):
    tensors, meta = float_net(mlp())
    edit(tensors, meta)
    path = write(tmp_path, tensors, meta)
    with pytest.raises(ExportError, match=match):
        read_net_file(path)


def test_arch_of_another_shape_is_refused(tmp_path):
    tensors, meta = float_net(mlp())
    other = ArchSpec("mlp", (3,), 2, (LayerSpec(9, 4), LayerSpec(5, 7)), output_bits=6)
    meta.update(arch=other.to_json(), arch_id=other.arch_id)
    with pytest.raises(ExportError, match="shape"):
        QuantizedNet.load(write(tmp_path, tensors, meta))


def test_unwritable_net_file_location(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tensors, meta = float_net(mlp())
    with pytest.raises(ExportError, match="cannot write net file"):
        save_net_file(blocker / "n.safetensors", tensors, meta)


def test_records_are_json_ready():
    net = QuantizedNet.random(cnn(), np.random.default_rng(0))
    recs = json.loads(json.dumps(net.records()))
    assert [r["bits"] for r in recs] == net.bits
    assert recs[0]["pool"] == 2 and recs[0]["stride"] == 2 and recs[-1]["head"]


def test_a_changed_byte_is_caught_by_the_content_hash(tmp_path):
    """A flipped weight byte still makes a valid-looking net (it exported "bit-exact" before):
    the hash save_net_file stores refuses it; a file without a hash (older) still loads."""
    from safetensors.numpy import save_file

    from export.qnet import HASH_KEY

    tensors, meta = float_net(mlp())
    path = write(tmp_path, tensors, meta)
    QuantizedNet.load(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # a byte of the last tensor's data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="content hash mismatch"):
        QuantizedNet.load(bad)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), {k: v for k, v in meta.items() if k != HASH_KEY})
    assert QuantizedNet.load(old).arch == QuantizedNet.load(path).arch


def test_an_input_scale_that_makes_no_integer_model_names_the_file(tmp_path):
    tensors, meta = float_net(mlp())
    meta["input_scale"] = "1e300"
    path = write(tmp_path, tensors, meta)
    with pytest.raises(ExportError, match=r"input_scale \(1e300\)") as exc:
        QuantizedNet.load(path)
    assert str(path) in str(exc.value)
