"""What the trainer tests share (test_trainer, test_trainer_cnn, test_export_trained).

Import the names a module uses (``from trainer_helpers import ENGINE, one_torch_thread``); an
imported fixture is registered in that module under its name, as in ``nagan_fixtures``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from export import quant
from inag.arch import ArchSpec
from inag.space import load_space
from inag.train import kernels
from inag.train.trainer import TrainResult, plain_model

# Both engines run every behavioural test; the C one needs a C compiler (CI installs gcc).
ENGINE = pytest.mark.parametrize(
    "engine",
    [
        pytest.param(
            "c", marks=pytest.mark.skipif(not kernels.available(), reason="no C compiler here")
        ),
        "torch",
    ],
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: the dataset builder's setting, fastest for these tiny nets, and
    immune to the OpenMP stalls that two threads suffer on a 2-core machine shared with other
    processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample_archs(task: Any, n: int, seed: int, space: str = "mlp") -> list[ArchSpec]:
    """``n`` architectures of the search space ``space`` bound to ``task``, sampled from
    ``seed``."""
    bound = load_space(space).bind(task.input_shape, task.output_size)
    return bound.sample_many(np.random.default_rng(seed), n)


def split_diverged(results: Sequence[TrainResult]) -> tuple[list[TrainResult], list[TrainResult]]:
    """The failed and the trained ``results`` of a chunk where some nets diverge, some not
    (both must occur); a failed net says that it diverged and carries no score."""
    failed = [r for r in results if r.status == "failed"]
    ok = [r for r in results if r.status == "ok"]
    assert failed and ok, [r.status for r in results]
    for r in failed:
        assert r.reason.startswith("diverged: non-finite loss at epoch")
        assert r.performance == 0.0 and math.isnan(r.final_loss)
    return failed, ok


def qat_forward(
    tensors: dict[str, np.ndarray], meta: dict[str, str], arch: ArchSpec, x: np.ndarray
) -> np.ndarray:
    """The trainer's own fake-quantized forward (its plain model in eval mode) of the net that
    ``train_final`` returned as ``tensors`` and ``meta``, on the inputs ``x``."""
    s_x = float(meta["input_scale"])
    model = plain_model(arch, s_x, 0, 0.9)
    with torch.no_grad():
        for i in range(arch.depth + 1):
            model.weights[i].copy_(torch.from_numpy(tensors[f"unit{i}.weight"]))
            model.biases[i].copy_(torch.from_numpy(tensors[f"unit{i}.bias"]))
        model.act_max[: arch.depth] = torch.from_numpy(tensors["act_max"])
    model.eval()
    model.quant_on = True
    xq = quant.quantize_input(x.reshape(len(x), -1), s_x).astype(np.float32) * np.float32(s_x)
    with torch.no_grad():
        return model(torch.from_numpy(xq)).numpy()
