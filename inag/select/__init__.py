"""INAG's selecting stages (paper section 4): a flat pipeline over a generated bag.

Constraints are applied *after* generation: NAGAN proposes a bag for a target performance, and
small stages, each with one job, keep the candidates that fit a platform — confidence
(Dist_f), supported bit-widths, storage, energy, latency, memory fit — before the output
selector ranks the survivors. When nothing survives, re-conditioning lowers the target and
generates a new bag (section 4.1), down to a floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hwmodels import PlatformCoster
from hwmodels.costing import CostResult
from hwmodels.quantities import STAGES, overrides
from inag.arch import ArchSpec
from inag.nagan import Nagan
from inag.platform import Platform

# dist_ub: Dist_f plus the half-width of the estimate's 90 % interval, an upper bound on the
# distance the net really lands from c (INAG's default; "dist_f" is the paper's ranking)
RANK_KEYS = ("dist_ub", "dist_f", "storage", "energy", "latency")
DEFAULT_RANK = "dist_ub"
DISTANCE_RANKS = ("dist_ub", "dist_f")


class SelectionError(ValueError):
    """Nothing fits, even at the lowest condition; the message says why."""


@dataclass(frozen=True)
class Bag:
    """The distinct architectures of a generated bag, with everything the stages look at.

    Arrays are indexed like ``archs`` (sorted by canonical encoding, so order is content-
    determined); ``counts`` says how often the generator produced each.
    """

    condition: float
    archs: tuple[ArchSpec, ...]
    estimate: np.ndarray  # encoder estimate, normalized units
    dist_f: np.ndarray
    costs: CostResult
    counts: np.ndarray
    generated: int
    # half-width of the estimate's 90 % interval (None: the model has no ensemble)
    half_width: np.ndarray | None = None

    @property
    def dist_ub(self) -> np.ndarray:
        """Dist_f + the interval's half-width: how far from c the net may really land."""
        return self.dist_f if self.half_width is None else self.dist_f + self.half_width


@dataclass(frozen=True)
class StageResult:
    name: str
    kept: int
    removed: int
    worst_miss: str = ""  # for the stage that removed the last candidates


class Stage:
    """One selecting stage: a boolean keep-mask over the bag."""

    name: str = "stage"

    def keep(self, bag: Bag) -> np.ndarray:
        raise NotImplementedError

    def miss(self, bag: Bag, removed: np.ndarray) -> str:
        """How far the removed candidates were from passing (for the error message)."""
        return ""


@dataclass
class ConfidenceStage(Stage):
    threshold: float
    name: str = "confidence"

    def keep(self, bag: Bag) -> np.ndarray:
        return bag.dist_f <= self.threshold

    def miss(self, bag: Bag, removed: np.ndarray) -> str:
        best = float(bag.dist_f[removed].min())
        return f"closest Dist_f {best:.4f} > threshold {self.threshold}"


@dataclass
class BitsStage(Stage):
    supported: tuple[int, ...]
    name: str = "bits"

    def keep(self, bag: Bag) -> np.ndarray:
        ok = set(self.supported)
        return np.array(
            [
                all(layer.bits in ok for layer in a.layers) and a.output_bits in ok
                for a in bag.archs
            ],
            dtype=bool,
        )

    def miss(self, bag: Bag, removed: np.ndarray) -> str:
        return f"every candidate uses a bit-width outside {list(self.supported)}"


@dataclass
class LimitStage(Stage):
    """Keep candidates whose value of ``limits`` (names of hwmodels.costing.LIMITS) fit."""

    name: str
    limits: dict[str, float] = field(default_factory=dict)

    def keep(self, bag: Bag) -> np.ndarray:
        ok = np.ones(len(bag.archs), dtype=bool)
        for lim, mx in self.limits.items():
            ok &= bag.costs.value(lim) <= mx
        return ok

    def miss(self, bag: Bag, removed: np.ndarray) -> str:
        parts = []
        for lim, mx in self.limits.items():
            v = bag.costs.value(lim)[removed]
            best = float(v.min())
            if not best <= mx:  # NaN too: it fails the limit, so say so
                parts.append(f"{lim}: best {best:.4g} vs limit {mx:.4g} ({over_text(best, mx)})")
        return "; ".join(parts)


def over_text(best: float, limit: float) -> str:
    """How far ``best`` is over ``limit``, readable at any scale: a percentage near the limit,
    a compact ratio far from it (an absurd platform figure once printed a 300-digit
    percentage), and no division by a zero or negative limit."""
    if not limit > 0:
        return "a limit that is not > 0 admits nothing"
    ratio = best / limit
    if math.isnan(ratio):
        return "not comparable"
    if ratio < 100:
        return f"{(ratio - 1) * 100:.1f} % over"
    if math.isinf(ratio):
        return "far over: the ratio overflows a float"
    return f"{ratio:.3g}× the limit, {(ratio - 1) * 100:.3g} % over"


