"""A QAT-trained net converts to the integer model without changing its function: task
performance of the integer-only model within 0.01 R² / 1 point of accuracy of the QAT model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from trainer_helpers import one_torch_thread, qat_forward  # noqa: E402, F401 - a fixture

from export import reference  # noqa: E402
from export.qnet import QuantizedNet, save_net_file  # noqa: E402
from inag.arch import ArchSpec, LayerSpec  # noqa: E402
from inag.tasks import load_task, performance  # noqa: E402
from inag.train.trainer import TrainerConfig, train_final  # noqa: E402

CASES = {
    # Data_a regression, mixed low bits
    "data_a": ArchSpec("mlp", (1,), 1, (LayerSpec(32, 4), LayerSpec(16, 3), LayerSpec(8, 6))),
    # digits classification (64 inputs, 10 classes), 2..8 bits
    "digits": ArchSpec("mlp", (64,), 10, (LayerSpec(48, 5), LayerSpec(24, 2), LayerSpec(16, 8))),
}


@pytest.mark.parametrize("task_name", list(CASES))
def test_integer_model_matches_qat_performance(task_name, tmp_path):
    arch = CASES[task_name]
    task = load_task(task_name, 0)
    result, tensors, meta = train_final(arch, task, TrainerConfig(epochs=10))
    path = save_net_file(tmp_path / "net.safetensors", tensors, meta)
    net = QuantizedNet.load(path)
    y = reference.forward(net, task.x_test)
    pred = y[:, 0] if task.kind == "regression" else y.argmax(axis=1)
    integer = performance(task.kind, task.y_test, pred)
    qat = float(meta["qat_performance"])
    assert qat == result.performance
    gap = integer - qat
    print(f"\n{task_name}: {arch.summary()}  QAT {qat:.4f}  integer {integer:.4f}  gap {gap:+.4f}")
    assert qat > (0.5 if task.kind == "regression" else 0.6), "the net did not learn at all"
    assert abs(gap) <= 0.01
    # the whole output, not only the score: the integer model reproduces QAT's predictions
    qat_out = qat_forward(tensors, meta, arch, task.x_test)
    if task.kind == "classification":
        assert np.mean(pred == qat_out.argmax(axis=1)) >= 0.99
    else:
        scale = float(np.std(qat_out))
        assert np.median(np.abs(y[:, 0] - qat_out[:, 0])) <= 0.01 * scale
