"""``inag sweep`` (Fig. 4b) with the bundled data_a generator on small bags: the CSV and JSON,
the frontier, agreement with ``inag select``, determinism and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nagan_fixtures import fixture_one_thread  # noqa: F401 - pytest fixture

from inag.cli import main
from inag.nagan import load_model
from inag.platform import load_platform
from inag.select import select
from inag.select.sweep import (
    CSV_COLUMNS,
    FILES,
    SweepError,
    condition_seed,
    conditions,
    coverage,
    front_stats,
    hypervolume,
    pareto_front,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N = 200  # bag per condition
ARGS = ["--model", "data_a", "-p", "bitfusion", "--step", "0.5", "-n", str(N), "--seed", "3"]


def run(args: list[str], out: Path) -> int:
    return main(["sweep", *args, "--out", str(out)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("sweep")
        assert run([*ARGS, "--real", "1"], out) == 0
    finally:
        torch.set_num_threads(before)
    return out


# ---------------------------------------------------------------------------- conditions
def test_conditions_default_sweep_and_rounding():
    cs = conditions(0.0, 1.0, 0.05)
    assert len(cs) == 21 and cs[0] == 0.0 and cs[-1] == 1.0 and cs[7] == 0.35
    assert conditions(0.1, 1.0, 0.1) == tuple(round(0.1 * i, 1) for i in range(1, 11))
    assert conditions(0.3, 0.3, 0.1) == (0.3,)
    assert conditions(0.0, 0.99, 0.5) == (0.0, 0.5)


@pytest.mark.parametrize(
    ("start", "stop", "step", "match"),
    [
        (0.0, 1.0, 0.0, "--step must be > 0"),
        (0.0, 1.0, -0.1, "--step must be > 0"),
        (0.8, 0.2, 0.1, "above --to"),
        (0.0, 1.5, 0.1, "--to 1.5 is outside"),
        (-0.1, 1.0, 0.1, "--from -0.1 is outside"),
        (0.0, float("nan"), 0.1, "finite"),
        (0.0, 1.0, 1e-6, "at most"),
    ],
)
def test_conditions_refuse_bad_input(start: float, stop: float, step: float, match: str):
    with pytest.raises(SweepError, match=match):
        conditions(start, stop, step)


# ---------------------------------------------------------------------------- frontier
def dominated(cost: np.ndarray, perf: np.ndarray, i: int) -> bool:
    better = (cost <= cost[i]) & (perf >= perf[i]) & ((cost < cost[i]) | (perf > perf[i]))
    return bool(better.any())


def test_pareto_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cost = rng.integers(0, 8, 60) / 8.0  # ties on purpose
        perf = rng.integers(0, 8, 60) / 8.0
        front = pareto_front(cost, perf)
        assert list(np.argsort(cost[front], kind="stable")) == list(range(len(front)))
        assert not any(dominated(cost, perf, i) for i in front)
        pairs = {(cost[i], perf[i]) for i in front}
        assert len(pairs) == len(front)  # one of identical points
        for i in range(60):  # everything else is dominated or a duplicate of a front point
            assert i in set(front) or dominated(cost, perf, i) or (cost[i], perf[i]) in pairs
        best = max(range(60), key=lambda i: (perf[i], -cost[i]))
        cheapest = min(range(60), key=lambda i: (cost[i], -perf[i]))
        assert (cost[best], perf[best]) in pairs and (cost[cheapest], perf[cheapest]) in pairs


def test_pareto_front_ignores_nan_and_hypervolume_by_hand():
    cost = np.array([0.1, 0.2, 0.5, np.nan, 0.3])
    perf = np.array([0.5, 0.4, 0.9, 1.0, 0.6])
    assert pareto_front(cost, perf).tolist() == [0, 4, 2]
    # boxes: [0.1, 0.3) x 0.5, [0.3, 0.5) x 0.6, [0.5, 1] x 0.9
    assert hypervolume(cost, perf) == pytest.approx(0.2 * 0.5 + 0.2 * 0.6 + 0.5 * 0.9)
    s = front_stats(cost, perf)
    assert s["points"] == 3 and s["cost_width"] == pytest.approx(0.4)
    assert s["perf_min"] == 0.5 and s["perf_max"] == 0.9
    assert s["mean_best_perf"] == pytest.approx(s["hypervolume"])  # ref_cost 1
    assert s["cost_to_reach"] == {"0.5": 0.1, "0.8": 0.5, "0.9": 0.5, "0.95": None}
    half = front_stats(cost, perf, ref_cost=0.5)  # boxes up to 0.5: 0.1 + 0.12
    assert half["mean_best_perf"] == pytest.approx((0.2 * 0.5 + 0.2 * 0.6) / 0.5)
    assert front_stats(np.zeros(0), np.zeros(0)) == {"points": 0}
    # C(A, B): A's front (0.1, 0.5) covers B's (0.2, 0.5) but not (0.05, 0.1)
    b_cost, b_perf = np.array([0.2, 0.05]), np.array([0.5, 0.1])
    assert coverage(cost, perf, b_cost, b_perf) == 0.5


# ---------------------------------------------------------------------------- one real run
def test_outputs_written(swept: Path):
    assert sorted(p.name for p in swept.iterdir()) == sorted(FILES)
    for name in FILES:
        if name.endswith(".png"):
            assert (swept / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_and_json_agree(swept: Path):
    rows = read_csv(swept / "sweep.csv")
    rec = json.loads((swept / "sweep.json").read_text())
    assert tuple(rows[0]) == CSV_COLUMNS
    cfg = rec["config"]
    assert cfg["seed"] == 3 and cfg["model"] == "data_a" and cfg["platform"] == "bitfusion"
    assert cfg["conditions"] == [0.0, 0.5, 1.0] and cfg["bag"] == N and cfg["real"] == 1
    assert rec["platform"] == "bitfusion" and rec["model"]["task"] == "data_a"
    inag = [r for r in rows if r["source"] == "inag"]
    rand = [r for r in rows if r["source"] == "random"]
    assert (
        len(inag)
        == rec["candidates"]["inag_rows"]
        == sum(c["survivors"] for c in rec["conditions"])
    )
    # the comparison has the sweep's distinct candidate count, all within the platform budgets
    assert len(rand) == rec["candidates"]["random"] == rec["candidates"]["inag_distinct"] > 0
    for r in inag + rand:
        assert float(r["storage_norm"]) <= 0.21 + 1e-12 and float(r["energy_norm"]) <= 0.21
    for c in rec["conditions"]:
        mine = [r for r in inag if float(r["condition"]) == c["condition"]]
        assert len(mine) == c["survivors"] == c["funnel"][-1]["kept"]
        assert [int(r["rank"]) for r in mine] == list(range(1, len(mine) + 1))
        assert all(float(r["dist_f"]) <= 0.05 for r in mine)  # the confidence stage
        if mine:
            assert mine[0]["picked"] == "1" and c["pick"]["arch_id"] == mine[0]["arch_id"]
            # --real 1: the pick is measured, its normalized value matches the raw one
            assert mine[0]["measured"] == "1" and mine[0]["measured_why"] == "top-k"
            assert c["pick"]["measured_perf"] == pytest.approx(float(mine[0]["measured_perf"]))
            assert c["trained"] == 1
    assert sum(r["picked"] == "1" for r in inag) == sum(
        c["survivors"] > 0 for c in rec["conditions"]
    )
    assert not any(r["picked"] == "1" or r["condition"] for r in rand)


def test_csv_frontier_flags_are_the_non_dominated_points(swept: Path):
    rows = read_csv(swept / "sweep.csv")
    rec = json.loads((swept / "sweep.json").read_text())
    for src in ("inag", "random"):
        sub = [r for r in rows if r["source"] == src]
        perf = np.array([float(r["estimate_c"]) for r in sub])
        for role in ("storage", "energy"):
            cost = np.array([float(r[f"{role}_norm"]) for r in sub])
            flagged = [i for i, r in enumerate(sub) if r[f"front_{role}"] == "1"]
            assert flagged and not any(dominated(cost, perf, i) for i in flagged)
            assert int(np.argmax(perf)) in flagged  # the best point (first of ties) is on it
            assert len(flagged) == rec["fronts"][role][src]["points"]
            assert max(perf) == pytest.approx(rec["fronts"][role][src]["perf_max"])
        # --real: every estimated-frontier net is trained
        for r in sub:
            if r["front_storage"] == "1" or r["front_energy"] == "1":
                assert r["measured"] == "1" and r["measured_perf"]


def test_survivors_are_those_of_inag_select(swept: Path):
    """The sweep's candidates at a condition are select's survivors for that bag (same seed)."""
    rows = read_csv(swept / "sweep.csv")
    model, plat = load_model("data_a"), load_platform("bitfusion")
    for i, c in enumerate((0.0, 0.5, 1.0)):
        (sel,), _ = select(model, [plat], c, n=N, seed=condition_seed(3, i), floor=c, strict=False)
        mine = [r for r in rows if r["source"] == "inag" and float(r["condition"]) == c]
        assert len(mine) == len(sel.chosen)
        # same set (the sweep re-ranks its top K by measured performance)
        assert {r["arch_id"] for r in mine} == {sel.bag.archs[j].arch_id for j in sel.chosen}
        est = {sel.bag.archs[j].arch_id: sel.bag.estimate[j] for j in sel.chosen}
        assert all(float(r["estimate_c"]) == pytest.approx(est[r["arch_id"]]) for r in mine)


def test_deterministic_by_seed(swept: Path, tmp_path: Path):
    assert run([*ARGS, "--real", "1"], tmp_path / "again") == 0
    assert (tmp_path / "again" / "sweep.csv").read_bytes() == (swept / "sweep.csv").read_bytes()
    a = json.loads((swept / "sweep.json").read_text())
    b = json.loads((tmp_path / "again" / "sweep.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    other = [x if x != "3" else "4" for x in ARGS]
    assert run(other, tmp_path / "other") == 0
    assert (tmp_path / "other" / "sweep.csv").read_bytes() != (swept / "sweep.csv").read_bytes()


def test_without_real_nothing_is_measured(tmp_path: Path):
    assert run([*ARGS, "--from", "0.5", "--to", "0.5"], tmp_path) == 0
    rows = read_csv(tmp_path / "sweep.csv")
    assert rows and all(r["measured"] == "0" and r["measured_perf"] == "" for r in rows)
    rec: dict[str, Any] = json.loads((tmp_path / "sweep.json").read_text())
    assert [c["condition"] for c in rec["conditions"]] == [0.5]
    assert "inag_measured" not in rec["fronts"]["storage"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--step", "0"], "--step must be > 0"),
        (["--step", "-0.05"], "--step must be > 0"),
        (["--from", "0.9", "--to", "0.1"], "above --to"),
        (["--to", "1.2"], "outside \\[0, 1\\]"),
        (["--from", "-0.5"], "outside \\[0, 1\\]"),
        (["--model", "no_such_model"], "no bundled generator"),
        (["-p", "no_such_platform"], "no platform"),
        (["-n", "0"], "-n must be >= 1"),
        (["--real", "-1"], "--real must be >= 0"),
        (["--rank-by", "vibes"], "--rank-by"),
        (["-n", "600000"], "at most"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    import re

    assert run(["--step", "0.5", *extra], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "out" / "sweep.csv").exists()


def test_unwritable_out_is_refused_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(["--step", "0.5"], afile) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run(["--step", "0.5"], Path("/proc/sweep")) == 2
    assert "virtual filesystem" in capsys.readouterr().err
