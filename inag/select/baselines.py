"""Optimization baselines of the paper's Table 3: constrained GA and Bayesian optimization.

INAG applies the platform's constraint *after* generation; the baselines the paper compares
against (section 5.2) must instead search again for every platform, each evaluation a training
run. This module runs that search with Optuna over the same MLP space and the same hardware
models, so the comparison is about the method, not the plumbing:

- ``method="ga"``: :class:`optuna.samplers.NSGAIISampler` (single objective: maximize
  performance). NSGA-II's constrained domination replaces the paper's interior penalty.
- ``method="bo"``: :class:`optuna.samplers.GPSampler` (Matern-5/2 GP, log constrained expected
  improvement, q-batch acquisition while a batch of trials is still running).
- ``method="tpe"``: :class:`optuna.samplers.TPESampler` (multivariate, constant liar), the
  cheaper sequential-model-based alternative: a GP ask costs seconds once a few hundred trials
  exist, a TPE ask milliseconds.

Constraints reach Optuna through :meth:`optuna.trial.Trial.set_constraint`, one value per active
limit, ``value / limit - 1`` (<= 0 is feasible). Optuna 5.0 deprecates the samplers'
``constraints_func`` in favour of exactly this, and all three samplers read it.

The parameters are fixed for every trial — ``depth`` plus a width index and a bit-width index for
each of the ``max_depth`` slots, of which the first ``depth`` are used — rather than conditional
on depth: both samplers model a fixed space jointly (the GP falls back to independent random
sampling for conditional parameters, and NSGA-II's crossover needs parents with the same keys).
Indices are ordinal, so "next wider" is a neighbour for the GP's kernel and for mutation.

Infeasible trials are costed by the hardware models (microseconds) but never trained; they
report the lowest possible performance, 0 (R² is clipped to [0, 1], accuracy lies in it), and
their constraint values, so the samplers learn where the boundary is without paying for a
training. Trials are asked one at a time and the feasible, not-yet-seen architectures are
trained together in batches (:class:`inag.train.trainer.BatchedMLPTrainer`); an architecture
already evaluated is answered from a cache, because different parameter vectors (unused slots)
can decode to the same network and training it again would only cost time.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from hwmodels import quantities
from inag.arch import ArchSpec, LayerSpec
from inag.platform import Platform
from inag.space import SearchSpace
from inag.threads import single_threaded

if TYPE_CHECKING:
    from collections.abc import Iterator

    import optuna

    from hwmodels import PlatformCoster
    from inag.nagan import Nagan
    from inag.tasks import TaskData
    from inag.train.trainer import TrainerConfig

METHODS = ("ga", "bo", "tpe")
EVALUATORS = ("train", "encoder")
#: Objective value told for a trial that is not trained because it breaks a limit.
INFEASIBLE_PERFORMANCE = 0.0
#: Cost roles reported for the best architecture, with the unit suffix of their key.
COST_UNITS = quantities.COST_UNITS  # (role, unit) of every total


class BaselineError(ValueError):
    """A baseline search cannot run (bad input) or found no architecture within the limits."""


# ---------------------------------------------------------------------------- evaluators
class Evaluator(Protocol):
    """Turns architectures into performances (raw units: R² or accuracy).

    Results must be independent of which other architectures are in the same call, so
    batching changes speed, never values.
    """

    name: str

    def __call__(self, archs: Sequence[ArchSpec]) -> list[float]: ...


@dataclass(frozen=True)
class TrainEvaluator:
    """Real QAT training with the dataset trainer; a failed training counts as performance 0."""

    task: TaskData
    config: TrainerConfig
    name: str = "train"

    def __call__(self, archs: Sequence[ArchSpec]) -> list[float]:
        from inag.train.trainer import BatchedMLPTrainer

        if not archs:
            return []
        results = BatchedMLPTrainer(self.task, self.config).train(archs)
        return [r.performance if r.status == "ok" else 0.0 for r in results]


@dataclass(frozen=True)
class EncoderEvaluator:
    """The NAGAN artifact's surrogate encoder: milliseconds instead of a training per net."""

    model: Nagan
    name: str = "encoder"

    def __call__(self, archs: Sequence[ArchSpec]) -> list[float]:
        if not archs:
            return []
        est = self.model.denormalize(self.model.estimate(archs))
        return [float(v) for v in np.atleast_1d(est)]


def train_evaluator(
    task_spec: str,
    trainer: TrainerConfig | None = None,
    data_seed: int = 0,
    dataset: str | None = None,
) -> TrainEvaluator:
    """A training evaluator; with ``dataset`` (a SQLite file) its task, data seed and trainer
    configuration are used, so a baseline's numbers are on the same footing as the dataset's
    labels — and as INAG's retrained picks."""
    from inag.tasks import load_task
    from inag.train.trainer import TrainerConfig

    if dataset is not None:
        meta = dataset_meta(dataset)
        if meta.get("task") != task_spec:
            raise BaselineError(
                f"dataset {dataset} was built for task {meta.get('task')!r}, not {task_spec!r}"
            )
        data_seed = int(meta.get("data_seed", data_seed))
        if trainer is None:
            trainer = TrainerConfig.from_record(meta["trainer"])
    task = load_task(task_spec, seed=data_seed)
    return TrainEvaluator(task, trainer if trainer is not None else TrainerConfig())


def dataset_meta(path: str) -> dict[str, Any]:
    from inag.dataset import DatasetStore

    with DatasetStore(path) as store:
        return store.meta()


def space_for_task(task: TaskData, space: str = "mlp") -> SearchSpace:
    """The bundled search space bound to a task's input shape and output size."""
    from inag.space import load_space

    bound = load_space(space).bind(task.input_shape, task.output_size)
    if bound.kind != "mlp":
        raise BaselineError(
            f"space {bound.name!r} is a {bound.kind}; the GA/BO baselines search MLP spaces "
            "only (their parameters are per dense layer); compare CNNs with `inag evaluate`'s "
            "rejection-sampling and dataset-nearest baselines"
        )
    return bound


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Evaluation:
    """One trial of the search, in the order it was asked."""

    trial: int
    arch_id: str
    summary: str
    outcome: Literal["trained", "cached", "infeasible", "discarded"]
    performance: float | None  # None when the trial was not evaluated
    storage_norm: float
    energy_norm: float
    violation: float  # largest constraint value (value / limit - 1); <= 0 is feasible
    seconds: float  # since the search started, when the result was known

    @property
    def feasible(self) -> bool:
        return self.violation <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "arch_id": self.arch_id,
            "summary": self.summary,
            "outcome": self.outcome,
            "performance": self.performance,
            "storage_norm": self.storage_norm,
            "energy_norm": self.energy_norm,
            "violation": self.violation,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class BaselineResult:
    """The best feasible architecture a baseline found, what it cost, and how the search went.

    ``evals`` counts evaluator calls on distinct feasible architectures (the expensive part and
    the budget); ``trials`` also counts infeasible ones (costed, not trained) and repeats of an
    already evaluated architecture (answered from the cache).
    """

    method: str
    sampler: str
    evaluator: str
    platform: str
    seed: int
    limits: dict[str, float]
    binding: tuple[str, ...]  # the limits told to the sampler (those the space can break)
    best: ArchSpec
    performance: float
    storage_norm: float
    energy_norm: float
    costs: dict[str, float]  # storage_bits, flash_bytes, sram_bytes, energy_j, latency_s
    evals: int
    trials: int
    infeasible: int
    cached: int
    seconds: float  # whole search, sampler overhead included
    seconds_to_best: float  # when the best was first known
    stopped_by: str  # "evals" | "time" | "converged" | "trials"
    history: tuple[Evaluation, ...] = field(repr=False)

    def to_dict(self, history: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "sampler": self.sampler,
            "evaluator": self.evaluator,
            "platform": self.platform,
            "seed": self.seed,
            "limits": dict(self.limits),
            "binding": list(self.binding),
            "best": {
                "arch_id": self.best.arch_id,
                "summary": self.best.summary(),
                "arch": self.best.to_dict(),
                "performance": self.performance,
                "storage_norm": self.storage_norm,
                "energy_norm": self.energy_norm,
                **self.costs,
            },
            "evals": self.evals,
            "trials": self.trials,
            "infeasible": self.infeasible,
            "cached": self.cached,
            "seconds": self.seconds,
            "seconds_to_best": self.seconds_to_best,
            "stopped_by": self.stopped_by,
        }
        if history:
            out["history"] = [h.to_dict() for h in self.history]
        return out


