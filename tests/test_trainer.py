"""Tests for the quantization rules (export.quant) and the QAT trainers (inag.train.trainer).

The batched trainer is checked against ``train_single`` -- ordinary PyTorch autograd and
``torch.optim.Adam`` on one net -- which is the independent reference: same scheme, same
initialization, same data order. Everything runs on real data (data_a, digits), no mocks.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import (  # noqa: F401 - a fixture
    ENGINE,
    one_torch_thread,
    sample_archs,
    split_diverged,
)

from export import quant
from inag.arch import ArchSpec, LayerSpec
from inag.tasks import load_task
from inag.train import kernels
from inag.train.trainer import (
    BatchedMLPTrainer,
    TrainerConfig,
    _affine,
    _Plan,
    _State,
    _widths,
    choose_grid,
    init_dense,
    pad_widths,
    resolve_engine,
    train_single,
)


@pytest.fixture(scope="module")
def data_a_small():
    return load_task("data_a", seed=0, max_train=512)


# ============================================================================ quantization rules
@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=2.0**-32, max_value=2.0**29))
def test_quantize_multiplier_round_trip(m):
    # (multipliers within 2^-31 of 2^30 round up to r = 0 and are refused; real ones are < 1)
    m0, r = quant.quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31
    assert 1 <= r <= quant.MAX_SHIFT
    assert abs(Fraction(m0, 2**r) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**30)


@pytest.mark.parametrize("m", [1.0, 0.5, 1 - 2.0**-40, 2.0**-31, 0.999999999, 2.0**29 * 1.5])
def test_quantize_multiplier_edges(m):
    m0, r = quant.quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31  # a mantissa rounding up to 2^31 is renormalized
    assert abs(m0 / 2**r - m) <= m * 2.0**-30


def test_quantize_multiplier_tiny_and_invalid():
    m0, r = quant.quantize_multiplier(2.0**-40)  # below 2^-32: shift saturates at 62
    assert r == quant.MAX_SHIFT
    assert m0 / 2**r == pytest.approx(2.0**-40, rel=2.0**-20)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 2.0**30, 1e12):
        with pytest.raises(quant.QuantError):
            quant.quantize_multiplier(bad)


def _half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=20),
    st.floats(min_value=2.0**-20, max_value=4.0),
)
def test_requantize_is_round_half_up(acc, m):
    m0, r = quant.quantize_multiplier(m)
    got = quant.requantize(np.array(acc, dtype=np.int32), m0, r, -(2**40), 2**40)
    want = [_half_up(Fraction(a * m0, 2**r)) for a in acc]
    assert got.tolist() == want


def test_requantize_ties_go_up_also_below_zero():
    m0, r = 2**30, 31  # M = 1/2 exactly: every odd accumulator is a tie
    acc = np.array([-5, -3, -1, 1, 3, 5], dtype=np.int32)
    assert quant.requantize(acc, m0, r, -100, 100).tolist() == [-2, -1, 0, 1, 2, 3]
    # the same rule in float (the training side) agrees
    assert quant.round_half_up(acc / 2).tolist() == [-2, -1, 0, 1, 2, 3]
    t = quant.ste_round_half_up(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]))
    assert t.tolist() == [-2, -1, 0, 1, 2, 3]
    # the clamp: ReLU at 0 and the code range at the top
    assert quant.requantize(acc, m0, r, 0, 1).tolist() == [0, 0, 0, 1, 1, 1]


def test_ste_round_passes_gradient_through():
    x = torch.tensor([-1.7, -0.5, 0.2, 3.5], requires_grad=True)
    quant.ste_round_half_up(x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_codes_symmetric_in_range(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(33, 17))
    q, s = quant.quantize_weights(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8
    assert quant.weight_qmax(bits) == qmax
    assert q.min() >= -qmax and q.max() <= qmax
    assert np.abs(q).max() == qmax  # the largest |w| maps to the end of the range
    assert s == pytest.approx(np.abs(w).max() / qmax)
    assert np.all(np.abs(q * s - w) <= s / 2 + 1e-12)
    if bits == 2:
        assert set(np.unique(q)) <= {-1, 0, 1}
    # the torch (training) side gives the same values, code for code
    wt, st_ = quant.fake_quant_weight(torch.from_numpy(w), torch.tensor(float(qmax)), (0, 1))
    assert float(st_) == pytest.approx(s, rel=1e-12)
    np.testing.assert_array_equal(np.round(wt.numpy() / s), q)


@pytest.mark.parametrize("bits", range(2, 9))
def test_activation_codes_unsigned_in_range(bits):
    qmax = 2**bits - 1
    assert quant.act_qmax(bits) == qmax
    s = quant.act_scale(6.0, bits)
    assert s == pytest.approx(6.0 / qmax)
    y = torch.linspace(-3, 9, 1001, dtype=torch.float64)
    fq = quant.fake_quant_act(y, torch.tensor(s, dtype=torch.float64), torch.tensor(float(qmax)))
    codes = fq / s
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    assert codes.min() == 0 and codes.max() == qmax
    assert torch.all(fq[y <= 0] == 0)  # ReLU folded into the clamp, zero point 0


def test_bit_width_bounds_and_input_codes():
    for bad in (1, 9, 0):
        with pytest.raises(quant.QuantError):
            quant.act_scale(1.0, bad)
        with pytest.raises(quant.QuantError):
            quant.weight_scale(np.ones(3), bad)
    x = np.array([-2.0, -1.0, 0.0, 0.3, 2.0])
    s = quant.input_scale(x)
    assert s == pytest.approx(2.0 / 127)
    q = quant.quantize_input(x, s)
    assert q.dtype == np.int8 and q.tolist()[0] == -127 and q.tolist()[-1] == 127


# ============================================================================ trainer config
def test_trainer_config_validation_and_hash():
    for bad in (
        {"epochs": 0},
        {"lr": 0.0},
        {"restarts": 0},
        {"quant_delay": 1.0},
        {"schedule": "step"},
        {"restart_score": "median"},
    ):
        with pytest.raises(ValueError):
            TrainerConfig(**bad)
    a, b = TrainerConfig(), TrainerConfig(epochs=41)
    assert a.config_hash() == TrainerConfig().config_hash() != b.config_hash()
    assert a.lr_at(0, 100) == pytest.approx(a.lr)
    assert a.lr_at(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert TrainerConfig(schedule="constant").lr_at(73, 100) == a.lr
    assert a.restart_score == "mean"
    assert TrainerConfig(restart_score="best").config_hash() != a.config_hash()


def test_best_of_restarts_recipe_keeps_its_original_hash():
    """Datasets built before ``restart_score`` existed (best on validation, 40 epochs, 3
    restarts) still match their recipe: the field is left out of the hash when 'best'."""
    old = TrainerConfig(epochs=40, restarts=3, restart_score="best")
    assert old.config_hash() == "4397224b608b05ec"  # TrainerConfig().config_hash() before
    # a stored record of that time has no restart_score: it reads back as "best"
    record = {k: v for k, v in asdict(old).items() if k != "restart_score"}
    assert TrainerConfig.from_record(record) == old
    assert TrainerConfig.from_record(asdict(TrainerConfig())) == TrainerConfig()
    with pytest.raises(ValueError, match="unknown trainer setting.*'warmup'"):
        TrainerConfig.from_record({**record, "warmup": 3})


def test_padding_grid():
    assert pad_widths([1, 3, 17, 1], (4, 32)) == [1, 4, 32, 1]
    widths = [[1, 2, 64, 1], [1, 4, 1], [1, 48, 48, 1]]
    grid = choose_grid(widths, 256)
    assert grid[-1] == 64  # the largest hidden width is always kept
    assert set(grid) <= {2, 4, 48, 64}
    assert choose_grid([[64, 10]], 256) == ()  # no hidden layer, no grid


# ============================================================================ batched trainer
CFG = TrainerConfig(epochs=3, restarts=1)


@ENGINE
def test_batched_matches_plain_reference(data_a_small, engine):
    """16 nets in one chunk vs each trained alone by the plain autograd loop."""
    archs = sample_archs(data_a_small, 16, seed=1)
    batched = BatchedMLPTrainer(data_a_small, CFG, engine=engine).train(archs)
    plain = [train_single(a, data_a_small, CFG) for a in archs]
    assert [r.arch_id for r in batched] == [a.arch_id for a in archs]
    assert all(r.status == "ok" for r in batched + plain)
    pairs = zip(batched, plain, strict=True)
    d_perf = np.array([abs(b.performance - p.performance) for b, p in pairs])
    assert d_perf.mean() <= 1e-3 and d_perf.max() <= 1e-2, d_perf
    for b, p in zip(batched, plain, strict=True):
        assert b.final_loss == pytest.approx(p.final_loss, rel=1e-3)
    perf = np.array([r.performance for r in batched])
    assert np.all((perf >= 0) & (perf <= 1)) and perf.max() > 0.3  # they do learn


def test_c_engine_is_bit_identical_alone_in_a_chunk_and_on_any_thread_count(data_a_small):
    """The C engine trains each net alone, so nothing about the call can move its numbers:
    a resumed dataset build writes exactly what an uninterrupted one would have."""
    if not kernels.available():
        pytest.skip("no C compiler here")
    archs = sample_archs(data_a_small, 10, seed=2)
    cfg = TrainerConfig(epochs=3, restarts=2)

    def key(res):
        return [(r.arch_id, r.status, r.performance, r.final_loss) for r in res]

    ref = BatchedMLPTrainer(data_a_small, cfg, engine="c", threads=1).train(archs)
    two = BatchedMLPTrainer(data_a_small, cfg, engine="c", threads=2).train(archs)
    alone = [BatchedMLPTrainer(data_a_small, cfg, engine="c").train([a])[0] for a in archs[:4]]
    reordered = BatchedMLPTrainer(data_a_small, cfg, engine="c").train(archs[::-1])[::-1]
    assert key(two) == key(ref)
    assert key(alone) == key(ref[:4])
    assert key(reordered) == key(ref)


def test_engine_choice():
    assert resolve_engine("torch") == "torch"
    assert resolve_engine("auto") == ("c" if kernels.available() else "torch")
    with pytest.raises(ValueError, match="available: auto, c, torch"):
        resolve_engine("cuda")


def test_without_a_compiler_auto_falls_back_to_torch(monkeypatch, tmp_path):
    """No C compiler on PATH and an empty kernel cache: "auto" trains with torch, and an
    explicit "c" is a clear error that says what to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path / "cache"))
    caches = (kernels.library_path, kernels.qat_library, kernels.available)
    for f in caches:
        f.cache_clear()
    try:
        assert not kernels.available()
        assert resolve_engine("auto") == "torch"
        with pytest.raises(kernels.KernelUnavailable, match="no C compiler found"):
            resolve_engine("c")
    finally:
        for f in caches:
            f.cache_clear()


def test_kernel_is_compiled_once_per_cache(monkeypatch, tmp_path):
    if not kernels.available():
        pytest.skip("no C compiler here")
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path))
    kernels.library_path.cache_clear()
    try:
        lib = kernels.library_path()
        assert lib.parent == tmp_path / "kernels" and lib.exists()
        stamp = lib.stat().st_mtime_ns
        kernels.library_path.cache_clear()
        assert kernels.library_path() == lib and lib.stat().st_mtime_ns == stamp
        # no temp files left: the library and the sha256 recorded when it was built
        assert sorted(p.name for p in lib.parent.iterdir()) == [lib.name, lib.name + ".sha256"]
    finally:
        kernels.library_path.cache_clear()


def test_batched_is_deterministic_and_composition_independent(data_a_small):
    """Same chunk twice: identical numbers. Alone or in another chunk: equal up to float
    summation order (the padding grid of a chunk depends on its members, and a bmm over a
    zero-padded inner dimension may sum in another order)."""
    archs = sample_archs(data_a_small, 12, seed=2)
    tr = BatchedMLPTrainer(data_a_small, CFG, engine="torch")
    first = tr.train(archs)
    second = tr.train(archs)
    assert [(r.performance, r.final_loss, r.status) for r in first] == [
        (r.performance, r.final_loss, r.status) for r in second
    ]
    alone = [tr.train([a])[0] for a in archs]
    reordered = tr.train(archs[::-1])[::-1]
    for ref, other in ((first, alone), (first, reordered)):
        for r, o in zip(ref, other, strict=True):
            assert r.arch_id == o.arch_id
            assert abs(r.performance - o.performance) <= 1e-6
            assert o.final_loss == pytest.approx(r.final_loss, rel=1e-5)


@pytest.mark.parametrize("w_in, w_out", [(64, 1), (8, 1), (32, 48), (2, 10)])
def test_affine_of_a_net_does_not_depend_on_its_companions(w_in, w_out):
    """Bit for bit: a net's layer output is the same alone and among 37 others (a bmm with
    one output column is not, which made a regression net's training depend on its chunk)."""
    gen = torch.Generator().manual_seed(0)
    k, n = 38, 256
    a = torch.randn(k, n, w_in, generator=gen)
    w = torch.randn(k, w_in, w_out, generator=gen)
    b = torch.randn(k, 1, w_out, generator=gen)
    out = torch.empty(k, n, w_out)
    _affine(b, a, w, out)
    for j in (0, 17, k - 1):
        alone = torch.empty(1, n, w_out)
        _affine(b[j : j + 1], a[j : j + 1], w[j : j + 1], alone)
        assert torch.equal(out[j], alone[0])
    torch.testing.assert_close(out, torch.baddbmm(b, a, w), rtol=1e-5, atol=1e-5)


def _unpacked_restarts(tr: BatchedMLPTrainer, archs) -> dict[str, Any]:
    """The runs ``tr.train(archs)`` makes, trained again and unpacked: per arch and restart
    the test and validation performance, final loss and failure reason."""
    runs = tr.train_runs(archs)
    shape = (len(archs), tr.config.restarts)
    return {
        "test": runs.test.reshape(shape),
        "val": runs.val.reshape(shape),
        "loss": runs.loss.reshape(shape),
        "failed": np.array(runs.failed, dtype=object).reshape(shape),
    }


