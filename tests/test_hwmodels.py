"""Hardware models: conformance of every model, plug-in validation and entry points, golden
numbers derived by hand from the platform YAML, scaling laws and normalization."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import textwrap
import unittest
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUNDLED_PLATFORMS, GOLDEN_PLATFORMS, mixed_mlp, small_cnn, small_mlp
from pydantic import ValidationError

from hwmodels import HardwareModel, HardwareModelError, PlatformCoster, available_models, registry
from hwmodels import testing as hwtesting
from hwmodels.builtin import BUILTIN_MODELS, Eq2Storage
from hwmodels.registry import build_models, get_model_class
from hwmodels.scaling import SCALING_LAWS, mixed, per_width
from hwmodels.testing import check_conformance, conformance_archs
from inag.arch import ArchSpec, LayerSpec
from inag.ir import compute_nodes, layer_table_many, lower
from inag.platform import Platform, bundled_dir, load_platform, platform_from_dict
from inag.space import largest_for, load_space

BUILTIN_NAMES = (
    "eq2_storage",
    "flash",
    "sram_peak",
    "mac_energy",
    "roofline_latency",
    "power_x_time",
)
# Models no bundled platform configures: the conformance suite runs them with these params.
TEST_PARAMS = {
    "power_x_time": {
        "active_power_w": {"value": 0.0096, "source": "test: 150 pJ/cycle at 64 MHz"},
    },
}
ROLES = ("storage", "flash", "sram", "energy", "latency")


def raw_platform(name: str) -> dict:
    return yaml.safe_load((bundled_dir() / f"{name}.yaml").read_text())


def params_for(model_name: str, platform: Platform, platforms: dict[str, Platform]) -> dict:
    """The platform's own params for the model if it uses it; else defaults if the model has
    them; else the params of the first bundled platform that uses the model."""
    for choice in platform.cost_models.values():
        if choice.model == model_name:
            return dict(choice.params)
    cls = get_model_class(model_name)
    try:
        cls.Params.model_validate({})
        return {}
    except ValidationError:
        pass
    for other in platforms.values():
        for choice in other.cost_models.values():
            if choice.model == model_name:
                return dict(choice.params)
    if model_name in TEST_PARAMS:
        return TEST_PARAMS[model_name]
    raise AssertionError(f"no bundled platform configures {model_name!r}")


# --------------------------------------------------------------------------- conformance
def test_builtins_are_registered():
    models = available_models()
    assert set(BUILTIN_NAMES) <= set(models)
    assert {m.name for m in BUILTIN_MODELS} == set(BUILTIN_NAMES)
    for name in BUILTIN_NAMES:
        assert get_model_class(name) is models[name]


@pytest.mark.parametrize("platform_name", BUNDLED_PLATFORMS)
@pytest.mark.parametrize("model_name", BUILTIN_NAMES)
def test_builtin_conformance(model_name, platform_name, platforms):
    platform = platforms[platform_name]
    params = params_for(model_name, platform, platforms)
    check_conformance(get_model_class(model_name), platform, params)


def test_every_available_model_is_covered(platforms):
    """Whatever is registered right now (built-ins and installed plug-ins) passes."""
    for name, cls in available_models().items():
        for platform in platforms.values():
            check_conformance(cls, platform, params_for(name, platform, platforms))


@pytest.mark.parametrize("platform_name", BUNDLED_PLATFORMS)
def test_platform_models_fit_their_roles(platform_name, platforms):
    models = build_models(platforms[platform_name])
    assert set(models) == set(ROLES)
    quantities = {r: m.quantity for r, m in models.items()}
    assert quantities == {
        "storage": "storage_bits",
        "flash": "flash_bytes",
        "sram": "sram_bytes",
        "energy": "energy_j",
        "latency": "latency_s",
    }


class _Toy(HardwareModel):
    name = "toy_test"
    quantity = "latency_s"

    def _layer_cost(self, t):
        return t.macs * 1e-9


class _CheaperWithBits(_Toy):
    def _layer_cost(self, t):
        return t.macs * (9 - t.bits) * 1e-9


class _CheaperWhenWider(_Toy):
    def _layer_cost(self, t):
        return 1.0 / np.maximum(t.weights, 1)


class _Noisy(_Toy):
    def _layer_cost(self, t):
        return t.macs * np.random.default_rng().random(t.mask.shape)


class _BatchDependent(_Toy):
    def _layer_cost(self, t):
        return t.macs / t.macs.max()


class _WrongRawShape(_Toy):
    def _layer_cost(self, t):
        return (t.macs * 1.0).T


@pytest.mark.parametrize(
    ("cls", "needle"),
    [
        (_CheaperWithBits, "bits +"),
        (_CheaperWhenWider, "wider"),
        (_Noisy, "equal"),
        (_BatchDependent, "Not equal to tolerance"),
        (_WrongRawShape, "_layer_cost returned"),
    ],
)
def test_conformance_suite_catches_broken_models(cls, needle):
    check_conformance(_Toy, load_platform("cortex_m"))  # the well-behaved twin passes
    with pytest.raises(AssertionError, match=needle):
        check_conformance(cls, load_platform("cortex_m"))


class TestToyConformance(hwtesting.HardwareModelConformance):
    """What a plug-in author writes: the shipped test case, subclassed."""

    model_cls = _Toy


def test_shipped_test_case_fails_a_broken_model():
    case = type("T", (hwtesting.HardwareModelConformance,), {"model_cls": _CheaperWithBits})
    result = unittest.TestResult()
    case("test_conformance").run(result)
    assert len(result.failures) == 1 and "non-decreasing in bits" in result.failures[0][1]


# --------------------------------------------------------------------------- base validation
class _Fixed(HardwareModel):
    """A test model returning ones, with one value replaced."""

    name = "fixed_test"
    quantity = "energy_j"
    bad: float = 1.0
    where: str = "real"
    overhead: float = 0.0

    def _layer_cost(self, t):
        out = np.ones(t.mask.shape)
        if self.where == "real":
            out[0, 0] = self.bad
        else:  # a padded position
            out[~t.mask] = self.bad
        return out

    def _network_overhead(self):
        return self.overhead


def _fixed(**attrs) -> type[HardwareModel]:
    return type("Fixed", (_Fixed,), attrs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-12])
def test_base_rejects_non_finite_or_negative(bad):
    model = _fixed(bad=bad)(load_platform("cortex_m"))
    table = layer_table_many([small_mlp(), mixed_mlp()])
    with pytest.raises(
        HardwareModelError, match="returned .* for unit 0 of arch 0: energy_j must"
    ):
        model.layer_cost(table)
    with pytest.raises(HardwareModelError):
        model.total(table)
    g = lower(small_mlp())
    with pytest.raises(HardwareModelError):
        model.node_cost(g.nodes[compute_nodes(g)[0]])
    with pytest.raises(HardwareModelError):
        PlatformCoster(load_platform("cortex_m"), models={"energy": model}).cost([small_mlp()])


def test_base_ignores_padding():
    model = _fixed(bad=float("nan"), where="padding")(load_platform("cortex_m"))
    table = layer_table_many([small_mlp(), mixed_mlp()])  # 3 and 5 units: arch 0 is padded
    assert (~table.mask).any()
    per = model.layer_cost(table)
    assert per.sum() == table.mask.sum()


def test_base_rejects_wrong_shape():
    class WrongShape(_Fixed):
        def _layer_cost(self, t):
            return np.ones(t.mask.shape[0])

    model = WrongShape(load_platform("cortex_m"))
    with pytest.raises(HardwareModelError, match=r"returned shape \(2,\), expected \(2, 5\)"):
        model.layer_cost(layer_table_many([small_mlp(), mixed_mlp()]))


@pytest.mark.parametrize("overhead", [-1.0, float("nan")])
def test_base_rejects_bad_network_overhead(overhead):
    model = _fixed(overhead=overhead)(load_platform("cortex_m"))
    table = layer_table_many([small_mlp()])
    with pytest.raises(HardwareModelError, match="network overhead"):
        model.total(table)
    # the batch costing path must validate it too
    coster = PlatformCoster(load_platform("cortex_m"), models={"energy": model})
    with pytest.raises(HardwareModelError, match="network overhead"):
        coster.cost([small_mlp()])


def test_quantity_without_unit_is_rejected_at_class_creation():
    with pytest.raises(HardwareModelError, match="quantity='energy' must name its unit"):

        class NoUnit(HardwareModel):
            name = "no_unit"
            quantity = "energy"

            def _layer_cost(self, t):
                return np.zeros(t.mask.shape)

    with pytest.raises(HardwareModelError, match="must name its unit"):
        type("Joules", (_Fixed,), {"quantity": "energy_joules"})


def test_model_must_fit_its_role():
    data = raw_platform("cortex_m")
    data["cost_models"]["energy"] = copy.deepcopy(data["cost_models"]["latency"])
    platform = platform_from_dict(data, source="swapped.yaml")
    with pytest.raises(HardwareModelError) as err:
        build_models(platform)
    msg = str(err.value)
    assert "swapped.yaml: cost_models.energy:" in msg
    assert (
        "model 'roofline_latency' computes 'latency_s', but the 'energy' role needs 'energy_j'"
        in msg
    )


def test_unknown_model_lists_available():
    with pytest.raises(HardwareModelError) as err:
        get_model_class("quantum_energy")
    msg = str(err.value)
    assert "unknown hardware model 'quantum_energy'" in msg
    for name in BUILTIN_NAMES:
        assert name in msg
    data = raw_platform("cortex_m")
    data["cost_models"]["energy"]["model"] = "quantum_energy"
    with pytest.raises(
        HardwareModelError,
        match=r"cost_models.energy: unknown hardware model "
        r"'quantum_energy'; available: eq2_storage",
    ):
        build_models(platform_from_dict(data, source="q.yaml"))


def test_bad_params_name_the_field():
    data = raw_platform("cortex_m")
    data["cost_models"]["latency"]["params"]["mem_bytes_per_cycle"]["value"] = 0
    data["cost_models"]["energy"]["params"]["scaling"] = "cubic"
    platform = platform_from_dict(data, source="p.yaml")
    with pytest.raises(HardwareModelError) as err:
        build_models(platform)
    msg = str(err.value)
    # roles are built in order; whichever fails first names its role, field and value
    assert "p.yaml: cost_models." in msg
    assert ("energy.params" in msg and "scaling" in msg and "'cubic'" in msg) or (
        "latency.params" in msg and "mem_bytes_per_cycle.value" in msg
    )


# --------------------------------------------------------------------------- entry points
PLUGIN_MODULE = "inag_toy_plugin"

TOY_SRC = '''
"""A bit-serial toy: energy = MACs x b_w x b_a x e, plus 1 nJ per inference."""
from pydantic import BaseModel, ConfigDict

from hwmodels.base import HardwareModel
from inag.platform import Sourced


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pj_per_bit_mac: Sourced


class ToyEnergy(HardwareModel):
    name = "toy_energy"
    quantity = "energy_j"
    Params = ToyParams

    def _layer_cost(self, t):
        return t.macs * t.bits * t.in_bits * self.params.pj_per_bit_mac.value * 1e-12

    def _network_overhead(self):
        return 1e-9


class ClashingEnergy(ToyEnergy):
    name = "mac_energy"


NotAModel = object
'''

TOY_PARAMS = {"pj_per_bit_mac": {"value": 2.0, "source": "test fixture", "kind": "guess"}}


def install_dist(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]):
    """A minimal installed distribution: modules plus a dist-info with entry points."""
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[inag.hwmodels]\n{lines}")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path for plug-in distributions; the registry is reset around it."""
    root = tmp_path / "site"
    root.mkdir()
    registry.clear_cache()
    monkeypatch.syspath_prepend(str(root))
    yield root
    registry.clear_cache()
    for mod in [m for m in sys.modules if m.startswith("inag_toy_") or m == PLUGIN_MODULE]:
        del sys.modules[mod]


