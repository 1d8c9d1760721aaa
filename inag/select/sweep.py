"""The paper's Fig. 4b: sweep the condition, select per platform, plot the Pareto frontier.

For every condition c of a sweep (``--from 0.0 --to 1.0 --step 0.05`` by default) one bag is
generated and run through the platform's selecting stages, exactly as ``inag select`` does for
one condition (:func:`inag.select.generate_bag`, :func:`~inag.select.make_bag`,
:func:`~inag.select.build_stages`, :func:`~inag.select.run_stages`), except that a condition
nothing fits is recorded as empty instead of being re-conditioned: the sweep itself visits the
lower conditions. Every survivor becomes a point (normalized storage, energy and latency from
the platform's coster; normalized performance from the encoder); the top-ranked survivor is the
condition's pick. ``real=K`` trains the top K of each condition with the dataset's recipe
(:func:`inag.select.verify`, the path of ``select --verify``): they carry a measured
performance and the pick is the measured re-ranking's first.

The comparison: as many architectures as the sweep kept (distinct), drawn from the search
space's own sampler (the Monte Carlo sampler the datasets are built with: depth uniform, every
width and bit choice uniform) among those that pass the same platform stages except the
confidence stage (a random draw has no target condition), costed by the same coster and
estimated by the same encoder.

The Pareto frontier of a point set in (cost, performance) keeps the non-dominated points: no
other point costs at most as much and performs at least as well, strictly better in one.

Library code: nothing here prints. :func:`write_outputs` writes ``sweep.csv``, ``sweep.json``
and the two PNGs atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inag.arch import ArchSpec
from inag.nagan import Nagan
from inag.platform import Platform

COSTS = ("storage", "energy", "latency")  # recorded, normalized like the paper's Table 3
PLOTTED = ("storage", "energy")  # the PNGs: performance against these
MAX_CONDITIONS = 1001
RANDOM_BATCH = 4096
RANDOM_MAX_DRAWS_PER_POINT = 200  # give up on the comparison set after this many draws each
FILES = ("sweep.csv", "sweep.json", "pareto_storage.png", "pareto_energy.png")
CSV_COLUMNS = (
    "source",
    "condition",
    "rank",
    "picked",
    "arch_id",
    "summary",
    "generated_count",
    "estimate_c",
    "estimate_perf",
    "dist_f",
    "measured",
    "measured_why",
    "measured_perf",
    "measured_c",
    "storage_norm",
    "energy_norm",
    "latency_norm",
    "storage_bits",
    "energy_j",
    "latency_s",
    "front_storage",
    "front_energy",
)


class SweepError(ValueError):
    """Bad sweep input: the message says which value and what was expected."""


def conditions(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``start, start + step, ..., <= stop`` (rounded to 6 decimals), all in [0, 1]."""
    for name, v in (("--from", start), ("--to", stop), ("--step", step)):
        if not math.isfinite(v):
            raise SweepError(f"{name} must be a finite number, found {v}")
    if step <= 0:
        raise SweepError(f"--step must be > 0 (the distance between conditions), found {step:g}")
    for name, v in (("--from", start), ("--to", stop)):
        if not 0 <= v <= 1:
            raise SweepError(
                f"{name} {v:g} is outside [0, 1]: conditions are normalized performances "
                "(0 is the dataset's lowest, 1 its highest)"
            )
    if start > stop:
        raise SweepError(f"--from {start:g} is above --to {stop:g}; the sweep goes upwards")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_CONDITIONS:
        raise SweepError(
            f"--step {step:g} from {start:g} to {stop:g} gives {count:,} conditions; at most "
            f"{MAX_CONDITIONS:,} (a bag each): use a larger --step"
        )
    return tuple(round(start + i * step, 6) for i in range(count))


def condition_seed(seed: int, i: int) -> int:
    """The generator's noise seed for the ``i``-th condition (as ``inag evaluate`` does)."""
    return seed * 1000 + i


