"""One table of budget quantities: roles, constraints, limits, stages, CLI options and cost
units are all derived from hwmodels.quantities."""

from __future__ import annotations

import inspect

import pytest

from hwmodels import quantities
from hwmodels.costing import LIMITS
from inag.cli import baseline as cli_baseline
from inag.cli import selection as cli_selection
from inag.platform import ROLES, Constraints
from inag.select import build_stages, limit_overrides


def test_everything_reads_the_one_table():
    assert {q.role: q.quantity for q in quantities.QUANTITIES} == ROLES
    assert LIMITS is quantities.LIMITS
    assert set(Constraints.model_fields) == set(quantities.LIMITS)
    staged = [n for _, names in quantities.STAGES for n in names]
    assert sorted(staged) == sorted(quantities.LIMITS)
    for q in quantities.QUANTITIES:
        assert q.quantity.startswith(q.role) and q.quantity.endswith(f"_{q.unit}")


@pytest.mark.parametrize("command", [cli_selection.select, cli_baseline.baseline])
def test_select_and_baseline_offer_every_limit_option(command):
    params = set(inspect.signature(command).parameters)
    assert set(quantities.OPTIONS) <= params, set(quantities.OPTIONS) - params


def test_overrides_scale_by_the_table():
    assert limit_overrides(max_storage_kb=2.0, max_latency_ms=5.0, max_energy=0.2) == {
        "max_storage_bits": 16384.0,
        "max_latency_s": 0.005,
        "max_energy_norm": 0.2,
    }
    with pytest.raises(KeyError, match="unknown limit option"):
        limit_overrides(max_power_w=1.0)


def test_stages_follow_the_table(platforms):
    from hwmodels import PlatformCoster

    plat = platforms["bitfusion"]
    names = [s.name for s in build_stages(plat, PlatformCoster(plat), 0.05)]
    expected = [st for st, limits in quantities.STAGES if set(limits) & set(
        PlatformCoster(plat).limits())]  # fmt: skip
    assert names == ["confidence", "bits", *expected]