@pytest.fixture
def toy_plugin(plugin_dir):
    install_dist(
        plugin_dir,
        "inag_toy_plugin",
        {"toy_energy": f"{PLUGIN_MODULE}:ToyEnergy"},
        {PLUGIN_MODULE: TOY_SRC},
    )
    return plugin_dir


def test_plugin_is_listed_and_conforms(toy_plugin, platforms):
    models = available_models()
    assert "toy_energy" in models
    assert set(BUILTIN_NAMES) < set(models)
    cls = get_model_class("toy_energy")
    assert cls.__module__ == PLUGIN_MODULE and cls.quantity == "energy_j"
    for platform in platforms.values():
        check_conformance(cls, platform, TOY_PARAMS)


def test_plugin_is_selectable_from_platform_yaml(toy_plugin, tmp_path):
    data = raw_platform("cortex_m")
    data["name"] = "cortex_m_toy"
    data["cost_models"]["energy"] = {"model": "toy_energy", "params": TOY_PARAMS}
    path = tmp_path / "cortex_m_toy.yaml"
    path.write_text(yaml.safe_dump(data))
    coster = PlatformCoster(load_platform(path))
    assert type(coster.models["energy"]).__name__ == "ToyEnergy"
    got = coster.cost([small_mlp()]).totals["energy"][0]
    # MACs x b_w x b_a per unit: 16*8*8 + 128*4*8 + 8*8*4 = 1024 + 4096 + 256 = 5376;
    # x 2 pJ = 10752 pJ, + 1 nJ per inference
    assert got == pytest.approx(5376 * 2e-12 + 1e-9, rel=1e-12)
    # the per-node path agrees
    g = coster.cost_graph(lower(small_mlp()))
    nodes = sum(g.nodes[n]["cost:energy_j"] for n in compute_nodes(g))
    assert nodes + 1e-9 == pytest.approx(got, rel=1e-12)