# ---------------------------------------------------------------------------- frontier
def pareto_front(cost: np.ndarray, perf: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, higher performance), by cost.

    Of several identical points one (the first) is kept. NaN points are ignored.
    """
    cost = np.asarray(cost, dtype=np.float64)
    perf = np.asarray(perf, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(cost) & np.isfinite(perf))
    # by cost, then higher performance first, then position: the first of a cost level wins
    order = ok[np.lexsort((ok, -perf[ok], cost[ok]))]
    front: list[int] = []
    best = -math.inf
    for i in order:
        if perf[i] > best:
            front.append(int(i))
            best = float(perf[i])
    return np.array(front, dtype=int)


def hypervolume(cost: np.ndarray, perf: np.ndarray, ref_cost: float = 1.0) -> float:
    """Area dominated by the frontier in [0, ref_cost] x [0, max perf] (perf clipped at 0)."""
    idx = pareto_front(cost, perf)
    if not len(idx):
        return 0.0
    c = np.clip(np.asarray(cost, dtype=np.float64)[idx], 0.0, ref_cost)
    p = np.clip(np.asarray(perf, dtype=np.float64)[idx], 0.0, None)
    nxt = np.append(c[1:], ref_cost)
    return float(np.sum((nxt - c) * p))


def coverage(
    a_cost: np.ndarray, a_perf: np.ndarray, b_cost: np.ndarray, b_perf: np.ndarray
) -> float:
    """Share of B's frontier points weakly dominated by some point of A (Zitzler's C(A, B))."""
    fb = pareto_front(b_cost, b_perf)
    fa = pareto_front(a_cost, a_perf)
    if not len(fb) or not len(fa):
        return float("nan")
    ac, ap = np.asarray(a_cost)[fa], np.asarray(a_perf)[fa]
    hit = [bool(np.any((ac <= b_cost[j]) & (ap >= b_perf[j]))) for j in fb]
    return float(np.mean(hit))


LEVELS = (0.5, 0.8, 0.9, 0.95)  # normalized performance levels of ``cost_to_reach``


def front_stats(cost: np.ndarray, perf: np.ndarray, ref_cost: float = 1.0) -> dict[str, Any]:
    """How wide a frontier is: its points, cost and performance spans, the dominated area up to
    ``ref_cost`` and, divided by it, the best performance reachable averaged over the budgets
    in [0, ref_cost]; the cheapest cost reaching each of ``LEVELS`` (None: never)."""
    cost = np.asarray(cost, dtype=np.float64)
    perf = np.asarray(perf, dtype=np.float64)
    idx = pareto_front(cost, perf)
    if not len(idx):
        return {"points": 0}
    c, p = cost[idx], perf[idx]
    hv = hypervolume(cost, perf, ref_cost)
    return {
        "points": int(len(idx)),
        "cost_min": float(c.min()),
        "cost_max": float(c.max()),
        "cost_width": float(c.max() - c.min()),
        "perf_min": float(p.min()),
        "perf_max": float(p.max()),
        "perf_width": float(p.max() - p.min()),
        "ref_cost": float(ref_cost),
        "hypervolume": hv,
        "mean_best_perf": hv / ref_cost,
        "cost_to_reach": {
            f"{lv:g}": float(c[p >= lv].min()) if (p >= lv).any() else None for lv in LEVELS
        },
    }


# ---------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class Points:
    """Candidates of one source (``inag`` or ``random``), arrays indexed like ``archs``."""

    source: str
    archs: tuple[ArchSpec, ...]
    condition: np.ndarray  # NaN for random draws
    rank: np.ndarray  # rank among the condition's survivors (1 = pick); 0 for random
    generated_count: np.ndarray
    estimate: np.ndarray  # encoder, normalized units
    dist_f: np.ndarray  # NaN for random draws
    norm: dict[str, np.ndarray]  # role -> normalized cost
    raw: dict[str, np.ndarray]  # role -> cost in the unit of RAW_UNITS
    measured: np.ndarray  # raw measured performance, NaN if not trained
    measured_why: tuple[str, ...]  # "top-k" (a condition's top K), "frontier" or ""

    def __len__(self) -> int:
        return len(self.archs)


RAW_UNITS = {"storage": "bits", "energy": "j", "latency": "s"}


@dataclass(frozen=True)
class ConditionResult:
    condition: float
    seed: int
    generated: int
    distinct: int
    funnel: tuple[tuple[str, int], ...]
    survivors: int
    start: int  # the condition's survivors are SweepResult.inag[start : start + survivors]
    trained: int

    @property
    def pick(self) -> int | None:
        """Index into SweepResult.inag of the condition's pick (its rank-1 survivor)."""
        return self.start if self.survivors else None


