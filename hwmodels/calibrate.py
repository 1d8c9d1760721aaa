"""Calibration: fit a hardware model's fittable parameters to measured networks.

A model declares what may be fitted (``HardwareModel.fittable``: parameter names whose values
are :class:`inag.platform.Sourced` numbers, or tables of them by bit-width). The fit works on
any model through its validated public API only (rebuild with new parameters, ``total``), so a
plug-in model is calibrated the same way as the built-ins.

Method: robust least squares (scipy ``least_squares``, soft-L1 loss) on the *relative* error
``predicted / measured - 1``, over log-parameters (they stay positive), on at most ``max_fit``
nets chosen to span the measured plan; every other net is held out and reported. Parameters
the chosen nets do not constrain (a zero Jacobian column: conv throughput on an MLP-only plan)
keep their values and are reported as not determined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwmodels.base import HardwareModel, HardwareModelError
from hwmodels.plausible import RANGES as PLAUSIBLE
from inag.arch import ArchSpec
from inag.ir import layer_table_many

Slot = tuple[str, ...]  # ("mem_bytes_per_cycle",) or ("macs_per_cycle", "8")


def slot_name(slot: Slot) -> str:
    return slot[0] + "".join(f"[{k}]" for k in slot[1:])


def fittable_values(model: HardwareModel, runtime: str | None = None) -> dict[Slot, float]:
    """Start values of the model's fittable parameters, one entry per number."""
    out: dict[Slot, float] = {}
    for name, val in model.fittable_start(runtime).items():
        if isinstance(val, dict):
            for k, v in val.items():
                out[(name, str(k))] = float(v)
        else:
            out[(name,)] = float(val)
    return out


def with_values(
    model: HardwareModel, values: dict[Slot, float], sources: dict[Slot, str] | None = None
) -> HardwareModel:
    """A new model of the same class with ``values`` written into its parameters."""
    params = model.params.model_dump()
    for slot, v in values.items():
        leaf = {"value": float(v), "source": (sources or {}).get(slot, "calibration fit"),
                "kind": "measured"}  # fmt: skip
        if len(slot) == 1:
            params[slot[0]] = leaf
        else:
            table = dict(params.get(slot[0]) or {})
            table = {str(k): t for k, t in table.items()}
            table[slot[1]] = leaf
            params[slot[0]] = {int(k) if k.isdigit() else k: t for k, t in table.items()}
    return type(model)(model.platform, params)


@dataclass(frozen=True)
class Fit:
    """What a calibration changed and how well the model predicts before and after."""

    role: str
    model: str
    before: dict[str, float]  # slot name -> value
    after: dict[str, float]
    undetermined: tuple[str, ...]
    fit_ids: tuple[int, ...]  # indices into the measured list used for fitting
    measured: np.ndarray = field(repr=False)  # (N,) in the model's unit
    predicted_before: np.ndarray = field(repr=False)
    predicted_after: np.ndarray = field(repr=False)
    fitted_model: HardwareModel = field(repr=False)
    slots: dict[str, Slot] = field(default_factory=dict, repr=False)

    @property
    def held_out(self) -> np.ndarray:
        mask = np.ones(len(self.measured), bool)
        mask[list(self.fit_ids)] = False
        return np.flatnonzero(mask)

    def rel_err(self, after: bool = True, held_out: bool = True) -> np.ndarray:
        pred = self.predicted_after if after else self.predicted_before
        idx = self.held_out if held_out else np.arange(len(self.measured))
        return pred[idx] / self.measured[idx] - 1.0

    def within(self, tol: float = 0.10, after: bool = True) -> tuple[int, int]:
        err = self.rel_err(after)
        return int(np.sum(np.abs(err) <= tol)), len(err)


def choose_fit_set(archs: Sequence[ArchSpec], k: int) -> list[int]:
    """``k`` nets spanning the plan: greedy farthest points in (log MACs, depth, log bytes)."""
    n = len(archs)
    if k >= n:
        return list(range(n))
    t = layer_table_many(list(archs))
    macs = np.log10(np.maximum(t.macs.sum(axis=1), 1.0))
    wts = np.log10(np.maximum(t.weights.sum(axis=1), 1.0))
    depth = np.array([a.depth for a in archs], dtype=float)
    feats = np.stack([macs, depth, wts], axis=1)
    span = feats.max(axis=0) - feats.min(axis=0)
    feats = (feats - feats.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen = [int(np.argmin(macs)), int(np.argmax(macs))][: max(1, min(k, 2))]
    dist = np.min(np.linalg.norm(feats[:, None, :] - feats[chosen][None], axis=2), axis=1)
    while len(chosen) < k:
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[j], axis=1))
    return sorted(set(chosen))


