"""GA / BO baselines (issue 5, item 4): the best net is feasible when recomputed from its
ArchSpec by the hardware models, infeasible trials are never evaluated, evaluations are batched
and cached, the same seed gives the same result, impossible limits fail clearly, and
``inag baseline`` works end to end. Encoder runs use the shared tiny NAGAN; one run trains for
real with the tiny dataset's trainer settings."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nagan_fixtures import (  # noqa: F401 - pytest fixtures
    fixture_one_thread,
    fixture_tiny_dataset,
    fixture_tiny_model,
    fixture_tiny_model_path,
)

from hwmodels import PlatformCoster
from inag.arch import ArchSpec
from inag.cli import main
from inag.nagan import Nagan
from inag.platform import Platform, load_platform
from inag.select.baselines import (
    BaselineError,
    BaselineResult,
    EncoderEvaluator,
    TrainEvaluator,
    search,
    train_evaluator,
)
from inag.space import SearchSpace, largest_for

pytest.importorskip("optuna")
pytestmark = pytest.mark.usefixtures("one_thread")

TABLE3 = {"max_storage_norm": 0.21, "max_energy_norm": 0.21}


@pytest.fixture(scope="module")
def bitfusion() -> Platform:
    return load_platform("bitfusion")


@pytest.fixture(scope="module")
def cortex_m() -> Platform:
    return load_platform("cortex_m")


class Recording:
    """A cheap evaluator that remembers every call (performance grows with capacity)."""

    name = "recording"

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[ArchSpec]] = []
        self.delay = delay

    def __call__(self, archs: Sequence[ArchSpec]) -> list[float]:
        self.calls.append(list(archs))
        time.sleep(self.delay)
        return [min(1.0, sum(la.width * la.bits for la in a.layers) / 400) for a in archs]


def assert_feasible(res: BaselineResult, platform: Platform, overrides: dict[str, float]) -> None:
    """Recompute the best net's costs from a JSON round trip of its ArchSpec."""
    arch = ArchSpec.from_dict(json.loads(json.dumps(res.best.to_dict())))
    coster = PlatformCoster(platform, reference=largest_for)
    costs = coster.cost([arch])
    limits = coster.limits(overrides)
    assert limits == res.limits
    for name, mx in limits.items():
        assert float(costs.value(name)[0]) <= mx, (name, res.best.summary())
    assert res.storage_norm == pytest.approx(float(costs.normalized("storage")[0]))
    assert res.energy_norm == pytest.approx(float(costs.normalized("energy")[0]))
    assert res.costs["storage_bits"] == pytest.approx(float(costs.totals["storage"][0]))
    assert set(platform.capability.numerics.supported_bits) >= {la.bits for la in arch.layers}


@pytest.mark.parametrize("method", ["ga", "bo", "tpe"])
@pytest.mark.parametrize("plat", ["bitfusion", "cortex_m"])
def test_encoder_search_best_is_feasible(
    tiny_model: Nagan, method: str, plat: str, request: pytest.FixtureRequest
) -> None:
    platform = request.getfixturevalue(plat)
    budget = 16 if method == "bo" else 40
    res = search(
        tiny_model.space,
        platform,
        EncoderEvaluator(tiny_model),
        method=method,
        overrides=TABLE3,
        budget_evals=budget,
        seed=1,
        batch_size=8,
    )
    assert_feasible(res, platform, TABLE3)
    assert res.method == method and res.evaluator == "encoder"
    assert res.evals == budget and res.stopped_by == "evals"
    assert res.trials == len(res.history) >= res.evals
    assert res.infeasible == sum(h.outcome == "infeasible" for h in res.history)
    # the reported performance is the encoder's for that architecture, and the best of all
    est = float(tiny_model.denormalize(tiny_model.estimate([res.best]))[0])
    assert res.performance == pytest.approx(est)
    seen = [h.performance for h in res.history if h.performance is not None and h.feasible]
    assert res.performance == pytest.approx(max(seen))
    assert 0.0 <= res.seconds_to_best <= res.seconds


def test_infeasible_never_evaluated_and_each_arch_once(bitfusion: Platform) -> None:
    space = _space()
    ev = Recording()
    coster = PlatformCoster(bitfusion, reference=largest_for)
    res = search(space, bitfusion, ev, "ga", TABLE3, budget_evals=50, seed=3, batch_size=8)
    evaluated = [a for call in ev.calls for a in call]
    assert len(evaluated) == res.evals == 50
    assert len({a.arch_id for a in evaluated}) == len(evaluated)  # the cache answers repeats
    assert all(len(call) <= 8 for call in ev.calls)
    costs = coster.cost(evaluated)
    for name, mx in coster.limits(TABLE3).items():
        assert (costs.value(name) <= mx).all()
    assert res.infeasible > 0  # 0.21 binds in this space: the sampler did meet the boundary
    for h in res.history:
        assert (h.performance is None) == (h.outcome == "infeasible")
        assert (h.violation > 0) == (h.outcome == "infeasible")