@dataclass(frozen=True)
class SearchProgress:
    """Reported after every batch: enough for a progress bar."""

    evals: int
    budget_evals: int | None
    trials: int
    infeasible: int
    best_performance: float | None
    seconds: float
    budget_seconds: float | None


# ---------------------------------------------------------------------------- the search
def search(
    space: SearchSpace,
    platform: Platform,
    evaluator: Evaluator,
    method: str = "ga",
    overrides: Mapping[str, float | None] | None = None,
    budget_evals: int | None = None,
    budget_minutes: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    population_size: int = 20,
    max_trials: int | None = None,
    patience: int = 50,
    progress: Callable[[SearchProgress], None] | None = None,
) -> BaselineResult:
    """Maximize ``evaluator`` performance over ``space`` subject to ``platform``'s limits.

    Stops when ``budget_evals`` evaluations are done or ``budget_minutes`` have passed
    (whichever comes first; at least one must be given), when ``patience`` trials in a row
    brought no new architecture to evaluate (the sampler has converged: it only proposes nets
    it has seen, or infeasible ones — asking on costs sampler time and finds nothing), or after
    ``max_trials`` trials (default: 50 per evaluation of the budget). Same seed, same budget in
    evaluations, same result.

    ``overrides`` are limit overrides (names of ``hwmodels.costing.LIMITS``, e.g. from
    :func:`inag.select.limit_overrides`); ``max_storage_norm=0.21, max_energy_norm=0.21``
    reproduces Table 3.
    """
    from hwmodels import PlatformCoster
    from inag.space import largest_for

    if method not in METHODS:
        raise BaselineError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if space.kind != "mlp":
        raise BaselineError(f"space {space.name!r} is a {space.kind}; baselines search MLPs")
    if budget_evals is None and budget_minutes is None:
        raise BaselineError("give a budget: budget_evals, budget_minutes, or both")
    if budget_evals is not None and budget_evals < 1:
        raise BaselineError(f"budget_evals must be >= 1, found {budget_evals}")
    if budget_minutes is not None and not budget_minutes > 0:
        raise BaselineError(f"budget_minutes must be > 0, found {budget_minutes}")
    if patience < 1:
        raise BaselineError(f"patience must be >= 1, found {patience}")
    if batch_size < 1 or population_size < 2:
        raise BaselineError(
            f"batch_size must be >= 1 and population_size >= 2, found {batch_size}, "
            f"{population_size}"
        )
    coster = PlatformCoster(platform, reference=largest_for)
    try:
        limits = coster.limits(dict(overrides or {}))
    except KeyError as exc:
        raise BaselineError(str(exc.args[0])) from None
    for name, mx in limits.items():
        if not (math.isfinite(mx) and mx > 0):
            raise BaselineError(f"limit {name} must be a positive number, found {mx}")
    params = _Params.of(space, platform)
    _check_reachable(params, coster, limits, platform.name)
    binding = _binding_limits(params, coster, limits)

    if max_trials is None:
        max_trials = 50 * budget_evals + 1000 if budget_evals is not None else 1_000_000
    budget_s = None if budget_minutes is None else budget_minutes * 60.0

    optuna = _import_optuna()
    with _quiet_optuna(), single_threaded():
        sampler = _sampler(method, seed, population_size)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        run = _Run(study, params, coster, limits, binding, evaluator, time.perf_counter())
        stopped_by = "trials"
        while True:
            if budget_evals is not None and run.evals >= budget_evals:
                stopped_by = "evals"
                break
            if budget_s is not None and run.elapsed() >= budget_s:
                stopped_by = "time"
                break
            if run.trials >= max_trials:
                break
            if run.idle >= patience:
                stopped_by = "converged"
                break
            run.ask_one()
            room = (
                batch_size if budget_evals is None else min(batch_size, budget_evals - run.evals)
            )
            if len(run.pending_new) >= room:
                run.flush()
                if progress is not None:
                    progress(run.progress(budget_evals, budget_s))
        if run.pending:
            if stopped_by == "time":
                run.discard()  # training them would overrun the time budget
            else:
                run.flush()
        seconds = run.elapsed()
    return run.result(method, type(sampler).__name__, platform.name, seed, seconds, stopped_by)


