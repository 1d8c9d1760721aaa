"""The oracle: a numpy interpreter of a :class:`QuantizedNet` in integers only.

Every backend (onnxruntime, TVM, the standalone C) must reproduce :func:`run` bit for bit. It
is written for obviousness rather than speed: int64 everywhere, the requantization rule taken
verbatim from ``export.quant.requantize``, max-pool on output codes.

One shortcut, proved rather than assumed: products are summed by a float64 matrix multiply
(BLAS) when every partial sum is bounded by ``max|x| * sum|w| + |b| < 2^53`` — then every
intermediate is an integer float64 represents exactly, in any summation order, so the result
equals the int64 sum. The bound is checked per call; otherwise int64 matmul is used.
"""

from __future__ import annotations

import numpy as np

from export import quant
from export.errors import ExportError
from export.qnet import INPUT_QMAX, INT32_MAX, QuantizedNet, QUnit

_EXACT_F64 = 2**53


def _matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact int64 ``a @ w`` for integer arrays (float64 BLAS when provably exact)."""
    amax = int(np.max(np.abs(a))) if a.size else 0
    wsum = int(np.max(np.abs(w.astype(np.int64)).sum(axis=0))) if w.size else 0
    if amax * wsum < _EXACT_F64:
        return np.rint(a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ w.astype(np.int64)


def _im2col(a: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """(N, C, H, W) -> (N, OH, OW, C*k*k) patches, zero padded ('same' for odd k)."""
    n, c, _, _ = a.shape
    p = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(p, (k, k), axis=(2, 3))  # N,C,OH1,OW1,k,k
    win = win[:, :, ::stride, ::stride]
    oh, ow = win.shape[2], win.shape[3]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, c * k * k)


def accumulate(unit: QUnit, a: np.ndarray) -> np.ndarray:
    """The int32 accumulator (as int64) of ``unit`` on input codes ``a`` (N, *in_shape)."""
    n = a.shape[0]
    a = a.reshape(n, *unit.in_shape)
    if unit.kind == "dense":
        acc = _matmul(a, unit.weight) + unit.bias.astype(np.int64)
    else:
        cols = _im2col(a, unit.kernel, unit.stride, unit.pad)
        _, oh, ow, kk = cols.shape
        acc = _matmul(cols.reshape(-1, kk), unit.weight_matrix())
        acc = (
            acc.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)
            + unit.bias.astype(np.int64)[None, :, None, None]
        )
        if acc.shape[1:] != unit.conv_shape:  # the IR is the shape authority
            raise AssertionError(f"conv shape {acc.shape[1:]} != IR {unit.conv_shape}")
    if acc.size and int(np.max(np.abs(acc))) > INT32_MAX:  # excluded by check_int32_bounds
        raise AssertionError(f"unit {unit.index}: accumulator left int32")
    return acc


def maxpool(q: np.ndarray, p: int) -> np.ndarray:
    """Floor max-pool of (N, C, H, W) codes with window = stride = ``p``."""
    n, c, h, w = q.shape
    ph, pw = h // p, w // p
    return q[:, :, : ph * p, : pw * p].reshape(n, c, ph, p, pw, p).max(axis=(3, 5))


def run_unit(unit: QUnit, a: np.ndarray) -> np.ndarray:
    """Output codes of one unit (int64): hidden -> 0..2^b-1, head -> the int32 accumulator."""
    acc = accumulate(unit, a)
    if unit.head:
        return acc
    assert unit.m0 is not None and unit.shift is not None
    q = quant.requantize(acc, unit.m0, unit.shift, 0, unit.qmax)
    if unit.kind == "conv" and unit.pool > 1:
        q = maxpool(q, unit.pool)
    return q


def check_input_codes(net: QuantizedNet, x_codes: np.ndarray) -> np.ndarray:
    x = np.asarray(x_codes)
    if not np.issubdtype(x.dtype, np.integer):
        raise ExportError(f"input codes must be integers (int8), found {x.dtype}")
    if x.ndim < 1 or tuple(x.shape[1:]) != net.input_shape:
        raise ExportError(f"input codes must be shaped (N, *{net.input_shape}), found {x.shape}")
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ExportError("input codes must fit int8 (-128..127)")
    return x


def run(net: QuantizedNet, x_codes: np.ndarray) -> np.ndarray:
    """int8 input codes (N, *input_shape) -> int32 head accumulators (N, output_size).

    Input codes are first clamped to [-127, 127] (the scheme's symmetric range; -128 is
    never produced by ``quantize_input`` but every backend clamps it the same way).
    """
    x = check_input_codes(net, x_codes)
    a = np.clip(x.astype(np.int64), -INPUT_QMAX, INPUT_QMAX)
    for unit in net.units:
        a = run_unit(unit, a)
    return a.reshape(len(x), net.output_size).astype(np.int32)


def quantize_input(net: QuantizedNet, x: np.ndarray) -> np.ndarray:
    """Float inputs -> int8 codes by the scheme (round half up, clamp to +-127)."""
    x = np.asarray(x, dtype=np.float64)
    return quant.quantize_input(x.reshape(len(x), *net.input_shape), net.input_scale)


def dequantize_output(net: QuantizedNet, acc: np.ndarray) -> np.ndarray:
    return np.asarray(acc, dtype=np.float64) * net.output_scale


def forward(net: QuantizedNet, x: np.ndarray) -> np.ndarray:
    """The integer model as a float function (quantize, integer network, dequantize): what
    a deployed artifact computes, used to measure the task performance of the integer model."""
    return dequantize_output(net, run(net, quantize_input(net, x)))