@ENGINE
def test_restart_score_best_picks_best_on_validation(data_a_small, engine):
    """Restart j of an arch starts from its own seeded init (restart 0 is the single-run
    init); the arch reports the test performance of the restart best on validation."""
    archs = sample_archs(data_a_small, 4, seed=3)
    cfg3 = TrainerConfig(epochs=3, restarts=3, restart_score="best")
    tr = BatchedMLPTrainer(data_a_small, cfg3, engine=engine)
    three = tr.train(archs)
    single = BatchedMLPTrainer(data_a_small, CFG, engine=engine).train(archs)
    runs = _unpacked_restarts(tr, archs)
    test, val = runs["test"], runs["val"]
    for i, (r3, r1) in enumerate(zip(three, single, strict=True)):
        assert r3.status == "ok"
        assert test[i, 0] == pytest.approx(r1.performance, abs=1e-6)
        assert r3.performance == pytest.approx(test[i, int(np.argmax(val[i]))], abs=1e-6)
    assert len({tuple(np.round(t, 6)) for t in test}) > 1  # restarts do differ


@ENGINE
def test_restart_score_mean_is_the_mean_over_restarts(data_a_small, engine):
    """'mean' labels an arch with the mean test performance of its restarts: the expected
    result of training it once, which varies less from seed to seed than the best of a few."""
    archs = sample_archs(data_a_small, 4, seed=3)
    cfg = TrainerConfig(epochs=3, restarts=3, restart_score="mean")
    tr = BatchedMLPTrainer(data_a_small, cfg, engine=engine)
    res = tr.train(archs)
    runs = _unpacked_restarts(tr, archs)
    for i, r in enumerate(res):
        assert r.status == "ok"
        assert r.performance == pytest.approx(runs["test"][i].mean(), abs=1e-6)
        assert r.final_loss == pytest.approx(runs["loss"][i].mean(), rel=1e-5)


@ENGINE
def test_restart_score_mean_counts_a_diverged_restart_as_zero(data_a_small, engine):
    archs = sample_archs(data_a_small, 8, seed=1)
    cfg = TrainerConfig(epochs=3, restarts=3, lr=1e4, restart_score="mean")
    tr = BatchedMLPTrainer(data_a_small, cfg, engine=engine)
    res = tr.train(archs)
    runs = _unpacked_restarts(tr, archs)
    mixed = 0
    for i, r in enumerate(res):
        ok = [j for j in range(3) if not runs["failed"][i, j]]
        if not ok:
            assert r.status == "failed" and r.performance == 0.0
            continue
        mixed += len(ok) < 3
        assert r.status == "ok"
        assert r.performance == pytest.approx(sum(runs["test"][i, j] for j in ok) / 3, abs=1e-6)
    assert mixed, "the case under test: an arch with some restarts diverged, some not"


@ENGINE
def test_diverging_nets_fail_and_the_others_go_on(data_a_small, engine):
    """lr=1e4 blows up most nets of a chunk (non-finite loss) but not all of them."""
    archs = sample_archs(data_a_small, 16, seed=1)
    cfg = TrainerConfig(epochs=3, restarts=1, lr=1e4)
    res = BatchedMLPTrainer(data_a_small, cfg, engine=engine).train(archs)
    failed, ok = split_diverged(res)
    for r in ok:
        assert r.reason == "" and math.isfinite(r.final_loss)
        assert 0.0 <= r.performance <= 1.0
    # the survivors trained exactly as they would have without the diverging neighbours
    survivors = [a for a, r in zip(archs, res, strict=True) if r.status == "ok"]
    again = BatchedMLPTrainer(data_a_small, cfg, engine=engine).train(survivors)
    assert [r.performance for r in again] == pytest.approx([r.performance for r in ok], abs=1e-6)
    # and the plain reference agrees on who diverges
    plain = [train_single(a, data_a_small, cfg) for a in archs]
    assert [p.status for p in plain] == [r.status for r in res]


@ENGINE
def test_classification_on_digits_beats_chance(engine):
    task = load_task("digits", seed=0)
    archs = sample_archs(task, 8, seed=0)
    cfg = TrainerConfig(epochs=5, restarts=1)
    res = BatchedMLPTrainer(task, cfg, engine=engine).train(archs)
    acc = np.array([r.performance for r in res])
    assert all(r.status == "ok" for r in res)
    assert np.all((acc >= 0) & (acc <= 1))
    assert acc.mean() > 0.15 and acc.max() > 0.4, acc  # chance is 0.1
    # the cross-entropy path matches the plain reference too
    for a, r in zip(archs[:3], res[:3], strict=True):
        assert train_single(a, task, cfg).performance == pytest.approx(r.performance, abs=1e-3)