def test_plugin_yaml_without_the_plugin_is_an_error(tmp_path):
    registry.clear_cache()
    data = raw_platform("cortex_m")
    data["cost_models"]["energy"] = {"model": "toy_energy", "params": TOY_PARAMS}
    platform = platform_from_dict(data, source="needs_toy.yaml")
    with pytest.raises(HardwareModelError, match="unknown hardware model 'toy_energy'; available"):
        build_models(platform)


def test_broken_plugin_warns_and_is_skipped(plugin_dir):
    install_dist(
        plugin_dir,
        "inag_toy_broken",
        {"broken_energy": "inag_toy_broken:Model"},
        {"inag_toy_broken": "import inag_toy_no_such_dependency\n"},
    )
    install_dist(
        plugin_dir,
        "inag_toy_notamodel",
        {"not_a_model": f"{PLUGIN_MODULE}:NotAModel"},
        {PLUGIN_MODULE: TOY_SRC},
    )
    with pytest.warns(UserWarning) as record:
        models = available_models()
    messages = " | ".join(str(w.message) for w in record)
    assert "'broken_energy' (inag_toy_broken:Model) failed to load and is skipped" in messages
    assert "ModuleNotFoundError" in messages
    assert "'not_a_model'" in messages and "not a HardwareModel subclass" in messages
    assert "broken_energy" not in models and "not_a_model" not in models
    assert set(BUILTIN_NAMES) <= set(models)  # the rest still works


def test_plugin_name_clash_with_builtin_raises(plugin_dir):
    install_dist(
        plugin_dir,
        "inag_toy_clash",
        {"clashing": f"{PLUGIN_MODULE}:ClashingEnergy"},
        {PLUGIN_MODULE: TOY_SRC},
    )
    with pytest.raises(HardwareModelError, match="'mac_energy' is claimed twice: by built-in"):
        available_models()


def test_cache_is_clean_after_plugin_tests():
    registry.clear_cache()
    assert "toy_energy" not in available_models()


# --------------------------------------------------------------------------- goldens
# small_mlp(): 1 -> 16@8 -> 8@4 -> head 1@8 (int32 output). Per unit (dense, MAC = weight):
#   unit  MACs=W  biases  F(out)  F(in)  B  in_bits  out_bits
#   u0      16      16      16      1    8     8        8
#   u1     128       8       8     16    4     8        4
#   u2       8       1       1      8    8     4       32
# Everything below is computed from those counts and the YAML constants, not from the code.
MACS = 16 + 128 + 8  # 152


def hand_small_mlp() -> dict[str, dict[str, float]]:
    # eq. 2: sum (W + F) * B, W with biases: (16+16+16)*8 + (128+8+8)*4 + (8+1+1)*8
    storage = 48 * 8 + 144 * 4 + 10 * 8
    assert storage == 1040
    # flash, weights in 8-bit containers + int32 biases: (16 + 64) + (128 + 32) + (8 + 4)
    flash_container = 80 + 160 + 12  # 252
    # peak SRAM in 8-bit activation containers (int32 head output): max over units of in+out
    # bytes: u0 1 + 16, u1 16 + 8, u2 8 + 4
    sram8 = max(1 + 16, 16 + 8, 8 + 4)  # 24
    # bytes a unit moves in 8-bit containers: weights + 4 B per bias + input + output maps
    #   u0 16 + 64 + 1 + 16 = 97; u1 128 + 32 + 16 + 8 = 184; u2 8 + 4 + 8 + 4 = 24
    moved8 = (97, 184, 24)
    # weight-read bits in 8-bit containers (+32 per bias): u0 128+512, u1 1024+256, u2 64+32
    wbits8 = 640 + 1280 + 96  # 2016
    # activation bits in 8-bit containers (int32 head output): u0 8+128, u1 128+64, u2 64+32
    abits8 = 136 + 192 + 96  # 424

    out = {}
    # cortex_m: e_mac 500 pJ flat; flash packed + 16 B per unit; latency 0.6 MAC/cycle dense,
    # 4 B/cycle, 3000 cycles per unit, 20000 per inference, 64 MHz
    flash_packed = (16 + 64 + 16) + (128 * 4 // 8 + 32 + 16) + (8 + 4 + 16)  # 96 + 112 + 28
    cycles_m = (
        sum(max(m / 0.6, b / 4.0) + 3000 for m, b in zip((16, 128, 8), moved8, strict=True))
        + 20000
    )
    assert cycles_m == pytest.approx(MACS / 0.6 + 29000)  # compute-bound units
    out["cortex_m"] = {
        "storage": storage,
        "flash": flash_packed,
        "sram": sram8,
        "energy": MACS * 500e-12,
        "latency": cycles_m / 64e6,
    }
    # cortex_a: e_mac 9 pJ flat, weight reads 20 pJ/bit, activations 0.16 pJ/bit; latency
    # 8 MAC/cycle, 2.7 B/cycle, 3000 per unit, 30000 per inference, 1.5 GHz
    cycles_a = (
        sum(max(m / 8.0, b / 2.7) + 3000 for m, b in zip((16, 128, 8), moved8, strict=True))
        + 30000
    )
    assert cycles_a == pytest.approx(305 / 2.7 + 39000)  # memory-bound units
    out["cortex_a"] = {
        "storage": storage,
        "flash": flash_container,
        "sram": sram8,
        "energy": (MACS * 9.0 + wbits8 * 20.0 + abits8 * 0.16) * 1e-12,  # 41755.84 pJ
        "latency": cycles_a / 1.5e9,
    }
    # host_zen3 (frozen): e_mac 5 pJ, reads 0.16 pJ/bit; 15 MAC/cycle, 32 B/cycle, 2500 / 12000,
    # 2.45 GHz
    cycles_h = (
        sum(max(m / 15.0, b / 32.0) + 2500 for m, b in zip((16, 128, 8), moved8, strict=True))
        + 12000
    )
    assert cycles_h == pytest.approx(97 / 32 + 128 / 15 + 24 / 32 + 19500)
    out["host_zen3"] = {
        "storage": storage,
        "flash": flash_container,
        "sram": sram8,
        "energy": (MACS * 5.0 + wbits8 * 0.16 + abits8 * 0.16) * 1e-12,  # 1150.4 pJ
        "latency": cycles_h / 2.45e9,
    }
    # bitfusion: containers {2, 4, 8}, so the 4-bit layer really is 4 bits.
    # e_mac {8: 0.28, 4: 0.10} pJ, mixed widths by geometric mean:
    #   u0 16 x 0.28, u1 128 x sqrt(0.10 x 0.28) (w4, a8), u2 8 x sqrt(0.28 x 0.10) (w8, a4)
    e_mac = 16 * 0.28 + (128 + 8) * math.sqrt(0.10 * 0.28)
    # weight bits: u0 16*8 + 16*32, u1 128*4 + 8*32, u2 8*8 + 32 = 640 + 768 + 96
    wbits = 640 + 768 + 96
    # activation bits: u0 1*8 + 16*8, u1 16*8 + 8*4, u2 8*4 + 1*32 = 136 + 160 + 64
    abits = 136 + 160 + 64
    # latency: 512 / 2048 MAC/cycle at 8 / 4 bits, geometric mean for mixed: u0 512,
    # u1 sqrt(2048*512) = 1024, u2 1024; 64 B/cycle; bytes u0 97, u1 (512+256+128+32)/8 = 116,
    # u2 (64+32+32+32)/8 = 20; 200 per unit, 1000 per inference, 500 MHz
    cycles_b = (
        max(16 / 512, 97 / 64)
        + max(128 / 1024, 116 / 64)
        + max(8 / 1024, 20 / 64)
        + 3 * 200
        + 1000
    )
    assert cycles_b == pytest.approx(1603.640625)
    out["bitfusion"] = {
        "storage": storage,
        "flash": (16 + 64) + (128 * 4 // 8 + 32) + (8 + 4),  # 188, weights in 4-bit bricks
        "sram": max(1 + 16, 16 + 8 * 4 // 8, 8 * 4 // 8 + 4),  # 20
        "energy": (e_mac + wbits * 0.16 + abits * 0.16) * 1e-12,
        "latency": cycles_b / 5e8,
    }
    return out


# Pinned from the implementation after checking: small_cnn() storage by hand
#   (36+4+64)*8 + (288+8+128)*4 + (2048+16+16)*6 + (160+10+10)*8 = 832+1696+12480+1440 = 16448,
#   its cortex_m energy = (2304+4608+2048+160) MACs x 500 pJ = 4.56e-6 J, and mixed_mlp()
#   storage (4096+64+64)*8 + (3072+48+48)*3 + (1536+32+32)*5 + (768+24+24)*2 + (240+10+10)*8
#   = 55008.
GOLDEN = {
    "mixed_mlp": {
        "bitfusion": (55008, 8312, 128, 1.3132254048881093e-08, 4.270875e-06),
        "cortex_a": (55008, 10424, 128, 1.7558111999999997e-06, 3.268246913580247e-05),
        "cortex_m": (55008, 7432, 128, 4.856e-06, 0.0007997916666666666),
        "host_zen3": (55008, 10424, 128, 6.246592e-08, 1.0264272108843538e-05),
    },
    "small_cnn": {
        "bitfusion": (16448, 2540, 128, 5.556641827322162e-09, 3.695e-06),
        "cortex_a": (16448, 2684, 192, 5.121856e-07, 2.919624691358025e-05),
        "cortex_m": (16448, 2092, 192, 4.56e-06, 0.0009895),
        "host_zen3": (16448, 2684, 192, 4.970112e-08, 9.227755102040816e-06),
    },
}


@pytest.mark.parametrize("platform_name", GOLDEN_PLATFORMS)
def test_golden_small_mlp_by_hand(platform_name, platforms):
    expected = hand_small_mlp()[platform_name]
    result = PlatformCoster(platforms[platform_name]).cost([small_mlp()])
    for role in ROLES:
        assert result.totals[role][0] == pytest.approx(expected[role], rel=1e-9), role


def test_detected_host_latency_by_hand(platforms):
    """The bundled host_cpu's latency follows its detected numbers (whatever this machine is):
    small_mlp's units move 97, 184 and 24 bytes (see hand_small_mlp) for 16, 128, 8 MACs."""
    plat = platforms["host_cpu"]
    p = plat.cost_models["latency"].params
    mpc, bpc = p["macs_per_cycle"][8]["value"], p["mem_bytes_per_cycle"]["value"]
    per_layer = p["overhead_cycles_per_layer"]["value"]
    per_run = p["overhead_cycles_per_inference"]["value"]
    cycles = sum(
        max(m / mpc, b / bpc) + per_layer for m, b in zip((16, 128, 8), (97, 184, 24), strict=True)
    )
    want = (cycles + per_run) / plat.capability.clock_hz.value
    got = PlatformCoster(plat).cost([small_mlp()]).totals["latency"][0]
    assert got == pytest.approx(want, rel=1e-12)
    assert p["macs_per_cycle"][8]["kind"] == "detected"


@pytest.mark.parametrize("platform_name", GOLDEN_PLATFORMS)
@pytest.mark.parametrize("arch_name", sorted(GOLDEN))
def test_golden_pinned(arch_name, platform_name, platforms):
    arch = {"mixed_mlp": mixed_mlp, "small_cnn": small_cnn}[arch_name]()
    result = PlatformCoster(platforms[platform_name]).cost([arch])
    for role, value in zip(ROLES, GOLDEN[arch_name][platform_name], strict=True):
        assert result.totals[role][0] == pytest.approx(value, rel=1e-9), role


def test_hand_checks_behind_the_pins():
    assert GOLDEN["small_cnn"]["cortex_m"][0] == 832 + 1696 + 12480 + 1440
    assert (
        pytest.approx(GOLDEN["small_cnn"]["cortex_m"][3]) == (2304 + 4608 + 2048 + 160) * 500e-12
    )
    assert GOLDEN["mixed_mlp"]["cortex_m"][0] == 33792 + 9504 + 8000 + 1632 + 2080


def test_eq2_storage_by_hand():
    """Eq. 2 on a 3 -> 5@2 -> 4@7 -> head 2@8 MLP, every term written out."""
    arch = ArchSpec("mlp", (3,), 2, (LayerSpec(5, 2), LayerSpec(4, 7)))
    # layer 1: W = 3*5 + 5 = 20, F = 5, B = 2  -> 50
    # layer 2: W = 5*4 + 4 = 24, F = 4, B = 7  -> 196
    # head:    W = 4*2 + 2 = 10, F = 2, B = 8  -> 96
    expected = (20 + 5) * 2 + (24 + 4) * 7 + (10 + 2) * 8
    assert expected == 342
    model = Eq2Storage(load_platform("cortex_m"))
    t = layer_table_many([arch])
    np.testing.assert_array_equal(model.layer_cost(t)[0], [50, 196, 96])
    assert model.total(t)[0] == 342
    # the same through the per-node path and through a platform
    g = lower(arch)
    assert sum(model.node_cost(g.nodes[n]) for n in compute_nodes(g)) == 342
    for name in BUNDLED_PLATFORMS:
        assert PlatformCoster(load_platform(name)).cost([arch]).totals["storage"][0] == 342


@pytest.mark.parametrize("platform_name", BUNDLED_PLATFORMS)
def test_cost_graph_equals_batch_totals(platform_name, platforms):
    coster = PlatformCoster(platforms[platform_name])
    archs = conformance_archs(n_per_space=2, seed=5)
    batch = coster.cost(archs)
    for i, arch in enumerate(archs):
        g = coster.cost_graph(lower(arch))
        for role, model in coster.models.items():
            per_node = [g.nodes[n][f"cost:{model.quantity}"] for n in compute_nodes(g)]
            agg = max(per_node) if model.reduce == "max" else sum(per_node)
            total = agg + model.network_overhead()
            assert total == pytest.approx(batch.totals[role][i], rel=1e-12), (role, i)


# --------------------------------------------------------------------------- scaling laws
def test_flat_container_is_flat_below_the_container():
    lut = per_width({8: 500.0}, "flat_container", lambda b: max(b, 8))
    assert np.all(lut[1:9] == 500.0)
    bricks = {2: 1.0, 4: 2.0, 8: 5.0}
    cont = load_platform("bitfusion").container
    lut = per_width(bricks, "flat_container", lambda b: cont(b, "weight"))
    np.testing.assert_array_equal(lut[1:9], [1, 1, 2, 2, 5, 5, 5, 5])


def test_quadratic_is_proportional_to_b_squared():
    lut = per_width({8: 1.0}, "quadratic", lambda b: b)
    b = np.arange(1, 33)
    np.testing.assert_allclose(lut[1:], (b / 8) ** 2, rtol=1e-15)
    lin = per_width({8: 1.0}, "linear", lambda b: b)
    np.testing.assert_allclose(lin[1:], b / 8, rtol=1e-15)
    inv = per_width({8: 512.0}, "inverse_quadratic", lambda b: b)
    np.testing.assert_allclose(inv[1:], 512 * (8 / b) ** 2, rtol=1e-15)


def test_mixed_widths_combine_by_geometric_mean():
    cont = load_platform("bitfusion").container
    thr = per_width({8: 512.0}, "inverse_quadratic", lambda b: cont(b, "weight"))
    for bw in (2, 4, 8):
        for ba in (2, 4, 8):
            got = mixed(thr, thr, np.array([bw]), np.array([ba]))[0]
            # Bit Fusion: a fusion unit does 64 / (b_w * b_a) MACs per cycle, 512 units
            assert got == pytest.approx(512 * 64 / (bw * ba), rel=1e-12)


def test_scaling_rejects_bad_input():
    assert SCALING_LAWS == ("flat_container", "quadratic", "linear", "inverse_quadratic")
    with pytest.raises(ValueError, match="unknown scaling law 'cubic'"):
        per_width({8: 1.0}, "cubic", lambda b: b)
    with pytest.raises(ValueError, match="at least one anchor"):
        per_width({}, "quadratic", lambda b: b)


def test_scaling_is_monotone_between_anchors():
    """Anchors off the law (0.05 pJ at 2 b, 0.28 at 8 b: not quadratic) once made 4 b cost
    0.2 and 5 b 0.11; between anchors the figure now follows a power law through both."""
    lut = per_width({2: 0.05, 8: 0.28}, "quadratic", lambda b: b)
    assert np.all(np.diff(lut[1:13]) > 0)
    assert lut[2] == 0.05 and lut[8] == 0.28
    assert lut[4] == pytest.approx(0.05 * (0.28 / 0.05) ** 0.5, rel=1e-12)  # geometric middle
    assert lut[16] == pytest.approx(0.28 * 4, rel=1e-12)  # the law beyond the last anchor
    assert lut[1] == pytest.approx(0.05 / 4, rel=1e-12)
    # anchors on the law: interpolation and the law agree
    on_law = per_width({2: 0.04, 8: 0.64}, "quadratic", lambda b: b)
    assert on_law[5] == pytest.approx(0.04 * (5 / 2) ** 2, rel=1e-12)


def _conv_pair(bits: int) -> ArchSpec:
    # 16x32x32 -> conv 64ch k3 @b -> conv 64ch k3 @b: the second conv has b-bit weights and
    # b-bit inputs, 64*64*9 = 36864 weights and 36864*1024 MACs
    conv = LayerSpec(64, bits, "conv", kernel=3)
    return ArchSpec("cnn", (16, 32, 32), 10, (conv, conv))


def test_bitfusion_throughput_is_64_over_bw_ba():
    platform = load_platform("bitfusion")
    model = build_models(platform)["latency"]
    clock = platform.capability.clock_hz.value
    per_layer = 200  # overhead_cycles_per_layer in bitfusion.yaml

    def cycles(bits: int) -> float:
        return model.layer_cost(layer_table_many([_conv_pair(bits)]))[0, 1] * clock - per_layer

    macs = 36864 * 1024
    assert cycles(8) == pytest.approx(macs / 512, rel=1e-12)  # compute-bound: 73728 cycles
    assert cycles(4) == pytest.approx(macs / 2048, rel=1e-12)
    assert cycles(2) == pytest.approx(macs / 8192, rel=1e-12)
    assert cycles(2) / cycles(8) == pytest.approx(1 / 16, rel=1e-12)
    # 3 bits run on 4-bit bricks
    assert cycles(3) == pytest.approx(cycles(4), rel=1e-12)
    # energy really falls with bits too
    energy = build_models(platform)["energy"]
    e = [energy.total(layer_table_many([_conv_pair(b)]))[0] for b in (2, 4, 8)]
    assert e[0] < e[1] < e[2]


def _uniform_mlp(bits: int) -> ArchSpec:
    return ArchSpec("mlp", (64,), 10, tuple(LayerSpec(64, bits) for _ in range(3)))


@pytest.mark.parametrize("build", [_uniform_mlp, _conv_pair])
def test_cortex_m_energy_and_latency_flat_while_storage_shrinks(build):
    coster = PlatformCoster(load_platform("cortex_m"))
    res = coster.cost([build(b) for b in range(2, 9)])
    for role in ("energy", "latency"):
        assert np.all(res.totals[role] == res.totals[role][0]), role
    assert np.all(np.diff(res.totals["storage"]) > 0)
    assert np.all(np.diff(res.totals["flash"]) > 0)  # the C export packs weights


# --------------------------------------------------------------------------- normalization
@pytest.fixture(scope="module")
def normalized_spaces():
    mlp = load_space("mlp")
    cnn = load_space("cnn")
    return [mlp, mlp.bind((8, 8), 10), cnn, cnn.bind((3, 16, 16), 10)]


@pytest.mark.parametrize("platform_name", BUNDLED_PLATFORMS)
def test_normalized_storage_and_energy(platform_name, platforms, normalized_spaces):
    coster = PlatformCoster(platforms[platform_name], reference=largest_for)
    rng = np.random.default_rng(11)
    for space in normalized_spaces:
        res = coster.cost([space.largest()])
        for role in ("storage", "energy"):
            assert res.normalized(role)[0] == pytest.approx(1.0, rel=1e-12)
        archs = space.sample_many(rng, 40)
        res = coster.cost(archs)
        for role in ("storage", "energy"):
            norm = res.normalized(role)
            assert np.all(norm > 0) and np.all(norm <= 1 + 1e-12), role
        assert np.all(res.value("max_storage_norm") == res.normalized("storage"))
        assert np.all(res.value("max_energy_j") == res.totals["energy"])


def test_normalized_without_reference_is_nan():
    res = PlatformCoster(load_platform("cortex_m")).cost([small_mlp()])
    assert np.isnan(res.normalized("storage")[0])


def test_limits():
    coster = PlatformCoster(load_platform("cortex_m"))
    lim = coster.limits()
    assert lim["max_latency_s"] == 0.1
    assert lim["max_flash_bytes"] == 1048576 - 60000
    assert lim["max_sram_bytes"] == 262144 - 28192
    assert coster.limits({"max_energy_j": 1e-6, "max_latency_s": None})["max_energy_j"] == 1e-6
    with pytest.raises(KeyError, match="unknown limit 'max_power_w'"):
        coster.limits({"max_power_w": 1.0})
    bf = PlatformCoster(load_platform("bitfusion")).limits()
    assert bf["max_storage_norm"] == 0.21 and bf["max_energy_norm"] == 0.21


def test_cost_result_rows_follow_the_input():
    coster = PlatformCoster(load_platform("host_cpu"))
    archs = [small_mlp(), small_cnn(), mixed_mlp()]
    res = coster.cost(archs)
    rev = coster.cost(archs[::-1])
    for role in ROLES:
        np.testing.assert_array_equal(res.totals[role], rev.totals[role][::-1])
    assert res.archs == tuple(archs)
    assert coster.cost([]).totals["energy"].shape == (0,)


def test_layer_table_is_not_mutated_by_models():
    table = layer_table_many([small_cnn(), mixed_mlp()])
    before = {f.name: getattr(table, f.name).copy() for f in dataclasses.fields(table)}
    for model in build_models(load_platform("bitfusion")).values():
        model.total(table)
    for name, arr in before.items():
        np.testing.assert_array_equal(getattr(table, name), arr)


def test_power_x_time_energy_follows_the_latency_model(platforms):
    """Energy = active power x latency, unit by unit and per inference: calibrating the time
    calibrates the energy."""
    plat = platforms["cortex_m"]
    models = build_models(plat)
    energy = get_model_class("power_x_time")(plat, TEST_PARAMS["power_x_time"])
    table = layer_table_many([small_mlp(), small_cnn(), mixed_mlp()])
    np.testing.assert_allclose(
        energy.total(table), models["latency"].total(table) * 0.0096, rtol=1e-12
    )
    data = plat.model_dump(mode="json")
    data["cost_models"]["latency"] = {"model": "eq2_storage"}  # not a latency model
    bad = platform_from_dict(data)
    with pytest.raises(HardwareModelError, match="needs a latency model"):
        get_model_class("power_x_time")(bad, TEST_PARAMS["power_x_time"])