@pytest.mark.parametrize("method", ["ga", "bo"])
def test_same_seed_same_result(tiny_model: Nagan, bitfusion: Platform, method: str) -> None:
    def run(seed: int) -> BaselineResult:
        return search(
            tiny_model.space,
            bitfusion,
            EncoderEvaluator(tiny_model),
            method,
            TABLE3,
            budget_evals=14 if method == "bo" else 40,
            seed=seed,
            batch_size=4,
        )

    a, b = run(7), run(7)
    assert a.best == b.best and a.performance == b.performance
    assert [(h.arch_id, h.outcome) for h in a.history] == [
        (h.arch_id, h.outcome) for h in b.history
    ]
    c = run(8)
    assert [h.arch_id for h in c.history] != [h.arch_id for h in a.history]


def test_binding_limits_only_reach_the_sampler(bitfusion: Platform, cortex_m: Platform) -> None:
    """cortex_m's flash, SRAM and latency budgets hold for the largest net of this space: only
    the two Table 3 limits are constraints for Optuna (each one more GP for BO)."""
    for plat in (bitfusion, cortex_m):
        res = search(_space(), plat, Recording(), "ga", TABLE3, budget_evals=4, seed=0)
        assert set(res.binding) == set(TABLE3)
        assert set(res.limits) >= set(TABLE3)
    res = search(_space(), cortex_m, Recording(), "ga", None, budget_evals=4, seed=0)
    assert res.binding == () and res.infeasible == 0


def test_converged_sampler_stops(bitfusion: Platform) -> None:
    """A space of two networks: once both are evaluated, every trial is a repeat."""
    sp = _space()
    tiny = dataclasses.replace(
        sp, blocks=(dataclasses.replace(sp.blocks[0], min_depth=1, max_depth=1, widths=(2, 4)),),
        bits=(8,),
    )  # fmt: skip
    ev = Recording()
    res = search(tiny, bitfusion, ev, "ga", budget_evals=10, seed=0, batch_size=1, patience=7)
    assert res.stopped_by == "converged" and res.evals == 2
    assert [h.outcome for h in res.history[-7:]] == ["cached"] * 7


def test_impossible_limits_fail_before_searching(bitfusion: Platform) -> None:
    ev = Recording()
    with pytest.raises(BaselineError, match="smallest .* max_storage_norm over by"):
        search(_space(), bitfusion, ev, "bo", {"max_storage_norm": 1e-4}, budget_evals=10)
    assert ev.calls == []


def test_nothing_found_names_the_closest(bitfusion: Platform) -> None:
    """A limit only the very smallest nets meet, and too few trials to find one."""
    space = _space()
    coster = PlatformCoster(bitfusion, reference=largest_for)
    tiny = ArchSpec.from_dict(
        {**space.largest().to_dict(), "layers": [{"kind": "dense", "width": 2, "bits": 2}]}
    )
    limit = float(coster.cost([tiny]).normalized("storage")[0]) * 1.001
    with pytest.raises(BaselineError, match=r"found no architecture .* closest .* over"):
        search(
            space,
            bitfusion,
            Recording(),
            "ga",
            {"max_storage_norm": limit},
            budget_evals=5,
            seed=0,
            max_trials=3,
        )


def test_time_budget_stops_and_discards_unfinished(bitfusion: Platform) -> None:
    ev = Recording(delay=0.05)
    t0 = time.perf_counter()
    res = search(_space(), bitfusion, ev, "ga", TABLE3, budget_minutes=0.005, batch_size=2)
    assert res.stopped_by == "time"
    assert time.perf_counter() - t0 < 0.3 + 2.0  # one batch of overrun at most, plus slack
    assert res.evals == sum(len(c) for c in ev.calls)


def test_bad_arguments(bitfusion: Platform, tiny_model: Nagan) -> None:
    ev = Recording()
    with pytest.raises(BaselineError, match="budget"):
        search(_space(), bitfusion, ev, "ga", TABLE3)
    with pytest.raises(BaselineError, match="unknown method"):
        search(_space(), bitfusion, ev, "sa", TABLE3, budget_evals=3)
    with pytest.raises(BaselineError, match="unknown limit"):
        search(_space(), bitfusion, ev, "ga", {"max_flops": 1.0}, budget_evals=3)
    with pytest.raises(BaselineError, match="positive"):
        search(_space(), bitfusion, ev, "ga", {"max_storage_norm": -1.0}, budget_evals=3)