def fit(
    model: HardwareModel,
    role: str,
    archs: Sequence[ArchSpec],
    measured: Sequence[float],
    max_fit: int = 10,
    fit_ids: Sequence[int] | None = None,
    starts: int = 8,
    starts_seed: int = 0,
    runtime: str | None = None,
) -> Fit:
    """Fit ``model``'s fittable parameters to ``measured`` (in the model's quantity's unit)."""
    from scipy.optimize import least_squares

    archs = list(archs)
    y = np.asarray(measured, dtype=np.float64)
    if len(archs) != len(y) or len(y) == 0:
        raise HardwareModelError(f"need one measurement per arch, found {len(archs)} / {len(y)}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise HardwareModelError("measurements must be finite and > 0")
    start = fittable_values(model, runtime)
    if not start:
        raise HardwareModelError(f"model {model.name!r} declares no fittable parameters")
    slots = list(start)
    ids = list(fit_ids) if fit_ids is not None else choose_fit_set(archs, max_fit)
    table_all = layer_table_many(archs)
    table_fit = layer_table_many([archs[i] for i in ids])
    y_fit = y[ids]
    x0 = np.log(np.maximum([start[s] for s in slots], 1e-12))
    # the fit stays inside the plausible range of each parameter (what validate accepts):
    # a parameter the data pushes to a bound (compute hidden behind overheads) ends there
    lo_all, hi_all = x0 - 25.0, x0 + 25.0
    for k, slot in enumerate(slots):
        lo, hi, _ = PLAUSIBLE.get(slot[0], (0.0, float("inf"), ""))
        lo_all[k] = max(lo_all[k], math.log(max(lo, 1e-9)))
        hi_all[k] = min(hi_all[k], math.log(hi) if math.isfinite(hi) else hi_all[k])
        x0[k] = min(max(x0[k], lo_all[k] + 1e-9), hi_all[k] - 1e-9)

    def build(x: np.ndarray) -> HardwareModel:
        return with_values(model, dict(zip(slots, np.exp(x), strict=True)))

    def residual(x: np.ndarray) -> np.ndarray:
        try:
            pred = build(x).total(table_fit)
        except (HardwareModelError, ValueError):
            return np.full(len(y_fit), 1e3)
        return pred / y_fit - 1.0

    # What the chosen nets constrain, judged at the start (at the optimum a parameter driven
    # towards zero has a vanishing derivative too, yet it is determined: it is ~0)
    r0 = residual(x0)
    sens = np.array(
        [np.abs(residual(x0 + 1e-3 * np.eye(len(x0))[i]) - r0).sum() for i in range(len(x0))]
    )
    # a parameter moving the fit nets 10^4 times less than the strongest one is not determined
    determined = sens > 1e-4 * max(1e-12, float(sens.max(initial=0.0)))
    free = np.flatnonzero(determined)
    if free.size == 0:
        raise HardwareModelError(
            f"none of {model.name!r}'s fittable parameters changes its predictions for these nets"
        )

    def full(z: np.ndarray) -> np.ndarray:
        x = x0.copy()
        x[free] = z
        return x

    # Multi-start: a max(compute, memory) model is flat in a bound that binds nowhere at the
    # start, so one start can stall where the other bound would fit better (seeded, so a
    # calibration is reproducible).
    rng = np.random.default_rng(starts_seed)
    lo, hi = lo_all[free], hi_all[free]
    best = None
    for k in range(max(1, starts)):
        z0 = x0[free] if k == 0 else np.clip(x0[free] + rng.normal(0, 2.0, free.size), lo, hi)
        res = least_squares(
            lambda z: residual(full(z)), z0, loss="soft_l1", f_scale=0.05, diff_step=1e-4,
            max_nfev=200 * len(slots), bounds=(lo, hi),
        )  # fmt: skip
        if best is None or res.cost < best.cost - 1e-12:
            best = res
    assert best is not None
    x = full(best.x)
    fitted = build(x)
    before = {slot_name(s): start[s] for s in slots}
    after = {slot_name(s): float(math.exp(v)) for s, v in zip(slots, x, strict=True)}
    return Fit(
        role=role,
        model=model.name,
        before=before,
        after=after,
        undetermined=tuple(slot_name(s) for s, d in zip(slots, determined, strict=True) if not d),
        fit_ids=tuple(ids),
        measured=y,
        predicted_before=model.total(table_all),
        predicted_after=fitted.total(table_all),
        fitted_model=fitted,
        slots={slot_name(s): s for s in slots},
    )


def calibrated_descriptor(
    raw: dict[str, Any], result: Fit, source: str, calibration: dict[str, Any]
) -> dict[str, Any]:
    """``raw`` (a descriptor's YAML mapping) with the fitted values written in as
    ``{value, source, kind: measured}`` and its ``calibration:`` section replaced."""
    import copy

    out = copy.deepcopy(raw)
    params = out["cost_models"][result.role].setdefault("params", {})
    for name, slot in result.slots.items():
        if name in result.undetermined:
            continue
        leaf = {"value": float(f"{result.after[name]:.6g}"), "source": source, "kind": "measured"}
        if len(slot) == 1:
            params[slot[0]] = leaf
        else:
            table = params.get(slot[0]) or {}
            key: Any = int(slot[1]) if slot[1].isdigit() else slot[1]
            table = {k: v for k, v in table.items() if str(k) != slot[1]}
            table[key] = leaf
            params[slot[0]] = table
    out["calibration"] = calibration
    return out
