"""The one integer-only quantization scheme (Jacob et al. 2017), used by training and export.

Quantization-aware training (``inag.train.trainer``) fakes exactly these rules in float, and the
exporters (numpy reference, ONNX, TVM, C) implement them in integers, so a trained network
converts without changing its function.

Per unit i with bit-width b = B(i):

- **weights**: symmetric, per tensor: ``q_w = clamp(round_half_up(w / s_w), -Q, Q)`` with
  ``Q = 2^(b-1) - 1`` and ``s_w = max|w| / Q``; int8 container (2 bits give {-1, 0, 1}).
- **output activations** (after ReLU, so never negative): unsigned, zero point 0,
  ``q = clamp(round_half_up(y / s_a), 0, 2^b - 1)``, ``s_a = range / (2^b - 1)`` where the range
  is an EMA of the observed maximum during training; uint8 container. Zero point 0 keeps zero
  padding exact and needs no zero-point correction terms anywhere.
- **network input**: signed symmetric 8 bits, ``s_x = max|x_train| / 127``; int8 container.
- **bias**: int32 at scale ``s_in * s_w``.
- **accumulator**: int32, ``acc = sum(q_in * q_w) + q_bias``.
- **requantization**: ``M = s_in * s_w / s_out`` is written ``M0 / 2^r`` with ``M0`` an int32 in
  [2^30, 2^31) and ``r`` in 1..62; then ``q_out = clamp((acc * M0 + 2^(r-1)) >> r, 0, 2^b - 1)``
  in int64 with an arithmetic shift: **round half up** (towards +inf). ReLU is that clamp at 0.
- **head**: no requantization: the int32 accumulator is the output, dequantized at the boundary
  as ``s_in * s_w * acc``.

Torch is imported lazily: only the training side needs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

INPUT_BITS = 8
ACC_BITS = 32
M0_BITS = 31  # M0 in [2^30, 2^31): a Q31 fixed-point mantissa
MAX_SHIFT = 62


class QuantError(ValueError):
    """A value cannot be represented in the quantization scheme."""


def weight_qmax(bits: int | np.ndarray) -> Any:
    """Largest weight code at ``bits`` (symmetric: codes are -Q..Q)."""
    return 2 ** (np.asarray(bits) - 1) - 1 if isinstance(bits, np.ndarray) else 2 ** (bits - 1) - 1


def act_qmax(bits: int | np.ndarray) -> Any:
    """Largest activation code at ``bits`` (unsigned: codes are 0..2^b - 1)."""
    return 2 ** np.asarray(bits) - 1 if isinstance(bits, np.ndarray) else 2**bits - 1


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int | np.integer) or not 2 <= int(bits) <= 8:
        raise QuantError(f"bit-width must be an integer in 2..8, found {bits!r}")


def round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def weight_scale(w: np.ndarray, bits: int) -> float:
    _check_bits(bits)
    amax = float(np.max(np.abs(w))) if np.size(w) else 0.0
    return amax / weight_qmax(bits) if amax > 0 else 1.0


def quantize_weights(
    w: np.ndarray, bits: int, scale: float | None = None
) -> tuple[np.ndarray, float]:
    """Integer weight codes (int8) and their scale."""
    s = weight_scale(w, bits) if scale is None else scale
    q = np.clip(round_half_up(np.asarray(w) / s), -weight_qmax(bits), weight_qmax(bits))
    return q.astype(np.int8), s


def quantize_bias(b: np.ndarray, scale: float) -> np.ndarray:
    q = round_half_up(np.asarray(b, dtype=np.float64) / scale)
    lim = 2 ** (ACC_BITS - 1) - 1
    if np.any(np.abs(q) > lim):
        raise QuantError(f"bias does not fit int32 at scale {scale:g}")
    return q.astype(np.int32)


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    q = np.clip(
        round_half_up(np.asarray(x) / scale), -weight_qmax(INPUT_BITS), weight_qmax(INPUT_BITS)
    )
    return q.astype(np.int8)


def input_scale(x_train: np.ndarray) -> float:
    amax = float(np.max(np.abs(x_train))) if np.size(x_train) else 0.0
    return amax / weight_qmax(INPUT_BITS) if amax > 0 else 1.0


def act_scale(range_max: float, bits: int) -> float:
    _check_bits(bits)
    return float(range_max) / act_qmax(bits) if range_max > 0 else 1.0


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m`` as ``(M0, r)`` with ``m ≈ M0 / 2^r``, M0 in [2^30, 2^31), r in 1..62."""
    if not math.isfinite(m) or m <= 0:
        raise QuantError(f"requantization multiplier must be finite and > 0, found {m!r}")
    mant, exp = math.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    m0 = round(mant * (1 << M0_BITS))
    if m0 == 1 << M0_BITS:
        m0 //= 2
        exp += 1
    r = M0_BITS - exp
    if r < 1:
        raise QuantError(
            f"requantization multiplier {m:g} is too large (>= 2^30): the output "
            "scale is far smaller than the input and weight scales"
        )
    if r > MAX_SHIFT:  # the multiplier is below 2^-31: every output rounds to 0
        m0 >>= min(r - MAX_SHIFT, M0_BITS)
        r = MAX_SHIFT
    return int(m0), int(r)


def requantize(acc: np.ndarray, m0: int, shift: int, qmin: int, qmax: int) -> np.ndarray:
    """The integer requantization rule: ``clamp((acc * M0 + 2^(r-1)) >> r, qmin, qmax)``."""
    a = np.asarray(acc, dtype=np.int64)
    y = (a * np.int64(m0) + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)
    return np.clip(y, qmin, qmax)


# ---------------------------------------------------------------------------- torch side
def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise ImportError(
            "quantization-aware training needs torch: pip install torch==2.13.0"
        ) from exc
    return torch


_STE: Any = None


def ste_round_half_up(x: Any) -> Any:
    """Exactly ``floor(x + 0.5)`` forward, identity gradient (straight-through estimator)."""
    global _STE
    if _STE is None:
        torch = _torch()

        class _RoundHalfUp(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, v: Any) -> Any:  # noqa: ARG004
                return torch.floor(v + 0.5)

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:  # noqa: ARG004
                return grad

        _STE = _RoundHalfUp
    return _STE.apply(x)


def fake_quant_weight(w: Any, qmax: Any, reduce_dims: tuple[int, ...]) -> Any:
    """Fake-quantize weights per net: ``qmax`` broadcasts against ``w``'s leading dims.

    ``reduce_dims`` are the dims one net's tensor spans (its scale is their max |w|).
    """
    torch = _torch()
    amax = w.detach().abs().amax(dim=reduce_dims, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(ste_round_half_up(w / scale), -qmax, qmax)
    return q * scale, scale


def fake_quant_act(y: Any, scale: Any, qmax: Any) -> Any:
    """Fake-quantize post-ReLU activations: codes 0..qmax at ``scale`` (STE inside range)."""
    torch = _torch()
    q = torch.clamp(ste_round_half_up(y / scale), torch.zeros_like(qmax), qmax)
    return q * scale