# ---------------------------------------------------------------------------- internals
@dataclass(frozen=True)
class _Params:
    """The fixed Optuna parameter space: depth, then a width and a bits index per slot."""

    space: SearchSpace
    min_depth: int
    max_depth: int
    widths: tuple[int, ...]
    bits: tuple[int, ...]

    @staticmethod
    def of(space: SearchSpace, platform: Platform) -> _Params:
        (block,) = space.blocks
        supported = set(platform.capability.numerics.supported_bits)
        bits = tuple(b for b in space.bits if b in supported)
        if not bits:
            raise BaselineError(
                f"platform {platform.name!r} supports bit-widths "
                f"{sorted(supported)}, none of the space's {list(space.bits)}"
            )
        if space.output_bits not in supported:
            raise BaselineError(
                f"platform {platform.name!r} does not support the space's output head at "
                f"{space.output_bits} bits (supported: {sorted(supported)})"
            )
        return _Params(space, block.min_depth, block.max_depth, tuple(block.widths), bits)

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        out: dict[str, Any] = {"depth": IntDistribution(self.min_depth, self.max_depth)}
        for i in range(self.max_depth):
            out[f"width{i}"] = IntDistribution(0, len(self.widths) - 1)
            out[f"bits{i}"] = IntDistribution(0, len(self.bits) - 1)
        return out

    def arch(self, p: Mapping[str, Any]) -> ArchSpec:
        layers = tuple(
            LayerSpec(self.widths[p[f"width{i}"]], self.bits[p[f"bits{i}"]], "dense")
            for i in range(p["depth"])
        )
        return self._build(layers)

    def largest(self) -> ArchSpec:
        return self._build(
            tuple(LayerSpec(max(self.widths), max(self.bits)) for _ in range(self.max_depth))
        )

    def smallest(self) -> ArchSpec:
        return self._build(
            tuple(LayerSpec(min(self.widths), min(self.bits)) for _ in range(self.min_depth))
        )

    def _build(self, layers: tuple[LayerSpec, ...]) -> ArchSpec:
        s = self.space
        return ArchSpec(
            kind="mlp",
            input_shape=s.input_shape,  # type: ignore[arg-type]
            output_size=s.output_size,
            layers=layers,
            output_bits=s.output_bits,
        )