def test_padded_units_stay_exactly_zero(data_a_small):
    """Padding is inert: padded weights, biases and Adam moments are exactly 0 after training."""
    archs = sample_archs(data_a_small, 16, seed=1)
    tr = BatchedMLPTrainer(data_a_small, CFG, engine="torch")
    plan = _Plan(archs, CFG.seed, CFG.batch_size)
    assert plan.padded_macs > plan.useful_macs  # this chunk does get padded
    state = _State(plan)
    tr._fit(plan, state, None)
    assert torch.isfinite(state.params).all()
    true_w = [_widths(a) for a in archs]
    n_pad = 0
    for li, classes in enumerate(plan.layers):
        nets = plan.members[li]
        for c in classes:
            n_w = c.k * c.w_in * c.w_out
            for vec in (state.params, state.m, state.v):
                w = vec[c.w_off : c.w_off + n_w].view(c.k, c.w_in, c.w_out)
                b0 = plan.n_weights + c.b_off
                b = vec[b0 : b0 + c.k * c.w_out].view(c.k, c.w_out)
                for j, i in enumerate(nets[c.start : c.start + c.k]):
                    t_in, t_out = true_w[i][li], true_w[i][li + 1]
                    pad = [w[j, t_in:, :], w[j, :, t_out:], b[j, t_out:]]
                    n_pad += sum(p.numel() for p in pad)
                    assert all(bool((p == 0).all()) for p in pad)
                    if vec is state.params:
                        assert bool((w[j, :t_in, :t_out] != 0).any())
    assert n_pad > 0


@ENGINE
def test_an_arch_whose_input_does_not_fit_the_task_is_refused(data_a_small, engine):
    """The engines train MLPs and CNNs (tests/test_trainer_cnn.py); a CNN on data_a's
    1-value input is refused before any work, naming both shapes."""
    cnn = ArchSpec("cnn", (1, 8, 8), 1, (LayerSpec(4, 8, "conv", kernel=3),))
    with pytest.raises(ValueError, match=r"1x8x8 \(64 values\); task 'data_a' gives 1"):
        BatchedMLPTrainer(data_a_small, CFG, engine=engine).train([cnn])
    mlp = ArchSpec("mlp", (3,), 1, (LayerSpec(4, 8),))
    with pytest.raises(ValueError, match="reads inputs of shape 3"):
        train_single(mlp, data_a_small, CFG)


QUALITY_CFG = TrainerConfig(epochs=20, restarts=1)


@pytest.fixture(scope="module")
def plain_64():
    """64 sampled data_a nets, each trained by the plain one-net loop (computed once)."""
    task = load_task("data_a", seed=0)
    archs = sample_archs(task, 64, seed=0)
    return task, archs, [train_single(a, task, QUALITY_CFG) for a in archs]


@pytest.mark.slow
@ENGINE
def test_quality_over_64_sampled_nets(plain_64, engine):
    """The issue's criterion: over 64 sampled data_a nets, mean |dR2| <= 0.02 between the
    batched trainer and the plain one-net loop (full data, 20 epochs, one initialization:
    ``train_single`` has no restarts)."""
    task, archs, plain = plain_64
    batched = BatchedMLPTrainer(task, QUALITY_CFG, engine=engine).train(archs)
    assert [b.status for b in batched] == [p.status for p in plain]
    d = np.array([abs(b.performance - p.performance) for b, p in zip(batched, plain, strict=True)])
    assert d.mean() <= 0.02, (d.mean(), d.max())
    perf = np.array([b.performance for b in batched])
    assert perf.min() < 0.3 and perf.max() > 0.9  # the sample spans the range


@pytest.mark.parametrize("n_in, n_out", [(1, 64), (64, 1), (48, 32), (2, 4), (64, 10), (7, 3)])
def test_init_is_torch_linear_default_bit_for_bit(n_in, n_out):
    """init_dense does its arithmetic in numpy (fast); the numbers are exactly those of the
    torch expression it replaced, so every engine and saved dataset keeps its inits."""
    for seed in range(20):
        gen, ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        w, b = init_dense(gen, n_in, n_out)
        bound = 1.0 / math.sqrt(n_in)
        assert torch.equal(w, (torch.rand(n_in, n_out, generator=ref) * 2 - 1) * bound)
        assert torch.equal(b, (torch.rand(n_out, generator=ref) * 2 - 1) * bound)