@dataclass(frozen=True)
class SweepResult:
    model: Nagan = field(repr=False)
    platform: str
    config: dict[str, Any]
    per_condition: tuple[ConditionResult, ...]
    inag: Points
    random: Points
    random_draws: int
    seconds: dict[str, float] = field(default_factory=dict)

    def perf_c(self, pts: Points) -> np.ndarray:
        """Normalized performance of the points: the encoder's estimate."""
        return pts.estimate

    def fronts(self) -> dict[str, dict[str, Any]]:
        """Frontier statistics per cost axis and source (estimated, and measured where nets
        were trained), and the cross coverage. The dominated area of every frontier of a cost
        axis is taken up to the same reference: the largest cost of any candidate."""
        out: dict[str, dict[str, Any]] = {}
        a, b = self.inag, self.random
        sets = {"inag": (a, a.estimate), "random": (b, b.estimate)}
        for pts, name in ((a, "inag_measured"), (b, "random_measured")):
            meas = np.flatnonzero(np.isfinite(pts.measured))
            if len(meas):
                perf = np.full(len(pts), np.nan)
                perf[meas] = self.model.normalize(pts.measured[meas])
                sets[name] = (pts, perf)
        for role in PLOTTED:
            both = np.concatenate([a.norm[role], b.norm[role]])
            ref = float(both.max()) if len(both) else 1.0
            out[role] = {
                name: front_stats(pts.norm[role], perf, ref) for name, (pts, perf) in sets.items()
            }
            for x, y in (("inag", "random"), ("inag_measured", "random_measured")):
                if x in sets and y in sets:
                    (px, vx), (py, vy) = sets[x], sets[y]
                    out[role][f"{x}_covers_{y}"] = coverage(px.norm[role], vx, py.norm[role], vy)
                    out[role][f"{y}_covers_{x}"] = coverage(py.norm[role], vy, px.norm[role], vx)
        return out


def _points(source: str, bag: Any, idx: np.ndarray, cond: float, ranks: np.ndarray) -> Points:
    """Points for ``bag``'s candidates ``idx`` (not yet measured)."""
    c = bag.costs
    n = len(idx)
    return Points(
        source,
        tuple(bag.archs[i] for i in idx),
        np.full(n, cond, dtype=np.float64),
        np.asarray(ranks, dtype=int),
        np.asarray(bag.counts)[idx].astype(int),
        np.asarray(bag.estimate, dtype=np.float64)[idx],
        np.asarray(bag.dist_f, dtype=np.float64)[idx]
        if math.isfinite(cond)
        else np.full(n, np.nan),
        {r: np.asarray(c.normalized(r), dtype=np.float64)[idx] for r in COSTS},
        {r: np.asarray(c.totals[r], dtype=np.float64)[idx] for r in COSTS},
        np.full(n, np.nan),
        ("",) * n,
    )