def build_stages(
    platform: Platform,
    coster: PlatformCoster,
    threshold: float,
    overrides: dict[str, float | None] | None = None,
) -> list[Stage]:
    """The standard pipeline for a platform, limits from its YAML plus CLI overrides."""
    for name, v in (overrides or {}).items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise SelectionError(f"limit {name}: expected a finite number > 0, found {v:g}")
    limits = coster.limits(overrides)
    stages: list[Stage] = [
        ConfidenceStage(threshold),
        BitsStage(tuple(platform.capability.numerics.supported_bits)),
    ]
    for name, names in STAGES:
        chosen = {n: limits[n] for n in names if n in limits}
        if chosen:
            stages.append(LimitStage(name, chosen))
    return stages


def rank(bag: Bag, idx: np.ndarray, by: str) -> np.ndarray:
    """Order survivors by ``by``; ties by Dist_f, storage, then the content-sorted position."""
    if by not in RANK_KEYS:
        raise SelectionError(f"unknown ranking {by!r}; choose one of {', '.join(RANK_KEYS)}")
    primary = getattr(bag, by) if by in DISTANCE_RANKS else bag.costs.totals[by]
    keys = (idx, bag.costs.totals["storage"][idx], bag.dist_f[idx], primary[idx])
    return idx[np.lexsort(keys)]


@dataclass(frozen=True)
class Selection:
    platform: str
    condition: float
    funnel: tuple[StageResult, ...]
    chosen: np.ndarray  # indices into bag, ranked
    bag: Bag
    failure: str = ""  # why nothing fits (only with ``select(strict=False)``)
    # bag index -> performance measured by QAT training (``verify``), raw units
    measured: dict[int, float] = field(default_factory=dict)

    def records(self, model: Nagan, top: int) -> list[dict[str, Any]]:
        out = []
        c = self.bag.costs
        for r, i in enumerate(self.chosen[:top], 1):
            a = self.bag.archs[i]
            out.append(
                {
                    "rank": r,
                    "arch_id": a.arch_id,
                    "summary": a.summary(),
                    "arch": a.to_dict(),
                    "condition": self.condition,
                    "generated_count": int(self.bag.counts[i]),
                    "estimate_perf": float(model.denormalize(self.bag.estimate[i])),
                    "interval_perf": (
                        None
                        if self.bag.half_width is None
                        else float(self.bag.half_width[i] * model.p_range)
                    ),
                    "dist_f": float(self.bag.dist_f[i]),
                    "dist_ub": float(self.bag.dist_ub[i]),
                    "measured_perf": self.measured.get(int(i)),
                    **{
                        f"{role}_{unit}": float(c.totals[role][i])
                        for role, unit in (
                            ("storage", "bits"),
                            ("flash", "bytes"),
                            ("sram", "bytes"),
                            ("energy", "j"),
                            ("latency", "s"),
                        )
                        if role in c.totals
                    },
                    "storage_norm": float(c.normalized("storage")[i]),
                    "energy_norm": float(c.normalized("energy")[i]),
                }
            )
        return out


@dataclass(frozen=True)
class Generated:
    condition: float
    archs: tuple[ArchSpec, ...]
    counts: np.ndarray
    estimate: np.ndarray
    n: int
    half_width: np.ndarray | None = None


def generate_bag(
    model: Nagan, condition: float, n: int, seed: int, refine: int | None = None
) -> Generated:
    archs, counts, enc = model.generate_unique(condition, n, seed=seed, refine=refine)
    hw = model.half_width_encoded(enc) if model.has_intervals else None
    return Generated(condition, tuple(archs), counts, model.estimate_encoded(enc), n, hw)


def make_bag(coster: PlatformCoster, gen: Generated) -> Bag:
    return Bag(
        gen.condition,
        gen.archs,
        gen.estimate,
        np.abs(gen.estimate - gen.condition),
        coster.cost(gen.archs),
        gen.counts,
        gen.n,
        gen.half_width,
    )


def run_stages(bag: Bag, stages: Sequence[Stage], platform: str, rank_by: str) -> Selection:
    alive = np.ones(len(bag.archs), dtype=bool)
    funnel = []
    for st in stages:
        before = alive.copy()
        alive &= st.keep(bag)
        removed = before & ~alive
        miss = st.miss(bag, removed) if not alive.any() and removed.any() else ""
        funnel.append(StageResult(st.name, int(alive.sum()), int(removed.sum()), miss))
        if not alive.any():
            break
    return Selection(
        platform, bag.condition, tuple(funnel), rank(bag, np.flatnonzero(alive), rank_by), bag
    )


@dataclass(frozen=True)
class Attempt:
    condition: float
    survivors: int
    funnel: tuple[StageResult, ...]


# conditions are rounded to 6 decimals: a smaller re-conditioning step would not move c
MIN_STEP = 1e-6


