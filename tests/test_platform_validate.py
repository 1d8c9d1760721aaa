"""`inag platforms validate` runs the semantic checks: budgets, conformance of the
descriptor's own models, complete tables, plausible magnitudes, plug-in parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hwmodels import HardwareModelError, build_models
from hwmodels.validate import validate_platform
from inag.cli import main
from inag.platform import PlatformError, load_platform, read_descriptor


def _write(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cortex_m() -> dict:
    return read_descriptor("cortex_m")[1]


def _validate(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["platforms", "validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["bitfusion", "cortex_a", "cortex_m", "host_cpu"])
def test_bundled_descriptors_are_valid(name):
    assert validate_platform(load_platform(name)) == []


def test_reserved_memory_above_the_total_is_refused_at_load(tmp_path):
    data = _cortex_m()
    mem = data["capability"]["memories"]
    mem["reserved_sram_bytes"] = {"value": mem["sram_bytes"]["value"] * 2, "source": "x y z"}
    with pytest.raises(PlatformError, match="reserved_sram_bytes .* must be below sram_bytes"):
        load_platform(_write(tmp_path, data))


def test_energy_table_that_falls_with_bits_fails_conformance(tmp_path, capsys):
    data = read_descriptor("bitfusion")[1]
    table = data["cost_models"]["energy"]["params"]["e_mac_pj"]
    table[8], table[4] = table[4], table[8]  # cheaper at 8 bits than at 4
    code, _, err = _validate(capsys, str(_write(tmp_path, data)))
    assert code == 2
    assert "cost_models.energy" in err and "non-decreasing in bits" in err, err


def test_flat_container_table_missing_a_container_is_an_error(tmp_path):
    data = _cortex_m()
    data["capability"]["numerics"]["weight_containers"] = [4, 8]
    with pytest.raises(HardwareModelError, match=r"e_mac_pj.*missing \[4\]"):
        build_models(load_platform(_write(tmp_path, data)))


@pytest.mark.parametrize(
    ("role", "param"),
    [("energy", "e_mac_pj"), ("latency", "macs_per_cycle"), ("latency", "conv_macs_per_cycle")],
)
def test_flat_container_table_without_the_container_width_is_an_error(
    tmp_path, capsys, role, param
):
    """`conv_macs_per_cycle: {3: 1.0}` on 8-bit containers priced every 8-bit conv MAC at the
    3-bit figure (cortex_m digits_cnn latency 8.47 -> 2.62 ms), silently: 3 is no container."""
    data = _cortex_m()
    params = data["cost_models"][role]["params"]
    params[param] = {3: {**params[param][8], "value": 1.0}}
    path = _write(tmp_path, data)
    code, out, err = _validate(capsys, str(path))
    assert code == 2 and out == "", (out, err)
    assert f"parameter {param}:" in err and "missing [8] (table has [3])" in err, err
    assert err.count("error") == 1 and "Traceback" not in err, err
    with pytest.raises(HardwareModelError, match=rf"{param}: .*missing \[8\]"):
        build_models(load_platform(path))  # what `inag select` and `inag cost` build


def test_law_scaled_tables_may_leave_widths_to_the_law(tmp_path):
    """Documented fill rule (hwmodels.scaling): a quadratic table extrapolates by its law."""
    data = read_descriptor("bitfusion")[1]
    table = data["cost_models"]["energy"]["params"]["e_mac_pj"]
    data["cost_models"]["energy"]["params"]["e_mac_pj"] = {8: table[8]}
    energy = build_models(load_platform(_write(tmp_path, data)))["energy"]
    assert energy.params.scaling == "quadratic"
    assert energy._lw[4] == pytest.approx(table[8]["value"] / 4, rel=1e-12)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("capability", "clock_hz"), 160, "capability.clock_hz"),
        (("capability", "memories", "sram_bytes"), 400, "sram_bytes"),
        (("cost_models", "energy", "params", "e_mac_pj", 8), 8e-10, "e_mac_pj[8]"),
    ],
)
def test_unit_slips_are_caught_and_can_be_allowed(tmp_path, capsys, path, value, field):
    data = _cortex_m()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = {**node[path[-1]], "value": value}
    data["capability"]["memories"].pop("reserved_sram_bytes", None)  # not what is tested
    f = str(_write(tmp_path, data))
    code, _, err = _validate(capsys, f)
    assert code == 2 and field in err and "plausible range" in err and "Traceback" not in err
    code, out, _ = _validate(capsys, f, "--allow-unusual")
    assert code == 0 and "ok:" in out


def test_misspelled_model_parameter_names_the_valid_ones(tmp_path, capsys):
    data = _cortex_m()
    data["cost_models"]["latency"]["params"]["overhead_cycles_per_layr"] = {
        "value": 1, "source": "typo test"
    }  # fmt: skip
    code, _, err = _validate(capsys, str(_write(tmp_path, data)))
    assert code == 2 and "overhead_cycles_per_layr" in err and "overhead_cycles_per_layer" in err


def test_plugin_params_that_allow_extras_are_still_checked(tmp_path, monkeypatch):
    """A plug-in whose Params is a plain BaseModel (extra keys ignored) still gets the check."""
    from pydantic import BaseModel

    from hwmodels import registry
    from hwmodels.base import HardwareModel
    from inag.platform import Sourced

    class LooseParams(BaseModel):
        pj_per_mac: Sourced

    class Loose(HardwareModel):
        name = "loose_energy"
        quantity = "energy_j"
        Params = LooseParams

        def _layer_cost(self, t):
            return t.macs * self.params.pj_per_mac.value * 1e-12

    monkeypatch.setitem(registry._registry(), "loose_energy", Loose)
    data = _cortex_m()
    data["cost_models"]["energy"] = {
        "model": "loose_energy",
        "params": {"pj_per_mac": {"value": 1.0, "source": "t e s t"}, "pj_per_mak": 2},
    }
    with pytest.raises(HardwareModelError, match=r"unknown parameter\(s\) \['pj_per_mak'\]"):
        build_models(load_platform(_write(tmp_path, data)))


def test_plugin_returning_negative_costs_fails_validation(tmp_path, monkeypatch, capsys):
    from hwmodels import registry
    from hwmodels.base import HardwareModel

    class Negative(HardwareModel):
        name = "negative_latency"
        quantity = "latency_s"

        def _layer_cost(self, t):
            return -t.macs * 1e-9

    monkeypatch.setitem(registry._registry(), "negative_latency", Negative)
    data = _cortex_m()
    data["cost_models"]["latency"] = {"model": "negative_latency"}
    code, _, err = _validate(capsys, str(_write(tmp_path, data)))
    assert code == 2 and "cost_models.latency" in err and "non-negative" in err, err


def test_duplicate_yaml_keys_are_refused(tmp_path):
    text = Path(read_descriptor("cortex_m")[0]).read_text()
    path = tmp_path / "dup.yaml"
    path.write_text(text + "\nname: other\n")
    with pytest.raises(PlatformError, match="name"):
        load_platform(path)


def test_a_partial_unpack_table_is_an_error(tmp_path, capsys):
    """`unpack_cycles_per_mac: {3: 1.0}` left 2-, 4-, 5-, 6- and 7-bit weights extracting for
    free; every packed width the platform supports needs its cost."""
    data = _cortex_m()
    params = data["cost_models"]["latency"]["params"]
    source = params["macs_per_cycle"][8]
    params["unpack_cycles_per_mac"] = {3: {**source, "value": 1.0}}
    path = _write(tmp_path, data)
    code, out, err = _validate(capsys, str(path))
    assert code == 2 and "unpack_cycles_per_mac" in err and "missing [2, 4, 5, 6, 7]" in err, err
    params["unpack_cycles_per_mac"] = {b: {**source, "value": 1.0} for b in range(2, 8)}
    assert _validate(capsys, str(_write(tmp_path, data)))[0] == 0