def _concat(source: str, parts: Sequence[Points]) -> Points:
    if not parts:
        e = np.zeros(0)
        i = np.zeros(0, dtype=int)
        return Points(
            source, (), e, i, i, e, e, dict.fromkeys(COSTS, e), dict.fromkeys(COSTS, e), e, ()
        )
    return Points(
        source,
        tuple(a for p in parts for a in p.archs),
        np.concatenate([p.condition for p in parts]),
        np.concatenate([p.rank for p in parts]),
        np.concatenate([p.generated_count for p in parts]),
        np.concatenate([p.estimate for p in parts]),
        np.concatenate([p.dist_f for p in parts]),
        {r: np.concatenate([p.norm[r] for p in parts]) for r in COSTS},
        {r: np.concatenate([p.raw[r] for p in parts]) for r in COSTS},
        np.concatenate([p.measured for p in parts]),
        tuple(w for p in parts for w in p.measured_why),
    )


def _with_measured(pts: Points, perf: dict[str, tuple[float, str]]) -> Points:
    """``pts`` with the measured performance (and why it was trained) of every arch in ``perf``."""
    got = [perf.get(a.arch_id) for a in pts.archs]
    return replace(
        pts,
        measured=np.array([g[0] if g else np.nan for g in got], dtype=np.float64),
        measured_why=tuple(g[1] if g else "" for g in got),
    )


def front_union(pts: Points) -> np.ndarray:
    """Indices on the storage or the energy frontier of ``pts`` (estimates)."""
    idx: set[int] = set()
    for role in PLOTTED:
        idx.update(pareto_front(pts.norm[role], pts.estimate).tolist())
    return np.array(sorted(idx), dtype=int)


def _check_roles(coster: Any, platform: Platform) -> None:
    missing = [r for r in COSTS if r not in coster.roles]
    if missing:
        raise SweepError(
            f"platform {platform.name!r} has no {', '.join(missing)} model; the sweep plots "
            f"performance against {', '.join(COSTS)} (its models: {', '.join(coster.roles)})"
        )


