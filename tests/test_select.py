"""Selecting stages (issue 5) on bags from a real tiny NAGAN: every pick meets every limit when
recomputed by the hardware models, re-conditioning, multi-platform, determinism, clear failure,
ranking and ties."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from nagan_fixtures import (  # noqa: F401 - pytest fixtures
    fixture_one_thread,
    fixture_tiny_dataset,
    fixture_tiny_model,
    fixture_tiny_model_path,
)

from hwmodels import PlatformCoster
from inag.nagan import Nagan
from inag.platform import Platform, load_platform
from inag.select import (
    RANK_KEYS,
    Bag,
    SelectionError,
    build_stages,
    generate_bag,
    limit_overrides,
    make_bag,
    rank,
    run_stages,
    select,
)
from inag.space import largest_for

pytestmark = pytest.mark.usefixtures("one_thread")

N = 2000
BUNDLED = Path(__file__).resolve().parents[1] / "inag" / "platforms" / "cortex_m.yaml"


def platform_yaml(tmp_path: Path, name: str, **constraints: Any) -> Path:
    """A platform derived from the bundled cortex_m.yaml with other constraints."""
    data = yaml.safe_load(BUNDLED.read_text())
    data["name"] = name
    data["constraints"] = {**data.get("constraints", {}), **constraints}
    data["constraints"] = {k: v for k, v in data["constraints"].items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def coster(p: Platform) -> PlatformCoster:
    return PlatformCoster(p, reference=largest_for)


def assert_fits(
    model: Nagan,
    sel: Any,
    platform: Platform,
    overrides: dict[str, float],
    threshold: float,
) -> None:
    """Recompute every limit from the chosen ArchSpecs with a fresh coster."""
    archs = [sel.bag.archs[i] for i in sel.chosen]
    assert archs, "nothing selected"
    co = coster(platform)
    costs = co.cost(archs)
    limits = co.limits(overrides)
    assert limits, "no limits to check"
    for name, mx in limits.items():
        v = costs.value(name)
        assert np.all(v <= mx), (name, v.max(), mx)
    ok = set(platform.capability.numerics.supported_bits)
    for a in archs:
        assert {layer.bits for layer in a.layers} | {a.output_bits} <= ok
        assert model.space.contains(a)
    est = model.estimate(archs)
    assert np.all(np.abs(est - sel.condition) <= threshold + 1e-6)


# ---------------------------------------------------------------------------- limits hold
@pytest.mark.parametrize(
    "platform, overrides",
    [
        ("cortex_m", {}),
        ("cortex_m", limit_overrides(max_storage=0.21, max_energy=0.21)),
        ("cortex_m", limit_overrides(max_storage=0.05, max_latency_ms=30.0)),
        ("host_cpu", limit_overrides(max_storage_kb=1.0, max_sram_kb=4.0)),
        ("bitfusion", limit_overrides(max_energy=0.1, max_flash_kb=2.0)),
    ],
)
def test_every_selected_net_satisfies_every_limit(
    tiny_model: Nagan, platform: str, overrides: dict[str, float]
) -> None:
    p = load_platform(platform)
    threshold = 0.08
    sels, tries = select(tiny_model, [p], 0.8, n=N, threshold=threshold, overrides=overrides)
    (sel,) = sels
    assert len(sel.chosen) == sel.funnel[-1].kept > 0
    assert_fits(tiny_model, sel, p, overrides, threshold)
    # the records carry the same numbers the hardware models give
    recs = sel.records(tiny_model, top=len(sel.chosen))
    co = coster(p).cost([sel.bag.archs[i] for i in sel.chosen])
    np.testing.assert_allclose([r["storage_bits"] for r in recs], co.totals["storage"])
    np.testing.assert_allclose([r["energy_norm"] for r in recs], co.normalized("energy"))
    np.testing.assert_allclose([r["latency_s"] for r in recs], co.totals["latency"])
    assert [r["rank"] for r in recs] == list(range(1, len(recs) + 1))


def test_funnel_is_monotone_and_names_the_stages(tiny_model: Nagan) -> None:
    p = load_platform("cortex_m")
    (sel,), _ = select(
        tiny_model, [p], 0.8, n=N, overrides=limit_overrides(max_storage=0.21, max_energy=0.21)
    )
    names = [f.name for f in sel.funnel]
    assert names == ["confidence", "bits", "storage", "energy", "latency", "memory fit"]
    kept = [len(sel.bag.archs)] + [f.kept for f in sel.funnel]
    assert all(a >= b for a, b in zip(kept, kept[1:], strict=False))
    assert all(f.removed == a - f.kept for f, a in zip(sel.funnel, kept, strict=False))
    assert int(sel.bag.counts.sum()) == sel.bag.generated == N


# ---------------------------------------------------------------------------- re-conditioning
def _min_storage_per_try(model: Nagan, p: Platform, c0: float, tries: int, step: float):
    """Smallest normalized storage among the candidates that pass every *other* stage, for
    the bags select() generates try by try (seed + attempt)."""
    co = coster(p)
    stages = build_stages(p, co, threshold=0.05)
    out = []
    for t in range(tries):
        c = round(c0 - t * step, 6)
        sel = run_stages(make_bag(co, generate_bag(model, c, N, t)), stages, p.name, "dist_f")
        sn = sel.bag.costs.normalized("storage")[sel.chosen]
        out.append((c, float(sn.min()) if len(sn) else np.inf))
    return out


def test_reconditioning_triggers_and_reports_tries(tiny_model: Nagan) -> None:
    p = load_platform("cortex_m")
    per_try = _min_storage_per_try(tiny_model, p, 0.9, 10, 0.05)
    first = per_try[0][1]
    # a storage budget the first bag cannot meet but a lower condition's bag can
    expect = next((t for t, (_, s) in enumerate(per_try) if s < first), None)
    assert expect is not None, f"no lower condition yields smaller nets: {per_try}"
    limit = per_try[expect][1]
    ov = limit_overrides(max_storage=limit)
    (sel,), tries = select(tiny_model, [p], 0.9, n=N, overrides=ov, step=0.05)
    tr = tries[p.name]
    assert len(tr) == expect + 1
    assert [a.condition for a in tr] == [per_try[t][0] for t in range(expect + 1)]
    assert all(a.survivors == 0 for a in tr[:-1]) and tr[-1].survivors > 0
    # the failing tries say the storage stage emptied them
    for a in tr[:-1]:
        assert a.funnel[-1].name == "storage" and a.funnel[-1].kept == 0
        assert "max_storage_norm" in a.funnel[-1].worst_miss
    assert sel.condition == tr[-1].condition < 0.9
    assert_fits(tiny_model, sel, p, ov, 0.05)


def test_reconditioning_stops_at_the_floor(tiny_model: Nagan) -> None:
    p = load_platform("cortex_m")
    with pytest.raises(SelectionError) as err:
        select(tiny_model, [p], 0.9, n=500, overrides={"max_storage_bits": 1.0}, floor=0.6)
    msg = str(err.value)
    # 0.9, 0.85, ..., 0.6: seven tries
    assert "down to c=0.60 (7 tries, bags of 500)" in msg


# ---------------------------------------------------------------------------- multi-platform
def test_tight_and_loose_platforms_get_different_picks(tiny_model: Nagan, tmp_path: Path) -> None:
    loose_p = load_platform(platform_yaml(tmp_path, "loose_m"))
    (loose,), _ = select(tiny_model, [loose_p], 0.9, n=N)
    top_storage = float(loose.bag.costs.normalized("storage")[loose.chosen[0]])
    tight_p = load_platform(platform_yaml(tmp_path, "tight_m", max_storage_norm=top_storage / 2))
    sels, tries = select(tiny_model, [loose_p, tight_p], 0.9, n=N)
    assert [s.platform for s in sels] == ["loose_m", "tight_m"]
    lo, ti = sels
    # the loose platform's selection is unchanged by selecting for another platform too
    assert [lo.bag.archs[i].arch_id for i in lo.chosen] == [
        loose.bag.archs[i].arch_id for i in loose.chosen
    ]
    lo_top = lo.bag.archs[lo.chosen[0]].arch_id
    ti_top = ti.bag.archs[ti.chosen[0]].arch_id
    assert lo_top != ti_top
    assert all(ti.bag.costs.normalized("storage")[i] <= top_storage / 2 for i in ti.chosen)
    assert len(tries["loose_m"]) == 1
    assert_fits(tiny_model, ti, tight_p, {}, 0.05)
    # one bag: both selections at the first condition see the same generated bag
    if len(tries["tight_m"]) == 1:
        assert ti.bag.archs == lo.bag.archs


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_selection(tiny_model: Nagan) -> None:
    p = [load_platform("cortex_m"), load_platform("host_cpu")]
    ov = limit_overrides(max_storage=0.21, max_energy=0.21)

    def run(seed: int) -> list[Any]:
        sels, tries = select(tiny_model, p, 0.7, n=N, overrides=ov, seed=seed, rank_by="energy")
        return [
            (
                s.platform,
                s.condition,
                [s.bag.archs[i].arch_id for i in s.chosen],
                [(f.name, f.kept, f.removed) for f in s.funnel],
                [(a.condition, a.survivors) for a in tries[s.platform]],
            )
            for s in sels
        ]

    a, b = run(3), run(3)
    assert a == b
    assert run(4) != a


# ---------------------------------------------------------------------------- nothing fits
def test_impossible_platform_names_the_stage_and_the_miss(
    tiny_model: Nagan, tmp_path: Path
) -> None:
    p = load_platform(platform_yaml(tmp_path, "impossible", max_storage_bits=8.0))
    with pytest.raises(SelectionError) as err:
        select(tiny_model, [p], 0.5, n=500, threshold=1.0)
    msg = str(err.value)
    assert msg.startswith("nothing fits impossible, even after re-conditioning from c=0.50")
    assert "stage 'storage' removed the last" in msg
    assert "max_storage_bits: best" in msg and "vs limit 8" in msg and "% over" in msg
    assert "\n" not in msg


def test_unsupported_bits_names_the_bits_stage(tiny_model: Nagan, tmp_path: Path) -> None:
    path = platform_yaml(tmp_path, "eight_only")
    data = yaml.safe_load(path.read_text())
    data["capability"]["numerics"]["supported_bits"] = [8]
    path.write_text(yaml.safe_dump(data))
    p = load_platform(path)
    bag = make_bag(coster(p), generate_bag(tiny_model, 0.5, 300, 0))
    sel = run_stages(bag, [build_stages(p, coster(p), 1.0)[1]], p.name, "dist_f")
    all8 = [all(layer.bits == 8 for layer in a.layers) for a in bag.archs]
    assert len(sel.chosen) == sum(all8)
    if not any(all8):
        assert "outside [8]" in sel.funnel[-1].worst_miss


def test_confidence_miss_says_how_close(tiny_model: Nagan) -> None:
    p = load_platform("cortex_m")
    with pytest.raises(SelectionError) as err:
        select(tiny_model, [p], 0.9, n=300, threshold=1e-9, floor=0.8)
    assert "stage 'confidence'" in str(err.value) and "closest Dist_f" in str(err.value)


# ---------------------------------------------------------------------------- ranking
@pytest.mark.parametrize("by", RANK_KEYS)
def test_ranking_orders_by_the_key(tiny_model: Nagan, by: str) -> None:
    p = load_platform("cortex_m")
    (sel,), _ = select(tiny_model, [p], 0.6, n=N, threshold=0.2, rank_by=by)
    assert len(sel.chosen) >= 3
    key = getattr(sel.bag, by) if by in ("dist_ub", "dist_f") else sel.bag.costs.totals[by]
    vals = key[sel.chosen]
    assert np.all(np.diff(vals) >= 0), vals
    if by == "storage":
        recs = sel.records(tiny_model, top=len(sel.chosen))
        st = [r["storage_bits"] for r in recs]
        assert st == sorted(st)


def test_default_ranking_adds_the_estimates_interval(tiny_model: Nagan) -> None:
    """dist_ub = Dist_f + the 90 % interval's half-width from the encoder ensemble, so of two
    equally close candidates the one the ensemble agrees on ranks first."""
    assert tiny_model.has_intervals
    (sel,), _ = select(tiny_model, [load_platform("cortex_m")], 0.6, n=N, threshold=0.2)
    bag = sel.bag
    assert bag.half_width is not None and (bag.half_width > 0).all()
    np.testing.assert_allclose(bag.dist_ub, bag.dist_f + bag.half_width)
    vals = bag.dist_ub[sel.chosen]
    assert np.all(np.diff(vals) >= 0)
    (plain,), _ = select(
        tiny_model, [load_platform("cortex_m")], 0.6, n=N, threshold=0.2, rank_by="dist_f"
    )
    assert plain.bag.archs == bag.archs  # same bag, another order
    assert list(plain.chosen) != list(sel.chosen)
    rec = sel.records(tiny_model, top=1)[0]
    i = sel.chosen[0]
    assert rec["interval_perf"] == pytest.approx(bag.half_width[i] * tiny_model.p_range)
    assert rec["dist_ub"] == pytest.approx(bag.dist_ub[i])


def test_a_model_without_ensemble_ranks_dist_ub_as_dist_f(tiny_model: Nagan) -> None:
    from dataclasses import replace

    bare = replace(tiny_model, ensemble=None)
    assert not bare.has_intervals
    (sel,), _ = select(bare, [load_platform("cortex_m")], 0.6, n=N, threshold=0.2)
    assert sel.bag.half_width is None
    (plain,), _ = select(
        bare, [load_platform("cortex_m")], 0.6, n=N, threshold=0.2, rank_by="dist_f"
    )
    assert list(plain.chosen) == list(sel.chosen)
    assert sel.records(bare, top=1)[0]["interval_perf"] is None


def test_unknown_ranking_is_an_error(tiny_model: Nagan) -> None:
    with pytest.raises(SelectionError, match="unknown ranking 'size'"):
        select(tiny_model, [load_platform("cortex_m")], 0.6, n=100, rank_by="size")


def test_ties_are_broken_deterministically(tiny_model: Nagan) -> None:
    """Equal primary keys fall back to Dist_f, storage, then the content-sorted position,
    whatever order the survivors come in."""
    p = load_platform("cortex_m")
    co = coster(p)
    g = generate_bag(tiny_model, 0.5, 500, 0)
    archs = g.archs + g.archs  # every arch twice: exact ties on every key
    est = np.concatenate([g.estimate, g.estimate])
    est = np.round(est, 1)  # many ties in Dist_f as well
    bag = Bag(
        0.5,
        archs,
        est,
        np.abs(est - 0.5),
        co.cost(archs),
        np.ones(len(archs), dtype=int),
        len(archs),
    )
    idx = np.arange(len(archs))
    rng = np.random.default_rng(0)
    for by in RANK_KEYS:
        want = rank(bag, idx, by)
        for _ in range(5):
            np.testing.assert_array_equal(rank(bag, rng.permutation(idx), by), want)
        primary = getattr(bag, by) if by in ("dist_ub", "dist_f") else bag.costs.totals[by]
        expect = sorted(
            idx, key=lambda i: (primary[i], bag.dist_f[i], bag.costs.totals["storage"][i], i)
        )
        assert want.tolist() == [int(i) for i in expect]
        # each duplicate pair keeps its content-sorted order
        n = len(g.archs)
        pos = {int(i): r for r, i in enumerate(want)}
        assert all(pos[i] < pos[i + n] for i in range(n))


# ---------------------------------------------------------------------------- verification
def test_verify_reranks_the_top_k_by_real_training(tiny_model: Nagan) -> None:
    """The top k are trained with the model's own recipe and re-ranked by how close their
    measured performance is to c; the rest keep their order; the numbers are the trainer's."""
    from dataclasses import replace

    from inag.select import verify
    from inag.tasks import load_task
    from inag.train.trainer import BatchedMLPTrainer, TrainerConfig

    plat = load_platform(BUNDLED)
    (sel,), _ = select(tiny_model, [plat], 0.8, n=N, strict=False)
    assert len(sel.chosen) > 6
    k = 4
    seen: list[tuple[int, int]] = []
    (ver,) = verify([sel], tiny_model, k, progress=lambda i, n: seen.append((i, n)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    head = [int(i) for i in sel.chosen[:k]]
    assert sorted(int(i) for i in ver.chosen[:k]) == sorted(head)
    assert list(ver.chosen[k:]) == list(sel.chosen[k:])
    assert set(ver.measured) == set(head)
    key = [abs(float(tiny_model.normalize(ver.measured[int(i)])) - 0.8) for i in ver.chosen[:k]]
    assert key == sorted(key)
    task = load_task(tiny_model.task, seed=tiny_model.meta["data_seed"])
    again = BatchedMLPTrainer(task, TrainerConfig.from_record(tiny_model.meta["trainer"])).train(
        [sel.bag.archs[i] for i in head]
    )
    assert [ver.measured[i] for i in head] == [r.performance for r in again]
    recs = ver.records(tiny_model, k + 2)
    assert all(r["measured_perf"] is not None for r in recs[:k])
    assert all(r["measured_perf"] is None for r in recs[k:])
    # a model that does not record its trainer cannot be verified: a clear error
    with pytest.raises(SelectionError, match="trainer settings"):
        verify([sel], replace(tiny_model, meta={}), k)
    with pytest.raises(ValueError, match="k >= 1"):
        verify([sel], tiny_model, 0)


def test_cli_select_verify_writes_measured_performance(tiny_model_path: Path, tmp_path: Path):
    import json

    from inag.cli import main

    out = tmp_path / "sel.json"
    args = ["select", "--model", str(tiny_model_path), "-p", str(BUNDLED), "--condition", "0.8"]
    assert main([*args, "-n", str(N), "--verify", "3", "--top", "5", "--json", str(out)]) == 0
    picks = json.loads(out.read_text())["platforms"][0]["selected"]
    assert [p["measured_perf"] is not None for p in picks] == [True] * 3 + [False] * 2


# ---------------------------------------------------------------------------- hostile input
def costed_platform_yaml(tmp_path: Path, name: str, role: str, param: str, value: Any) -> Path:
    """The bundled cortex_m.yaml with one cost-model parameter replaced (``value`` is the
    parameter's whole entry: a Sourced figure or a table of them)."""
    data = yaml.safe_load(BUNDLED.read_text())
    data["name"] = name
    data["cost_models"][role]["params"][param] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sourced(value: float) -> dict[str, Any]:
    return {"value": value, "source": "a hostile-input test", "kind": "guess"}


@pytest.mark.parametrize(
    "option, value",
    [
        ("--max-sram-kb", "0"),
        ("--max-storage-kb", "-8"),
        ("--max-energy", "nan"),
        ("--max-latency-ms", "inf"),
        ("--max-storage", "0"),
        ("--max-storage-kb", "1e306"),  # finite in KB, inf once scaled to bits
    ],
)
def test_cli_select_rejects_unusable_limits(
    tiny_model_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    """A limit of 0 once crashed the miss report (division by zero), a negative one ran every
    re-conditioning try before failing, NaN failed silently and inf was no limit: each is a
    usage error naming the option, what it expects and what it found."""
    from inag.cli import main

    args = ["select", "--model", str(tiny_model_path), "-p", str(BUNDLED), "-n", "8"]
    assert main([*args, "--verify", "0", "--refine", "0", option, value]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert option in err and "finite number > 0" in err
    assert f"found {float(value):g}" in err


def test_library_rejects_unusable_overrides(tiny_model: Nagan) -> None:
    p = load_platform("cortex_m")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SelectionError, match="max_sram_bytes: expected a finite number > 0"):
            select(tiny_model, [p], 0.8, n=50, overrides={"max_sram_bytes": bad})


def test_miss_report_survives_a_zero_limit_and_huge_ratios(tiny_model: Nagan) -> None:
    """The stage's miss text divides by nothing and stays short at any scale."""
    from inag.select import LimitStage, over_text

    p = load_platform("cortex_m")
    bag = make_bag(coster(p), generate_bag(tiny_model, 0.5, 200, 0))
    removed = np.ones(len(bag.archs), dtype=bool)
    zero = LimitStage("memory fit", {"max_sram_bytes": 0.0})
    assert not zero.keep(bag).any()
    assert "limit 0 (a limit that is not > 0 admits nothing)" in zero.miss(bag, removed)
    assert over_text(1.5, 1.0) == "50.0 % over"
    assert over_text(150.0, 1.0) == "150× the limit, 1.49e+04 % over"
    assert over_text(1.563e300, 0.1) == "1.56e+301× the limit, 1.56e+303 % over"
    assert over_text(1e308, 1e-10) == "far over: the ratio overflows a float"
    assert over_text(float("nan"), 1.0) == "not comparable"


def test_absurd_platform_overhead_gives_a_short_miss_report(
    tiny_model: Nagan, tmp_path: Path
) -> None:
    """Overhead cycles of 1e308 once printed a ~300-digit percentage over the latency limit."""
    path = costed_platform_yaml(
        tmp_path, "huge", "latency", "overhead_cycles_per_inference", sourced(1e308)
    )
    with pytest.raises(SelectionError) as err:
        select(tiny_model, [load_platform(path)], 0.8, n=50, floor=0.75)
    msg = str(err.value)
    assert "max_latency_s: best" in msg and "× the limit" in msg
    assert re.search(r"\d{12}", msg) is None, msg


def test_zero_energy_platform_normalizes_to_zero(
    tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``e_mac_pj: {8: 0}`` (allowed: >= 0) makes the largest arch's energy 0: normalized
    energy is 0, not NaN with a RuntimeWarning, so --max-energy and --rank-by energy work and
    the picks are the same every run."""
    import json
    import warnings

    from inag.cli import main

    path = costed_platform_yaml(tmp_path, "free", "energy", "e_mac_pj", {8: sourced(0.0)})
    base = ["select", "--model", str(tiny_model_path), "-p", str(path), "-n", "64"]
    base += ["--verify", "0", "--refine", "0", "--condition", "0.8", "--threshold", "0.2"]
    base += ["--rank-by", "energy", "--max-energy", "0.5"]
    picks = []
    for k in range(2):
        out = tmp_path / f"sel{k}.json"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert main([*base, "--json", str(out)]) == 0
        picks.append(json.loads(out.read_text())["selected"])
    assert picks[0] and picks[0] == picks[1]
    assert all(r["energy_j"] == 0.0 and r["energy_norm"] == 0.0 for r in picks[0])
    assert " nan" not in capsys.readouterr().out


def test_normalized_is_defined_for_a_zero_reference() -> None:
    """0/0 -> 0, x/0 -> inf (costs more than the reference), a missing reference stays NaN;
    no RuntimeWarning either way."""
    import warnings

    from hwmodels.costing import CostResult

    totals = np.array([0.0, 2.0, 3.0, 1.0])
    reference = np.array([0.0, 0.0, 6.0, np.nan])
    res = CostResult("p", (), None, {}, {"energy": totals}, {"energy": reference})  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = res.normalized("energy")
    np.testing.assert_array_equal(got, [0.0, np.inf, 0.5, np.nan])