def test_real_training_matches_a_fresh_retraining(tiny_dataset: Any, bitfusion: Platform) -> None:
    """Eight real QAT trainings (the tiny dataset's trainer: 3 epochs, 1 restart); the best
    net's performance is what the same trainer gives it alone: batching changes nothing."""
    ev = train_evaluator("data_a", dataset=str(tiny_dataset.db))
    assert isinstance(ev, TrainEvaluator)
    assert ev.config.epochs == tiny_dataset.meta["trainer"]["epochs"]
    from inag.select.baselines import space_for_task

    space = space_for_task(ev.task)
    res = search(space, bitfusion, ev, "ga", TABLE3, budget_evals=8, seed=0, batch_size=8)
    assert res.evals == 8 and res.evaluator == "train"
    assert_feasible(res, bitfusion, TABLE3)
    again = ev([res.best])[0]
    assert again == pytest.approx(res.performance, abs=1e-5)


# ---------------------------------------------------------------------------- CLI
def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_encoder_baseline_json(
    capsys: pytest.CaptureFixture[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "ga.json"
    code, out, err = run(
        capsys,
        "baseline",
        "--method", "ga",
        "--evaluator", "encoder",
        "--model", tiny_model_path,
        "--platform", "bitfusion",
        "--budget-evals", 30,
        "--seed", 2,
        "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out_json.read_text())
    best = data["best"]
    assert best["summary"] in out and "search: 30 evaluations" in out
    assert f"{best['performance']:.4f}" in out
    assert data["limits"]["max_storage_norm"] == 0.21  # bitfusion's own constraints
    assert data["selected"][0]["arch"] == best["arch"]
    assert len(data["history"]) == data["trials"]
    assert_feasible_dict(best, load_platform("bitfusion"))
    from inag.cli.export import read_arch  # `inag export ga.json#1` reads the same record

    assert read_arch(f"{out_json}#1") == ArchSpec.from_dict(best["arch"])


def test_cli_trains_with_the_dataset_settings(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Any
) -> None:
    code, out, err = run(
        capsys,
        "baseline",
        "--method", "bo",
        "--db", tiny_dataset.db,
        "--platform", "cortex_m",
        "--max-storage", 0.21,
        "--max-energy", 0.21,
        "--budget-evals", 4,
        "--batch-size", 4,
    )  # fmt: skip
    assert code == 0, err
    assert "evaluator train" in out and "task data_a" in out
    assert "max_latency_s=0.1" in out and "max_storage_norm=0.21" in out
    assert "search: 4 evaluations" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--task", "data_a", "--max-storage", "0.0001", "--budget-evals", "3"], "smallest"),
        (["--task", "data_a", "--evaluator", "encoder", "--budget-evals", "3"], "--model"),
        (["--task", "data_a"], "budget"),
        (["--task", "data_a", "--method", "sa", "--budget-evals", "3"], "--method"),
        (["--task", "digits", "--db", "DB", "--budget-evals", "3"], "task differs"),
    ],
)
def test_cli_errors_are_one_paragraph(
    capsys: pytest.CaptureFixture[str], tiny_dataset: Any, argv: list[str], needle: str
) -> None:
    argv = [str(tiny_dataset.db) if a == "DB" else a for a in argv]
    code, out, err = run(capsys, "baseline", *argv)
    assert code == 2
    assert "Traceback" not in err and needle in err, err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--budget-minutes", "inf"], ["--budget-minutes", "finite", "found inf"]),
        (["--budget-minutes", "0"], ["--budget-minutes", "> 0", "found 0"]),
        (["--budget-evals", "2", "--space", "cnn"], ["--space 'cnn'", "cnn space", "mlp space"]),
        (["--budget-evals", "2", "--space", "nope.yaml"], ["--space", "nope.yaml"]),
    ],
)
def test_cli_encoder_refuses_bad_budget_and_space(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    code, out, err = run(capsys, "baseline", "--evaluator", "encoder", "--model", "data_a", *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_cli_encoder_accepts_the_models_own_space(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--evaluator", "encoder", "--model", "data_a", "--budget-evals", "2", "--space", "mlp")
    code, out, err = run(capsys, "baseline", *argv)
    assert code == 0, err
    assert "search: 2 evaluations" in out


# ---------------------------------------------------------------------------- helpers
def _space() -> SearchSpace:
    from inag.space import load_space

    return load_space("mlp").bind((1,), 1)


def assert_feasible_dict(best: dict[str, Any], platform: Platform) -> None:
    coster = PlatformCoster(platform, reference=largest_for)
    costs = coster.cost([ArchSpec.from_dict(best["arch"])])
    for name, mx in coster.limits().items():
        assert float(costs.value(name)[0]) <= mx
    assert np.isclose(best["storage_norm"], float(costs.normalized("storage")[0]))