def _train(
    model: Nagan,
    coster: Any,
    archs: Sequence[ArchSpec],
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    """Raw measured performance of ``archs`` by arch_id, through ``select --verify``'s path.

    The archs become one bag that passes no stage, so :func:`inag.select.verify` trains all
    of them with the dataset's recipe (its re-ranking is not used here).
    """
    from inag.select import Generated, make_bag, run_stages
    from inag.select import verify as verify_top

    if not archs:
        return {}
    gen = Generated(
        math.nan, tuple(archs), np.ones(len(archs), dtype=int), model.estimate(archs), len(archs)
    )
    sel = run_stages(make_bag(coster, gen), [], coster.platform.name, "storage")
    (done,) = verify_top([sel], model, len(archs), progress=progress)
    return {sel.bag.archs[i].arch_id: p for i, p in done.measured.items()}


def run_sweep(
    model: Nagan,
    platform: Platform,
    conds: Sequence[float],
    n: int = 1000,
    threshold: float = 0.05,
    rank_by: str = "dist_ub",  # inag.select.DEFAULT_RANK
    overrides: Mapping[str, float | None] | None = None,
    seed: int = 0,
    real: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    train_progress: Callable[[str, int, int], None] | None = None,
    config: dict[str, Any] | None = None,
    refine: int | None = None,
) -> SweepResult:
    """A bag per condition through the platform's stages, plus the random comparison set.

    ``real`` = K > 0 trains the top K survivors of every condition (``select --verify``: they
    are re-ranked by what they reach, so the pick is measured), then the nets on the
    estimated storage or energy frontier of the sweep and of the random set that are not yet
    measured, so both frontiers can be read in measured performance.

    ``progress(done, total, condition)`` after each condition; ``train_progress(stage, i, k)``
    from the trainer when ``real`` > 0.
    """
    import time

    from hwmodels import PlatformCoster
    from inag.select import (
        ConfidenceStage,
        Generated,
        build_stages,
        generate_bag,
        make_bag,
        run_stages,
    )
    from inag.select import verify as verify_top
    from inag.space import largest_for

    if real < 0:
        raise SweepError(f"--real must be >= 0 (nets trained per condition), found {real}")
    if n < 1:
        raise SweepError(f"-n must be >= 1 (the bag size per condition), found {n}")
    refine_arg = () if refine is None else (refine,)  # None: the model's default
    t0 = time.perf_counter()
    coster = PlatformCoster(platform, reference=largest_for)
    _check_roles(coster, platform)
    stages = build_stages(platform, coster, threshold, dict(overrides or {}))
    sels = []
    for i, c in enumerate(conds):
        gen = generate_bag(model, c, n, condition_seed(seed, i), *refine_arg)
        sels.append(run_stages(make_bag(coster, gen), stages, platform.name, rank_by))
        if progress:
            progress(i + 1, len(conds), c)
    t_select = time.perf_counter() - t0

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if train_progress is None else lambda i, k: train_progress(name, i, k)

    measured: dict[str, tuple[float, str]] = {}
    t_train = 0.0
    if real and any(len(s.chosen) for s in sels):
        t1 = time.perf_counter()
        sels = verify_top(sels, model, real, progress=stage(f"training the top {real} per c"))
        for s in sels:
            for i, p in s.measured.items():
                measured.setdefault(s.bag.archs[i].arch_id, (p, "top-k"))
        t_train += time.perf_counter() - t1
    parts: list[Points] = []
    rows: list[ConditionResult] = []
    offset = 0
    for i, (c, s) in enumerate(zip(conds, sels, strict=True)):
        idx = np.asarray(s.chosen, dtype=int)
        parts.append(_points("inag", s.bag, idx, c, np.arange(1, len(idx) + 1)))
        rows.append(
            ConditionResult(
                c,
                condition_seed(seed, i),
                s.bag.generated,
                len(s.bag.archs),
                tuple((f.name, f.kept) for f in s.funnel),
                len(idx),
                offset,
                len(s.measured),
            )
        )
        offset += len(idx)
    inag = _concat("inag", parts)

    # the comparison: as many distinct feasible random draws as the sweep kept distinct nets
    t2 = time.perf_counter()
    want = len({a.arch_id for a in inag.archs})
    budget_stages = [st for st in stages if not isinstance(st, ConfidenceStage)]
    rng = np.random.default_rng([seed, 4242])
    seen: set[str] = set()
    feasible: list[ArchSpec] = []
    draws = 0
    while len(feasible) < want and draws < RANDOM_MAX_DRAWS_PER_POINT * want:
        batch = model.space.sample_many(
            rng, RANDOM_BATCH, unique=True, exclude=seen, max_tries=50 * RANDOM_BATCH
        )
        if not batch:
            break
        draws += len(batch)
        seen.update(a.arch_id for a in batch)
        gen = Generated(
            math.nan,
            tuple(batch),
            np.ones(len(batch), dtype=int),
            np.zeros(len(batch)),
            len(batch),
        )  # the budget stages do not look at the estimate
        sel = run_stages(make_bag(coster, gen), budget_stages, platform.name, "storage")
        keep = np.sort(np.asarray(sel.chosen, dtype=int))[: want - len(feasible)]
        feasible += [batch[i] for i in keep]
    gen = Generated(
        math.nan,
        tuple(feasible),
        np.ones(len(feasible), dtype=int),
        model.estimate(feasible),
        len(feasible),
    )
    rand = _points(
        "random",
        make_bag(coster, gen),
        np.arange(len(feasible)),
        math.nan,
        np.zeros(len(feasible)),
    )
    t_random = time.perf_counter() - t2

    if real:
        t1 = time.perf_counter()
        for pts, name in ((inag, "INAG"), (rand, "random")):
            todo = [pts.archs[i] for i in front_union(pts) if pts.archs[i].arch_id not in measured]
            todo = list({a.arch_id: a for a in todo}.values())
            got = _train(model, coster, todo, stage(f"training {name}'s frontier nets"))
            for a in todo:
                measured[a.arch_id] = (got[a.arch_id], "frontier")
        t_train += time.perf_counter() - t1
        inag = _with_measured(inag, measured)
        rand = _with_measured(rand, measured)
    seconds = {
        "select": t_select,
        "random": t_random,
        "train": t_train,
        "total": time.perf_counter() - t0,
    }
    return SweepResult(
        model, platform.name, dict(config or {}), tuple(rows), inag, rand, draws, seconds
    )


# ---------------------------------------------------------------------------- outputs
def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{float(v):.8g}"


def csv_text(res: SweepResult) -> str:
    """One row per (condition, kept candidate), ranked, then one row per random draw."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    m = res.model
    for pts in (res.inag, res.random):
        fronts = {r: set(pareto_front(pts.norm[r], pts.estimate).tolist()) for r in PLOTTED}
        for i, a in enumerate(pts.archs):
            meas = float(pts.measured[i])
            w.writerow(
                [
                    pts.source,
                    _num(pts.condition[i]),
                    int(pts.rank[i]) if pts.source == "inag" else "",
                    int(pts.rank[i] == 1),
                    a.arch_id,
                    a.summary(),
                    int(pts.generated_count[i]),
                    _num(pts.estimate[i]),
                    _num(float(m.denormalize(pts.estimate[i]))),
                    _num(pts.dist_f[i]),
                    int(math.isfinite(meas)),
                    pts.measured_why[i],
                    _num(meas),
                    _num(float(m.normalize(meas))),
                    *(_num(pts.norm[r][i]) for r in COSTS),
                    *(_num(pts.raw[r][i]) for r in COSTS),
                    *(int(i in fronts[r]) for r in PLOTTED),
                ]
            )
    return buf.getvalue()


def _pick_record(res: SweepResult, i: int) -> dict[str, Any]:
    p = res.inag
    a = p.archs[i]
    meas = float(p.measured[i])
    return {
        "arch_id": a.arch_id,
        "summary": a.summary(),
        "arch": a.to_dict(),
        "estimate_c": float(p.estimate[i]),
        "estimate_perf": float(res.model.denormalize(p.estimate[i])),
        "dist_f": float(p.dist_f[i]),
        "measured_perf": meas if math.isfinite(meas) else None,
        "measured_c": float(res.model.normalize(meas)) if math.isfinite(meas) else None,
        **{f"{r}_norm": float(p.norm[r][i]) for r in COSTS},
        **{f"{r}_{RAW_UNITS[r]}": float(p.raw[r][i]) for r in COSTS},
    }


def _finite(x: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def json_record(res: SweepResult) -> dict[str, Any]:
    m = res.model
    per = []
    inag = res.inag
    for r in res.per_condition:
        sl = slice(r.start, r.start + r.survivors)
        meas = inag.measured[sl]
        meas = meas[np.isfinite(meas)]
        per.append(
            {
                "condition": r.condition,
                "target_perf": float(m.denormalize(r.condition)),
                "seed": r.seed,
                "generated": r.generated,
                "distinct": r.distinct,
                "funnel": [{"stage": s, "kept": k} for s, k in r.funnel],
                "survivors": r.survivors,
                "survivors_estimate_c": {
                    "min": float(inag.estimate[sl].min()) if r.survivors else None,
                    "max": float(inag.estimate[sl].max()) if r.survivors else None,
                },
                **{
                    f"survivors_{role}_norm": {
                        "min": float(inag.norm[role][sl].min()) if r.survivors else None,
                        "max": float(inag.norm[role][sl].max()) if r.survivors else None,
                    }
                    for role in COSTS
                },
                "trained": r.trained,
                "measured_perf_mean": float(meas.mean()) if len(meas) else None,
                "pick": _pick_record(res, r.pick) if r.pick is not None else None,
            }
        )
    return _finite(
        {
            "config": res.config,
            "model": {
                "task": m.task,
                "task_kind": m.task_kind,
                "p_min": m.p_min,
                "p_range": m.p_range,
            },
            "platform": res.platform,
            "candidates": {
                "inag_rows": len(res.inag),
                "inag_distinct": len({a.arch_id for a in res.inag.archs}),
                "random": len(res.random),
                "random_draws": res.random_draws,
                "random_feasible_share": len(res.random) / res.random_draws
                if res.random_draws
                else None,
            },
            "fronts": res.fronts(),
            "conditions": per,
            "files": list(FILES),
        }
    )


def _step_line(cost: np.ndarray, perf: np.ndarray, idx: np.ndarray) -> tuple[Any, Any]:
    """The frontier as a staircase: what the best net within a cost reaches."""
    c, p = cost[idx], perf[idx]
    xs = np.repeat(c, 2)[1:]
    ys = np.repeat(p, 2)[:-1]
    return xs, ys


def _plot(res: SweepResult, role: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res.model
    a, b = res.inag, res.random
    fig, ax = plt.subplots(figsize=(7, 5))
    if len(b):
        ax.scatter(
            b.norm[role], b.estimate, s=5, c="tab:orange", alpha=0.35, linewidths=0,
            label=f"random sampling ({len(b)})",
        )  # fmt: skip
    if len(a):
        sc = ax.scatter(
            a.norm[role], a.estimate, s=5, c=a.condition, cmap="viridis", vmin=0, vmax=1,
            alpha=0.6, linewidths=0, label=f"INAG candidates ({len(a)})",
        )  # fmt: skip
        fig.colorbar(sc, ax=ax, label="condition c")
    for pts, col, ls, name in ((b, "tab:red", "--", "random"), (a, "tab:blue", "-", "INAG")):
        idx = pareto_front(pts.norm[role], pts.estimate)
        if len(idx):
            xs, ys = _step_line(pts.norm[role], pts.estimate, idx)
            ax.plot(xs, ys, ls, color=col, lw=1.8, label=f"{name} frontier ({len(idx)} pts)")
    picks = np.flatnonzero(a.rank == 1)
    if len(picks):
        ax.scatter(
            a.norm[role][picks], a.estimate[picks], s=36, marker="D", facecolors="none",
            edgecolors="k", label="pick per condition (estimate)",
        )  # fmt: skip
    for pts, col, name in ((a, "navy", "INAG"), (b, "darkred", "random")):
        meas = np.flatnonzero(np.isfinite(pts.measured))
        if not len(meas):
            continue
        x, y = pts.norm[role][meas], m.normalize(pts.measured[meas])
        ax.scatter(x, y, s=24, marker="x", c=col, label=f"{name}, trained ({len(meas)})")
        idx = pareto_front(x, y)
        xs, ys = _step_line(x, y, idx)
        ax.plot(xs, ys, ":", color=col, lw=1.2, label=f"{name} frontier, measured")
    ax.set_xscale("log")  # the frontier lives at small costs: a linear axis squeezes it
    ax.set_xlabel(f"normalized {role} ({'eq. 2' if role == 'storage' else 'eq. 3'}), log scale")
    ax.set_ylabel("normalized performance (encoder estimate; x: measured)")
    conds = [r.condition for r in res.per_condition]
    ax.set_title(
        f"{m.task} on {res.platform}: sweep c = {conds[0]:g}..{conds[-1]:g} "
        f"({len(conds)} conditions)",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def write_outputs(res: SweepResult, out_dir: str | Path) -> list[str]:
    """``sweep.csv``, ``sweep.json`` and the PNGs in ``out_dir``; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inag.safe_io import atomic_open, atomic_write_text

    out = Path(out_dir)
    atomic_write_text(out / "sweep.csv", csv_text(res))
    rec = json_record(res)
    rec["seconds"] = _finite(res.seconds)
    atomic_write_text(out / "sweep.json", json.dumps(rec, indent=2) + "\n")
    for role in PLOTTED:
        fig = _plot(res, role)
        with atomic_open(out / f"pareto_{role}.png", binary=True) as fh:
            fig.savefig(fh, dpi=110, format="png")
        plt.close(fig)
    return list(FILES)