def select(
    model: Nagan,
    platforms: Sequence[Platform],
    condition: float,
    n: int = 5000,
    threshold: float = 0.05,
    rank_by: str = DEFAULT_RANK,
    overrides: dict[str, float | None] | None = None,
    seed: int = 0,
    step: float = 0.05,
    floor: float = 0.05,
    strict: bool = True,
    refine: int | None = None,
) -> tuple[list[Selection], dict[str, list[Attempt]]]:
    """One bag, one selection per platform; re-condition per platform when nothing fits.

    A platform that nothing fits raises :class:`SelectionError` with ``strict``; without it,
    its selection comes back empty with ``failure`` saying why, so one impossible budget does
    not hide the picks for the other platforms of a multi-platform run.
    """
    from inag.space import largest_for

    costers = {p.name: PlatformCoster(p, reference=largest_for) for p in platforms}
    stages = {p.name: build_stages(p, costers[p.name], threshold, overrides) for p in platforms}
    bags: dict[float, Generated] = {}
    out: list[Selection] = []
    tries: dict[str, list[Attempt]] = {}
    for p in platforms:
        c = condition
        tries[p.name] = []
        attempt = 0
        while True:
            key = round(c, 6)
            if key not in bags:
                bags[key] = generate_bag(model, c, n, seed + attempt, refine)
            bag = make_bag(costers[p.name], bags[key])
            sel = run_stages(bag, stages[p.name], p.name, rank_by)
            tries[p.name].append(Attempt(c, len(sel.chosen), sel.funnel))
            nxt = round(c - step, 6)
            if len(sel.chosen) or c - step < floor - 1e-9 or nxt >= c:  # nxt: no progress
                break
            c = nxt
            attempt += 1
        if not len(sel.chosen):
            last = sel.funnel[-1]
            why = (
                f"nothing fits {p.name}, even after re-conditioning from c={condition:.2f} "
                f"down to c={c:.2f} ({len(tries[p.name])} tries, bags of {n}): stage "
                f"'{last.name}' removed the last {last.removed} candidates"
                + (f" — {last.worst_miss}" if last.worst_miss else "")
            )
            if strict:
                raise SelectionError(why)
            sel = replace(sel, failure=why)
        out.append(sel)
    return out, tries


DEFAULT_VERIFY = 8  # what `inag select` trains by default where it can (docs/decisions.md)


def why_not_verifiable(model: Nagan) -> str | None:
    """Why the model's candidates cannot be trained here, or None when they can: the model
    must record its dataset's trainer settings, and its task's data must load (the embedded
    tasks always do; a task read from files needs them here)."""
    if "trainer" not in model.meta:
        return "the model does not record the trainer settings of its dataset"
    from inag.tasks import TaskError, load_task

    try:
        load_task(model.task, seed=int(model.meta.get("data_seed", 0)))
    except (TaskError, OSError, ValueError) as exc:
        return f"its task {model.task!r} is not available here ({exc})"
    return None


def verify(
    selections: Sequence[Selection],
    model: Nagan,
    k: int,
    progress: Any = None,
    engine: str = "auto",
) -> list[Selection]:
    """Train the top ``k`` of every selection for real and re-rank them by what they reach.

    The output selector ranks by the encoder's estimate, and the top of a thousand noisy
    estimates is an overestimate (winner's curse: docs/results/table3.md). Training a few
    candidates with the dataset's own recipe (task, data seed, trainer settings, all in the
    model's metadata) replaces the estimate by a measurement: the top ``k`` are re-ranked by
    |normalized measured performance - c| (then by higher measured performance), the rest
    keep their order behind them. Each distinct architecture is trained once for all
    platforms. ``progress(done, total)`` comes from the trainer.
    """
    from inag.tasks import load_task
    from inag.train.trainer import BatchedMLPTrainer, TrainerConfig

    if k < 1:
        raise ValueError(f"verify needs k >= 1, found {k}")
    if "trainer" not in model.meta:
        raise SelectionError(
            "this model does not record the trainer settings of its dataset, so its "
            "candidates cannot be verified; retrain it with `inag train`"
        )
    trainer = TrainerConfig.from_record(model.meta["trainer"])
    archs = {s.bag.archs[i].arch_id: s.bag.archs[i] for s in selections for i in s.chosen[:k]}
    if not archs:
        return list(selections)
    task = load_task(model.task, seed=int(model.meta.get("data_seed", 0)))
    todo = list(archs.values())
    res = BatchedMLPTrainer(task, trainer, engine=engine).train(todo, progress=progress)
    perf = {a.arch_id: r.performance for a, r in zip(todo, res, strict=True)}
    out = []
    for s in selections:
        head = [int(i) for i in s.chosen[:k]]
        got = {i: perf[s.bag.archs[i].arch_id] for i in head}
        head.sort(key=lambda i: (abs(float(model.normalize(got[i])) - s.condition), -got[i]))
        chosen = np.array(head + [int(i) for i in s.chosen[k:]], dtype=s.chosen.dtype)
        out.append(replace(s, chosen=chosen, measured=got))
    return out


def limit_overrides(**options: float | None) -> dict[str, float]:
    """CLI overrides by option name (``max_storage``/``max_energy`` normalized as in Table 3,
    the rest absolute in the units their names carry): ``hwmodels.quantities.OPTIONS``."""
    return overrides(**options)
