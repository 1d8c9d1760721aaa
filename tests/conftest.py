"""Shared fixtures and builders for the arch / space / IR / platform / hwmodels tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from inag.arch import ArchSpec, LayerSpec
from inag.platform import Platform, bundled_names, load_platform
from inag.space import SearchSpace, load_space

BUNDLED_PLATFORMS = ("bitfusion", "cortex_a", "cortex_m", "host_cpu")
# Golden numbers need fixed descriptors: the bundled host_cpu detects the machine it runs on,
# so goldens use a frozen host descriptor (tests/data/host_zen3.yaml) in its place.
FROZEN_HOST = Path(__file__).with_name("data") / "host_zen3.yaml"
GOLDEN_PLATFORMS = ("bitfusion", "cortex_a", "cortex_m", "host_zen3")


def small_mlp() -> ArchSpec:
    """1 -> 16@8 -> 8@4 -> head 1@8: the arch every hand calculation in the suite uses."""
    return ArchSpec("mlp", (1,), 1, (LayerSpec(16, 8), LayerSpec(8, 4)))


def small_cnn() -> ArchSpec:
    """(1, 8, 8) -> conv 4ch k3 pool2 @8 -> conv 8ch k3 @4 -> dense 16@6 -> head 10@8."""
    return ArchSpec.from_summary("c4k3p2@8-c8k3@4-16@6 | head@8", (1, 8, 8), 10)


def mixed_mlp() -> ArchSpec:
    """A bigger mixed-bit MLP bound to the 64-input digits task."""
    return ArchSpec.from_summary("64@8-48@3-32@5-24@2 | head@8", (64,), 10)


@pytest.fixture(scope="session")
def platforms() -> dict[str, Platform]:
    out = {name: load_platform(name) for name in bundled_names()}
    out["host_zen3"] = load_platform(FROZEN_HOST)
    return out


@pytest.fixture(scope="session")
def mlp_space() -> SearchSpace:
    return load_space("mlp")


@pytest.fixture(scope="session")
def cnn_space() -> SearchSpace:
    return load_space("cnn")