def _violations(costs: Any, limits: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Relative excess per limit: ``value / limit - 1`` (<= 0 means within the limit)."""
    return {name: costs.value(name) / mx - 1.0 for name, mx in limits.items()}


def _binding_limits(
    params: _Params, coster: PlatformCoster, limits: Mapping[str, float]
) -> tuple[str, ...]:
    """The limits the largest architecture of the space breaks: the only ones that can bind.

    Only these are told to Optuna as constraints. A limit nothing in the space can reach (a
    Cortex-M's flash against this MLP space) carries no information, and each constraint costs
    the GP sampler one more GP to fit and evaluate per ask: 5 instead of 2 made asks ~2x slower.
    Feasibility is still checked against every limit.
    """
    big = params.largest()
    viol = _violations(coster.cost([big]), limits)
    return tuple(k for k, v in viol.items() if v[0] > 0)


def _check_reachable(
    params: _Params, coster: PlatformCoster, limits: Mapping[str, float], platform: str
) -> None:
    """Fail before searching when even the smallest architecture of the space breaks a limit.

    Every cost model here grows with width, bits and depth, so the smallest net is a lower
    bound; a search could only burn its budget on infeasible trials.
    """
    small = params.smallest()
    viol = _violations(coster.cost([small]), limits)
    bad = {k: float(v[0]) for k, v in viol.items() if v[0] > 0}
    if bad:
        parts = ", ".join(f"{k} over by {v * 100:.1f} %" for k, v in bad.items())
        raise BaselineError(
            f"no architecture of the space can meet the limits on {platform}: even the "
            f"smallest ({small.summary()}) has {parts}"
        )


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise BaselineError(
            "the GA/BO baselines need Optuna: pip install 'inag[search]'"
        ) from None
    return optuna


#: Optuna 5 records constraints on the trial; older versions need a ``constraints_func``.
_USER_ATTR = "inag_constraints"


def _has_set_constraint() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints_from_user_attrs(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    return list(trial.user_attrs.get(_USER_ATTR, ()))


def _sampler(method: str, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    kw: dict[str, Any] = {"seed": seed}
    if not _has_set_constraint():  # Optuna < 5.0 (GPSampler constraints need >= 4.2)
        kw["constraints_func"] = _constraints_from_user_attrs
    if method == "ga":
        return optuna.samplers.NSGAIISampler(population_size=population_size, **kw)
    if method == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, **kw)
    return optuna.samplers.GPSampler(**kw)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Library code does not print: silence Optuna's per-trial INFO log and its experimental-
    feature warnings for the duration of a search, then restore the caller's settings."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


@dataclass
class _Pending:
    trial: Any  # optuna.Trial
    arch: ArchSpec
    storage_norm: float
    energy_norm: float
    violation: float


class _Run:
    """Mutable state of one search: the study, the cache and the batch being assembled."""

    def __init__(
        self,
        study: optuna.Study,
        params: _Params,
        coster: PlatformCoster,
        limits: Mapping[str, float],
        binding: Sequence[str],
        evaluator: Evaluator,
        t0: float,
    ):
        self.study = study
        self.params = params
        self.dists = params.distributions()
        self.coster = coster
        self.limits = dict(limits)
        self.binding = tuple(binding)
        self.idle = 0  # trials in a row that brought no new architecture to evaluate
        self.evaluator = evaluator
        self.t0 = t0
        self.cache: dict[str, float] = {}
        self.pending: list[_Pending] = []
        self.history: list[Evaluation] = []
        self.evals = 0
        self.trials = 0
        self.infeasible = 0
        self.cached = 0
        self.best: tuple[float, ArchSpec, float] | None = None  # perf, arch, seconds
        self.set_constraint = _has_set_constraint()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def pending_new(self) -> set[str]:
        return {p.arch.arch_id for p in self.pending}

    def ask_one(self) -> None:
        trial = self.study.ask(self.dists)
        self.trials += 1
        arch = self.params.arch(trial.params)
        costs = self.coster.cost([arch])
        viol = {k: float(v[0]) for k, v in _violations(costs, self.limits).items()}
        if self.set_constraint:
            for name in self.binding:
                trial.set_constraint(name, viol[name])
        elif self.binding:
            trial.set_user_attr(_USER_ATTR, [viol[name] for name in self.binding])
        worst = max(viol.values(), default=0.0)
        p = _Pending(
            trial,
            arch,
            float(costs.normalized("storage")[0]),
            float(costs.normalized("energy")[0]),
            worst,
        )
        fresh = worst <= 0.0 and arch.arch_id not in self.cache
        fresh = fresh and arch.arch_id not in self.pending_new
        self.idle = 0 if fresh else self.idle + 1
        if worst > 0.0:
            self.infeasible += 1
            self._tell(p, INFEASIBLE_PERFORMANCE, "infeasible", record_perf=False)
        elif arch.arch_id in self.cache:
            self.cached += 1
            self._tell(p, self.cache[arch.arch_id], "cached")
        else:
            self.pending.append(p)  # a repeat within the batch is trained once (see flush)

    def flush(self) -> None:
        order: dict[str, ArchSpec] = {}
        for p in self.pending:
            order.setdefault(p.arch.arch_id, p.arch)
        perfs = self.evaluator(list(order.values()))
        self.evals += len(order)
        self.cache.update(zip(order, (float(v) for v in perfs), strict=True))
        seen: set[str] = set()
        for p in self.pending:
            first = p.arch.arch_id not in seen
            seen.add(p.arch.arch_id)
            if not first:
                self.cached += 1
            self._tell(p, self.cache[p.arch.arch_id], "trained" if first else "cached")
        self.pending = []

    def discard(self) -> None:
        from optuna.trial import TrialState

        for p in self.pending:
            self.study.tell(p.trial, state=TrialState.FAIL)
            self._record(p, None, "discarded")
        self.pending = []

    def _tell(self, p: _Pending, value: float, outcome: Any, record_perf: bool = True) -> None:
        self.study.tell(p.trial, value)
        self._record(p, value if record_perf else None, outcome)
        if outcome != "infeasible" and (self.best is None or value > self.best[0]):
            self.best = (value, p.arch, self.elapsed())

    def _record(self, p: _Pending, value: float | None, outcome: Any) -> None:
        self.history.append(
            Evaluation(
                p.trial.number,
                p.arch.arch_id,
                p.arch.summary(),
                outcome,
                value,
                p.storage_norm,
                p.energy_norm,
                p.violation,
                self.elapsed(),
            )
        )

    def progress(self, budget_evals: int | None, budget_s: float | None) -> SearchProgress:
        return SearchProgress(
            self.evals,
            budget_evals,
            self.trials,
            self.infeasible,
            None if self.best is None else self.best[0],
            self.elapsed(),
            budget_s,
        )

    def result(
        self, method: str, sampler: str, platform: str, seed: int, seconds: float, stopped: str
    ) -> BaselineResult:
        if self.best is None:
            closest = min(
                (h for h in self.history if h.outcome == "infeasible"),
                key=lambda h: h.violation,
                default=None,
            )
            detail = (
                f"; the closest ({closest.summary}) was {closest.violation * 100:.1f} % over "
                "a limit"
                if closest is not None
                else ""
            )
            raise BaselineError(
                f"{method} found no architecture within the limits on {platform} "
                f"({', '.join(f'{k}={v:g}' for k, v in self.limits.items())}) in {self.trials} "
                f"trials ({self.infeasible} infeasible){detail}; raise the budget or loosen "
                "the limits"
            )
        perf, arch, t_best = self.best
        costs = self.coster.cost([arch])
        return BaselineResult(
            method=method,
            sampler=sampler,
            evaluator=self.evaluator.name,
            platform=platform,
            seed=seed,
            limits=dict(self.limits),
            binding=self.binding,
            best=arch,
            performance=perf,
            storage_norm=float(costs.normalized("storage")[0]),
            energy_norm=float(costs.normalized("energy")[0]),
            costs={
                f"{role}_{unit}": float(costs.totals[role][0])
                for role, unit in COST_UNITS
                if role in costs.totals
            },
            evals=self.evals,
            trials=self.trials,
            infeasible=self.infeasible,
            cached=self.cached,
            seconds=seconds,
            seconds_to_best=t_best,
            stopped_by=stopped,
            history=tuple(self.history),
        )
