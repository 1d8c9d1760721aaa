"""Model performance, one definition: R^2 clipped to [0, 1] (regression) or accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from inag.tasks.core import (
    TaskError,
)

# --------------------------------------------------------------------------- performance


def performance(kind: str, y_true: Any, y_pred: Any) -> float:
    """R^2 clipped to [0, 1] (regression) or accuracy (classification); 0.0 if y_pred diverged.

    Classification predictions are labels ``(n,)`` or scores/logits ``(n, K)`` (argmax taken);
    regression predictions are ``(n,)`` or ``(n, 1)``.
    """
    pred = np.asarray(y_pred)
    return float(performance_batch(kind, y_true, pred[None])[0])


def performance_batch(kind: str, y_true: Any, y_pred_batch: Any) -> np.ndarray:
    """:func:`performance` for B candidate nets at once: (B, n) or (B, n, K) -> (B,) float64."""
    if kind not in ("regression", "classification"):
        raise TaskError(f"kind must be regression or classification, found {kind!r}")
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred_batch)
    if truth.ndim != 1 or truth.shape[0] == 0:
        raise TaskError(f"y_true must be a non-empty 1-D array, found shape {truth.shape}")
    if not np.issubdtype(truth.dtype, np.number) or not np.isfinite(truth).all():
        raise TaskError("y_true must be finite numbers")
    if not np.issubdtype(pred.dtype, np.number) and pred.dtype != np.bool_:
        raise TaskError(f"predictions must be numeric, found dtype {pred.dtype}")
    n = truth.shape[0]
    if kind == "regression":
        if pred.ndim == 3 and pred.shape[2] == 1:
            pred = pred[..., 0]
        if pred.ndim != 2 or pred.shape[1] != n:
            raise TaskError(
                f"regression predictions must be shaped (B, {n}) or (B, {n}, 1), found "
                f"{pred.shape}"
            )
        return _r2_batch(truth.astype(np.float64), pred.astype(np.float64))
    if not np.all(truth == np.round(truth)):
        raise TaskError("classification y_true must hold integer class labels")
    if pred.ndim == 3 and pred.shape[1] == n:
        finite = np.isfinite(pred).all(axis=(1, 2))
        labels = np.argmax(pred, axis=2)
    elif pred.ndim == 2 and pred.shape[1] == n:
        finite = np.isfinite(pred).all(axis=1)
        labels = pred
    else:
        raise TaskError(
            f"classification predictions must be labels (B, {n}) or scores (B, {n}, K), found "
            f"{pred.shape}"
        )
    accuracy = np.mean(labels == truth[None, :], axis=1, dtype=np.float64)
    return np.where(finite, accuracy, 0.0)


def _r2_batch(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    finite = np.isfinite(pred).all(axis=1)
    safe = np.where(finite[:, None], pred, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        ss_res = np.sum((safe - truth[None, :]) ** 2, axis=1)
        ss_tot = float(np.sum((truth - truth.mean()) ** 2))
        # A constant target: only an exact prediction explains it.
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0.0 else np.where(ss_res == 0.0, 1.0, 0.0)
    r2 = np.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(finite, np.clip(r2, 0.0, 1.0), 0.0)


def r2(y_true: Any, y_pred: Any, clip: bool = True) -> float:
    """R^2 of one prediction vector, the same rules as :func:`performance` (a constant target:
    1 for an exact prediction, else 0; non-finite predictions: 0). ``clip=False`` keeps
    negative values (the surrogate encoder's fit is reported unclipped)."""
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    pred = np.asarray(y_pred, dtype=np.float64).reshape(1, -1)
    if clip:
        return float(_r2_batch(truth, pred)[0])
    if not np.isfinite(pred).all():
        return 0.0
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    ss_res = float(np.sum((pred[0] - truth) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot
