"""Platform descriptors: bundled files load, every number is sourced, errors are precise,
and a new target is one YAML file."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUNDLED_PLATFORMS, small_cnn, small_mlp

from hwmodels.costing import PlatformCoster
from inag.platform import (
    Platform,
    PlatformError,
    bundled_dir,
    bundled_names,
    load_platform,
    platform_from_dict,
)
from inag.space import largest_for


def raw(name: str) -> dict:
    return yaml.safe_load((bundled_dir() / f"{name}.yaml").read_text())


def write(tmp_path: Path, data: dict, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(tmp_path: Path, data: dict) -> str:
    with pytest.raises(PlatformError) as err:
        load_platform(write(tmp_path, data))
    return str(err.value)


# --------------------------------------------------------------------------- bundled
def test_bundled_names():
    assert tuple(bundled_names()) == BUNDLED_PLATFORMS


@pytest.mark.parametrize("name", BUNDLED_PLATFORMS)
def test_bundled_platform_loads(name):
    p = load_platform(name)
    assert isinstance(p, Platform)
    assert p.name == name
    assert p.schema_version == 1
    assert p.capability.clock_hz.value > 0
    assert p.flash_budget_bytes > 0 and p.sram_budget_bytes > 0
    assert {"storage", "flash", "sram", "energy", "latency"} <= set(p.cost_models)
    assert p.path and p.path.endswith(f"{name}.yaml")
    assert load_platform(bundled_dir() / f"{name}.yaml") == p  # by path, the same


def _walk(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", BUNDLED_PLATFORMS)
def test_every_number_cites_its_source(name):
    data = raw(name)
    sourced = [(path, node) for path, node in _walk(data) if "value" in node]
    assert len(sourced) >= 5
    for path, node in sourced:
        assert isinstance(node.get("source"), str) and node["source"].strip(), path
        assert len(node["source"].strip()) >= 3, path
        assert node.get("kind") in {
            "datasheet",
            "paper",
            "isa",
            "source-code",
            "derived",
            "measured",
            "guess",
        }, path
        # PyYAML (YAML 1.1) reads `64.0e6` (no exponent sign) as a string; pydantic parses it.
        value = node["value"]
        assert not isinstance(value, bool), path
        assert np.isfinite(float(value)), path


def test_cortex_m_numbers():
    p = load_platform("cortex_m")
    assert p.capability.clock_hz.value == 64e6
    assert p.capability.memories.flash_bytes.value == 1048576
    assert p.flash_budget_bytes == 1048576 - 60000
    assert p.sram_budget_bytes == 262144 - 28192
    assert p.container(3, "weight") == 8
    assert load_platform("bitfusion").container(3, "weight") == 4
    assert load_platform("bitfusion").container(32, "activation") == 32


# --------------------------------------------------------------------------- errors
def test_nonexistent_platform_lists_bundled_names():
    with pytest.raises(PlatformError) as err:
        load_platform("cortex_z")
    msg = str(err.value)
    assert "no platform 'cortex_z'" in msg
    for name in BUNDLED_PLATFORMS:
        assert name in msg
    with pytest.raises(PlatformError, match="bundled: bitfusion, cortex_a"):
        load_platform("/nowhere/board.yaml")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("schema_version: 1\ncapability: {clock_hz: [1, 2\n")
    with pytest.raises(PlatformError, match=r"bad.yaml: malformed YAML"):
        load_platform(path)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- cortex_m\n")
    with pytest.raises(PlatformError, match="a platform descriptor is a YAML mapping, found list"):
        load_platform(path)


def test_missing_field(tmp_path):
    data = raw("cortex_m")
    del data["capability"]["clock_hz"]
    msg = load_error(tmp_path, data)
    assert "board.yaml: invalid platform descriptor" in msg
    assert "capability.clock_hz: missing (required field)" in msg


def test_wrong_type(tmp_path):
    data = raw("cortex_m")
    data["capability"]["clock_hz"]["value"] = "fast"
    msg = load_error(tmp_path, data)
    assert "capability.clock_hz.value:" in msg  # where
    assert "valid number" in msg  # what was expected
    assert "found 'fast'" in msg  # what was found


def test_negative_clock(tmp_path):
    data = raw("cortex_m")
    data["capability"]["clock_hz"]["value"] = -64e6
    msg = load_error(tmp_path, data)
    assert "capability.clock_hz.value:" in msg
    assert "> 0" in msg
    assert "-64000000.0" in msg


@pytest.mark.parametrize(
    ("path", "value", "expected", "found"),
    [
        (("capability", "clock_hz", "value"), 0, "finite number > 0", "found 0"),
        (("capability", "memories", "reserved_sram_bytes", "value"), -1, ">= 0", "found -1"),
        (("capability", "memories", "sram_bytes", "value"), float("inf"), "finite", "found inf"),
        (("capability", "numerics", "supported_bits"), [2, 40], "1..32", "found [2, 40]"),
    ],
)
def test_a_rejected_value_is_reported_once(tmp_path, path, value, expected, found):
    """`value: must be a finite number > 0, found 0.0; found 0` said what it found twice."""
    data = raw("cortex_m")
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    msg = load_error(tmp_path, data)
    line = next(x for x in msg.splitlines() if x.strip().startswith(".".join(path)))
    assert expected in line and line.endswith(found), line
    assert msg.count("found") == 1, msg


@pytest.mark.parametrize(
    ("field", "numerics", "why"),
    [
        ("weight_containers", {"weight_containers": [3]}, "supported_bits [2, 3, 4, 5, 6, 7, 8]"),
        ("activation_containers", {"activation_containers": [4]}, "widest of supported_bits"),
        (
            "activation_containers",
            {"supported_bits": [2, 4], "weight_containers": [4], "activation_containers": [4]},
            "8-bit network input",
        ),
    ],
)
def test_containers_too_narrow_for_the_widths_are_named(tmp_path, field, numerics, why):
    """`weight_containers: [3]` was reported as `e_mac_pj ... missing [3, 4, 5, 6, 7]`."""
    data = raw("cortex_m")
    data["capability"]["numerics"].update(numerics)
    msg = load_error(tmp_path, data)
    assert f"capability.numerics.{field}: expected a container of at least 8 bits" in msg
    assert why in msg and msg.endswith(f"found {numerics[field]}"), msg
    assert "e_mac_pj" not in msg and msg.count("found") == 1, msg


def test_containers_wide_enough_for_the_supported_widths_load(tmp_path):
    data = raw("cortex_m")
    data["capability"]["numerics"].update(supported_bits=[2, 4], weight_containers=[4])
    assert load_platform(write(tmp_path, data)).container(3, "weight") == 4
    data["capability"]["numerics"].update(supported_bits=[2, 4, 8], weight_containers=[4, 8])
    assert load_platform(write(tmp_path, data)).container(5, "weight") == 8


def test_unknown_field(tmp_path):
    data = raw("cortex_m")
    data["capability"]["clock_mhz"] = 64
    msg = load_error(tmp_path, data)
    assert "capability.clock_mhz: unknown field" in msg


@pytest.mark.parametrize("version", [2, None, "1"])
def test_wrong_schema_version(tmp_path, version):
    data = raw("cortex_m")
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    msg = load_error(tmp_path, data)
    assert f"schema_version must be 1, found {version!r}" in msg


def test_missing_source_and_bad_kind(tmp_path):
    data = raw("cortex_m")
    del data["capability"]["memories"]["sram_bytes"]["source"]
    data["capability"]["memories"]["flash_bytes"]["kind"] = "rumour"
    msg = load_error(tmp_path, data)
    assert "capability.memories.sram_bytes.source: missing" in msg
    assert "capability.memories.flash_bytes.kind:" in msg
    assert "'rumour'" in msg


def test_several_errors_are_all_reported(tmp_path):
    data = raw("host_cpu")
    data["kind"] = "mainframe"
    data["measure"]["repeats"] = 0
    data["capability"]["memories"]["sram_bytes"]["value"] = float("nan")
    msg = load_error(tmp_path, data)
    assert "kind:" in msg and "'mainframe'" in msg
    assert "measure.repeats:" in msg
    assert "capability.memories.sram_bytes.value:" in msg and "finite" in msg


def test_energy_and_latency_models_are_required(tmp_path):
    data = raw("cortex_a")
    del data["cost_models"]["latency"]
    msg = load_error(tmp_path, data)
    assert "cost_models:" in msg and "needs models for ['latency']" in msg


def test_platform_from_dict_names_its_source():
    with pytest.raises(PlatformError, match="<dict>: a platform descriptor is a YAML mapping"):
        platform_from_dict(["x"])


# --------------------------------------------------------------------------- a new platform
def test_new_platform_is_one_yaml_file(tmp_path):
    """A made-up Cortex-M at twice the clock and twice the MAC energy: no code, one file."""
    data = copy.deepcopy(raw("cortex_m"))
    data["name"] = "cortex_m_fast"
    data["description"] = "a hypothetical 128 MHz part with a hungrier datapath"
    data["capability"]["clock_hz"] = {"value": 128e6, "source": "test fixture", "kind": "guess"}
    data["cost_models"]["energy"]["params"]["e_mac_pj"] = {
        8: {"value": 1000.0, "source": "test fixture", "kind": "guess"}
    }
    data["capability"]["memories"]["sram_bytes"]["value"] = 65536
    path = write(tmp_path, data, "cortex_m_fast.yaml")

    new = load_platform(path)
    assert new.name == "cortex_m_fast"
    old = load_platform("cortex_m")
    archs = [small_mlp(), small_cnn()]
    got = PlatformCoster(new, reference=largest_for).cost(archs)
    ref = PlatformCoster(old, reference=largest_for).cost(archs)
    # cortex_m energy is MACs x e_mac only, latency is cycles / clock: exact ratios
    np.testing.assert_allclose(got.totals["energy"], 2 * ref.totals["energy"], rtol=1e-12)
    np.testing.assert_allclose(got.totals["latency"], ref.totals["latency"] / 2, rtol=1e-12)
    np.testing.assert_array_equal(got.totals["storage"], ref.totals["storage"])
    # normalization uses the same platform's models, so normalized energy is unchanged
    np.testing.assert_allclose(got.normalized("energy"), ref.normalized("energy"), rtol=1e-12)
    assert PlatformCoster(new).limits()["max_sram_bytes"] == 65536 - 28192
    # small_mlp on cortex_m: 152 MACs x 1000 pJ
    assert got.totals["energy"][0] == pytest.approx(152 * 1000e-12, rel=1e-12)
