"""CNN quantization-aware training (the paper's Cls.C) on digits (1x8x8), no mocks.

``PlainQATCNN`` + ``train_single`` / ``train_final`` is the one-net autograd reference; the
batched engines ("c": one fused net per thread, "torch": nets grouped by shape) are checked
against it, and a net trained by ``train_final`` must export bit-exactly: the integer model
(numpy reference) and what onnxruntime, the standalone C build and TVM run agree on every
output, and the integer model keeps the QAT model's accuracy.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from export import quant, reference
from export.qnet import QuantizedNet, save_net_file
from inag.arch import ArchSpec, LayerSpec
from inag.space import load_space
from inag.tasks import load_task, performance
from inag.train.trainer import (
    PlainQATCNN,
    TrainerConfig,
    train_final,
    train_single,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: the dataset builder's setting, and immune to oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", seed=0)


def conv(width: int, bits: int, kernel: int = 3, stride: int = 1, pool: int = 1) -> LayerSpec:
    return LayerSpec(width, bits, "conv", kernel=kernel, stride=stride, pool=pool)


# conv 3x3 + pool, conv 1x1, dense; conv 5x5 stride 2 + conv with pool: every path of a unit
CNN = ArchSpec("cnn", (1, 8, 8), 10, (conv(8, 6, pool=2), conv(12, 4, kernel=1), LayerSpec(24, 5)))
CNN_STRIDE = ArchSpec(
    "cnn", (1, 8, 8), 10, (conv(6, 7, kernel=5, stride=2), conv(8, 3, pool=2)), output_bits=6
)


def sample_cnns(task, n: int, seed: int) -> list[ArchSpec]:
    space = load_space("cnn").bind(task.input_shape, task.output_size)
    return space.sample_many(np.random.default_rng(seed), n)


# ============================================================================ plain reference
def test_plain_cnn_learns_digits(digits):
    cfg = TrainerConfig(epochs=10, restarts=1)
    for arch in (CNN, CNN_STRIDE):
        r = train_single(arch, digits, cfg)
        assert r.status == "ok"
        assert r.performance > 0.85, (arch.summary(), r.performance)  # chance is 0.1


def test_plain_cnn_is_deterministic_by_seed(digits):
    cfg = TrainerConfig(epochs=2, restarts=1)
    a = train_final(CNN, digits, cfg)
    b = train_final(CNN, digits, cfg)
    assert a[0].performance == b[0].performance and a[0].final_loss == b[0].final_loss
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])
    c = train_final(CNN, digits, TrainerConfig(epochs=2, restarts=1, seed=1))
    assert not np.array_equal(a[1]["unit0.weight"], c[1]["unit0.weight"])


def test_cnn_init_is_torch_conv2d_default():
    """nn.Conv2d's default init (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias the
    same), from the net's own generator, in the export layout (out, in, k, k)."""
    model = PlainQATCNN(CNN, 0.1, 0, 0.9)
    w0, b0 = model.weights[0].detach(), model.biases[0].detach()
    assert tuple(w0.shape) == (8, 1, 3, 3) and tuple(b0.shape) == (8,)
    bound = 1 / 3.0  # fan_in = 1 * 3 * 3
    assert float(w0.abs().max()) <= bound and float(w0.abs().max()) > 0.8 * bound
    assert tuple(model.weights[2].shape) == (12 * 4 * 4, 24)  # dense after the flatten: (in, out)
    assert tuple(model.weights[3].shape) == (24, 10)


def test_cnn_on_a_non_image_task_is_refused():
    data_a = load_task("data_a", seed=0, max_train=64)
    with pytest.raises(ValueError, match=r"1x8x8 \(64 values\).*'data_a' gives 1 \(1 values\)"):
        train_single(CNN, data_a, TrainerConfig(epochs=1, restarts=1))


# ============================================================================ export
@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """CNN and CNN_STRIDE trained by train_final, saved and loaded as QuantizedNets."""
    out = {}
    for name, arch in (("pool", CNN), ("stride", CNN_STRIDE)):
        result, tensors, meta = train_final(arch, digits, TrainerConfig(epochs=8, restarts=1))
        path = save_net_file(tmp_path_factory.mktemp(name) / "net.safetensors", tensors, meta)
        out[name] = (arch, result, tensors, meta, QuantizedNet.load(path))
    return out


def test_trained_cnn_keeps_its_accuracy_as_an_integer_model(trained, digits):
    for arch, result, tensors, meta, net in trained.values():
        pred = reference.forward(net, digits.x_test).argmax(axis=1)
        integer = performance("classification", digits.y_test, pred)
        qat = float(meta["qat_performance"])
        assert qat == result.performance > 0.8
        assert abs(integer - qat) <= 0.01, (arch.summary(), qat, integer)
        # the integer model reproduces the QAT model's predictions, not only its score
        qat_out = _qat_forward(tensors, meta, arch, digits.x_test)
        assert np.mean(pred == qat_out.argmax(axis=1)) >= 0.99
        # every hidden unit has live codes (a trained net, not a degenerate one)
        a = np.clip(reference.quantize_input(net, digits.x_test).astype(np.int64), -127, 127)
        for u in net.units[:-1]:
            a = reference.run_unit(u, a)
            assert 0 < np.mean(a > 0) < 1, u.index


def _qat_forward(tensors, meta, arch, x):
    """The trainer's own fake-quantized forward (PlainQATCNN in eval mode)."""
    s_x = float(meta["input_scale"])
    model = PlainQATCNN(arch, s_x, 0, 0.9)
    with torch.no_grad():
        for i in range(arch.depth + 1):
            model.weights[i].copy_(torch.from_numpy(tensors[f"unit{i}.weight"]))
            model.biases[i].copy_(torch.from_numpy(tensors[f"unit{i}.bias"]))
        model.act_max[: arch.depth] = torch.from_numpy(tensors["act_max"])
    model.eval()
    xq = quant.quantize_input(x.reshape(len(x), -1), s_x).astype(np.float32) * np.float32(s_x)
    with torch.no_grad():
        return model(torch.from_numpy(xq)).numpy()


def _codes(net, digits):
    return reference.quantize_input(net, digits.x_test)


def test_trained_cnn_onnxruntime_is_bit_exact(trained, digits):
    pytest.importorskip("onnxruntime")
    from export import onnx_export

    for *_, net in trained.values():
        x = _codes(net, digits)
        sess = onnx_export.session(onnx_export.build_onnx(net))
        got = np.asarray(onnx_export.run_codes(sess, net, x))
        np.testing.assert_array_equal(got.reshape(len(x), -1), reference.run(net, x))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")
def test_trained_cnn_standalone_c_is_bit_exact(trained, digits, tmp_path):
    from export import c_export

    for name, (*_, net) in trained.items():
        x = _codes(net, digits)
        d = tmp_path / name
        d.mkdir()
        cs, _ = c_export.write_c(net, d)
        exe = c_export.build_host(d, cs.prefix)
        got = np.asarray(c_export.run_host(exe, net, x))
        np.testing.assert_array_equal(got.reshape(len(x), -1), reference.run(net, x))


@pytest.mark.slow
def test_trained_cnn_tvm_is_bit_exact(trained, digits, tmp_path):
    pytest.importorskip("tvm")
    from export import tvm_export
    from inag.platform import load_platform

    target = tvm_export.check_target(load_platform("host_cpu"))
    nets = {f"net{i}": v[-1] for i, v in enumerate(trained.values())}
    ex = tvm_export.compile_module(tvm_export.build_relax_many(nets), target)
    lib = tvm_export.export_library(ex, tmp_path, "all", target)
    loaded = tvm_export.load_library(tmp_path / lib["library"])
    for name, net in nets.items():
        x = _codes(net, digits)
        got = tvm_export.run_vm(loaded, x, func=name)
        np.testing.assert_array_equal(got.reshape(len(x), -1), reference.run(net, x))
