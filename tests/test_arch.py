"""ArchSpec / LayerSpec: frozen values, JSON round trip, stable content hash, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from conftest import mixed_mlp, small_cnn, small_mlp

from inag.arch import ArchError, ArchSpec, LayerSpec

# The canonical JSON and arch_id of small_mlp(). If either changes, every stored dataset row,
# selection and exported artifact name changes with it: update only on purpose.
SMALL_MLP_JSON = (
    '{"input_shape":[1],"kind":"mlp","layers":[{"bits":8,"kind":"dense","width":16},'
    '{"bits":4,"kind":"dense","width":8}],"output_bits":8,"output_size":1}'
)
SMALL_MLP_ID = "79e85506368b4250"


# --------------------------------------------------------------------------- frozen, hashable
def test_layer_and_arch_are_frozen():
    arch = small_mlp()
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.output_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.layers[0].bits = 2  # type: ignore[misc]
    assert isinstance(arch.layers, tuple)
    assert isinstance(arch.input_shape, tuple)


def test_lists_are_frozen_to_tuples():
    arch = ArchSpec("mlp", [1], 1, [LayerSpec(16, 8), LayerSpec(8, 4)])  # type: ignore[arg-type]
    assert arch.input_shape == (1,)
    assert isinstance(arch.layers, tuple)
    assert arch == small_mlp()
    assert hash(arch) == hash(small_mlp())


def test_usable_as_dict_key_and_in_sets():
    assert len({small_mlp(), small_mlp(), small_cnn()}) == 2
    d = {small_mlp(): "a"}
    assert d[small_mlp()] == "a"


# --------------------------------------------------------------------------- JSON round trip
@pytest.mark.parametrize("build", [small_mlp, small_cnn, mixed_mlp])
def test_json_round_trip(build):
    arch = build()
    text = arch.to_json()
    back = ArchSpec.from_json(text)
    assert back == arch
    assert back.arch_id == arch.arch_id
    assert back.to_json() == text
    assert ArchSpec.from_dict(json.loads(text)) == arch
    assert ArchSpec.from_dict(arch.to_dict()) == arch


def test_to_json_is_canonical():
    arch = small_mlp()
    assert arch.to_json() == SMALL_MLP_JSON
    # key order in the input does not matter
    data = json.loads(SMALL_MLP_JSON)
    shuffled = {k: data[k] for k in reversed(list(data))}
    assert ArchSpec.from_dict(shuffled).to_json() == SMALL_MLP_JSON


def test_from_dict_accepts_its_own_arch_id_and_wrapped_records():
    arch = small_cnn()
    data = arch.to_dict() | {"arch_id": arch.arch_id}
    assert ArchSpec.from_dict(data) == arch
    wrapped = json.dumps({"arch": data, "score": 0.5})
    assert ArchSpec.from_json(wrapped) == arch


def test_output_bits_defaults_to_8_when_absent():
    data = small_mlp().to_dict()
    del data["output_bits"]
    assert ArchSpec.from_dict(data).output_bits == 8
    assert ArchSpec.from_dict(data).arch_id == SMALL_MLP_ID


def test_conv_layer_dict_keeps_kernel_stride_pool():
    layer = LayerSpec(4, 3, "conv", kernel=5, stride=2, pool=2)
    d = layer.to_dict()
    assert d == {"width": 4, "bits": 3, "kind": "conv", "kernel": 5, "stride": 2, "pool": 2}
    assert LayerSpec.from_dict(d) == layer
    assert LayerSpec(4, 3).to_dict() == {"kind": "dense", "width": 4, "bits": 3}


# --------------------------------------------------------------------------- arch_id
def test_arch_id_is_pinned():
    arch = small_mlp()
    assert arch.arch_id == SMALL_MLP_ID
    # the documented definition: the first 16 hex digits of sha256 of the canonical JSON
    assert hashlib.sha256(SMALL_MLP_JSON.encode()).hexdigest()[:16] == SMALL_MLP_ID


def test_arch_id_equal_for_equal_content():
    a = small_cnn()
    b = ArchSpec.from_json(a.to_json())
    c = ArchSpec(
        "cnn",
        (1, 8, 8),
        10,
        tuple(LayerSpec(**layer.to_dict()) for layer in a.layers),
    )
    assert a is not b
    assert a.arch_id == b.arch_id == c.arch_id


@pytest.mark.parametrize(
    "change",
    [
        {"output_size": 2},
        {"output_bits": 7},
        {"input_shape": (2,)},
        {"layers": (LayerSpec(16, 8), LayerSpec(8, 5))},
        {"layers": (LayerSpec(16, 8), LayerSpec(9, 4))},
        {"layers": (LayerSpec(8, 4), LayerSpec(16, 8))},  # same layers, other order
        {"layers": (LayerSpec(16, 8),)},
    ],
)
def test_arch_id_differs_for_different_content(change):
    base = small_mlp()
    other = dataclasses.replace(base, **change)
    assert other != base
    assert other.arch_id != base.arch_id
    assert len(other.arch_id) == 16
    int(other.arch_id, 16)  # hex


def test_conv_fields_enter_the_id():
    base = small_cnn()
    ids = {base.arch_id}
    for change in ({"kernel": 5}, {"stride": 2}, {"pool": 1}):
        first = dataclasses.replace(base.layers[0], **change)
        ids.add(dataclasses.replace(base, layers=(first, *base.layers[1:])).arch_id)
    assert len(ids) == 4


def test_depth_and_summary():
    assert small_mlp().depth == 2
    assert small_mlp().summary() == "16@8-8@4 | head@8"
    assert small_cnn().summary() == "c4k3p2@8-c8k3@4-16@6 | head@8"


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width": 8, "bits": 1}, "bits must be in 2..8, found 1"),
        ({"width": 8, "bits": 9}, "bits must be in 2..8, found 9"),
        ({"width": 0, "bits": 4}, "width must be in 1..1048576, found 0"),
        ({"width": -3, "bits": 4}, "width must be in"),
        ({"width": 8, "bits": 4, "kind": "conv", "kernel": 4}, "kernel must be odd"),
        ({"width": 8, "bits": 4, "kind": "conv", "kernel": 0}, "kernel must be in"),
        ({"width": 8, "bits": 4, "kind": "conv", "stride": 0}, "stride must be in"),
        ({"width": 8, "bits": 4, "kind": "conv", "pool": 0}, "pool must be in"),
        ({"width": 8, "bits": 4, "kind": "dense", "kernel": 3}, "a dense layer has no kernel"),
        ({"width": 8, "bits": 4, "kind": "lstm"}, "unknown layer kind 'lstm'; known: conv, dense"),
        ({"width": 8.0, "bits": 4}, "width must be an integer, found 8.0 (float)"),
        ({"width": "8", "bits": 4}, "width must be an integer, found '8' (str)"),
        ({"width": 8, "bits": True}, "bits must be an integer, found True (bool)"),
        ({"width": 8, "bits": None}, "bits must be an integer"),
    ],
)
def test_layer_validation_messages(kwargs, needle):
    with pytest.raises(ArchError) as err:
        LayerSpec(**kwargs)
    assert needle in str(err.value)


def _mlp_dict(**over):
    return small_mlp().to_dict() | over


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_mlp_dict(layers=[{"width": 16, "bits": 1}]), "layers[0]: bits must be in 2..8, found 1"),
        (_mlp_dict(layers=[{"width": 16, "bits": 9}]), "layers[0]: bits must be in 2..8, found 9"),
        (
            _mlp_dict(layers=[{"width": 16, "bits": 8}, {"width": 0, "bits": 8}]),
            "layers[1]: width must be in 1..1048576, found 0",
        ),
        (_mlp_dict(layers=[{"width": "16", "bits": 8}]), "layers[0]: width must be an integer"),
        (_mlp_dict(layers=[{"width": 16, "bits": 8.5}]), "layers[0]: bits must be an integer"),
        (_mlp_dict(layers=[{"width": 16}]), "layers[0]: missing field(s) ['bits']"),
        (
            _mlp_dict(layers=[{"width": 16, "bits": 8, "dropout": 0.1}]),
            "layers[0]: unknown field(s) ['dropout']",
        ),
        (_mlp_dict(layers=[[16, 8]]), "layers[0]: expected an object, found list"),
        (_mlp_dict(layers=[]), "at least one hidden layer"),
        (_mlp_dict(layers="16@8"), "'layers' must be a list, found str"),
        (_mlp_dict(colour="red"), "unknown architecture field(s) ['colour']"),
        ({"kind": "mlp", "layers": []}, "missing field(s) ['input_shape', 'output_size']"),
        (_mlp_dict(kind="rnn"), "arch kind must be 'mlp' or 'cnn', found 'rnn'"),
        (_mlp_dict(output_size=0), "output_size must be in"),
        (_mlp_dict(output_size="1"), "output_size must be an integer, found '1' (str)"),
        (_mlp_dict(output_bits=1), "output_bits must be in 2..8, found 1"),
        (_mlp_dict(input_shape=[0]), "input_shape must be positive integers"),
        (_mlp_dict(input_shape=[1.5]), "input_shape must be positive integers"),
        (_mlp_dict(input_shape=4), "'input_shape' must be a list, found int"),
        (
            _mlp_dict(layers=[{"width": 4, "bits": 8, "kind": "conv", "kernel": 3}]),
            "an mlp has non-spatial (dense) layers only",
        ),
        ([1, 2], "an architecture is a JSON object, found list"),
    ],
)
def test_from_dict_validation_messages(data, needle):
    with pytest.raises(ArchError) as err:
        ArchSpec.from_dict(data)
    assert needle in str(err.value)


def test_arch_id_mismatch_is_rejected():
    data = small_mlp().to_dict() | {"arch_id": "0123456789abcdef"}
    with pytest.raises(ArchError) as err:
        ArchSpec.from_dict(data)
    msg = str(err.value)
    assert "'0123456789abcdef' does not match the content" in msg
    assert SMALL_MLP_ID in msg


def test_from_json_rejects_bad_json():
    with pytest.raises(ArchError, match="not valid JSON"):
        ArchSpec.from_json("{kind: mlp")


def _cnn(*layers: LayerSpec, shape=(1, 8, 8)) -> ArchSpec:
    return ArchSpec("cnn", shape, 10, tuple(layers))


def test_cnn_conv_after_dense_is_rejected():
    with pytest.raises(ArchError, match=r"spatial \(conv\) layers first, then dense"):
        _cnn(LayerSpec(4, 8, "conv", 3), LayerSpec(16, 8), LayerSpec(4, 8, "conv", 3))


def test_cnn_must_start_with_conv():
    with pytest.raises(ArchError, match=r"starts with a spatial \(conv\) layer"):
        _cnn(LayerSpec(16, 8), LayerSpec(4, 8, "conv", 3))


def test_cnn_needs_chw_input():
    with pytest.raises(ArchError, match=r"needs input_shape \(C, H, W\), found \(64,\)"):
        _cnn(LayerSpec(4, 8, "conv", 3), shape=(64,))


def test_cnn_feature_map_shrinking_below_1x1():
    # 8x8 -pool2-> 4x4 -pool2-> 2x2 -pool2-> 1x1 -pool2-> 0x0
    p2 = LayerSpec(4, 8, "conv", kernel=3, pool=2)
    _cnn(p2, p2, p2)  # 1x1 is fine
    with pytest.raises(ArchError) as err:
        _cnn(p2, p2, p2, p2)
    assert "layers[3] (stride 1, pool 2) takes the 1x1 feature map to 0x0" in str(err.value)
    # stride: 8 -s4-> 2 -s4-> 1, then a pool of 2 empties it
    s4 = LayerSpec(4, 8, "conv", kernel=3, stride=4)
    _cnn(s4, s4, s4)  # strides alone never go below 1x1 with 'same' padding
    with pytest.raises(ArchError, match=r"layers\[2\] \(stride 4, pool 2\) .* 0x0"):
        _cnn(s4, s4, dataclasses.replace(s4, pool=2))
    # non-square: (1, 8, 2) with pool 4 -> 2x0
    with pytest.raises(ArchError, match="to 2x0"):
        _cnn(LayerSpec(4, 8, "conv", kernel=1, pool=4), shape=(1, 8, 2))


def test_layers_must_be_layerspecs():
    with pytest.raises(ArchError, match=r"layers\[0\] must be a LayerSpec, found dict"):
        ArchSpec("mlp", (1,), 1, ({"width": 4, "bits": 4},))  # type: ignore[arg-type]


def test_summary_round_trips_over_both_spaces(mlp_space, cnn_space):
    import numpy as np

    for space in (mlp_space, cnn_space):
        for a in space.sample_many(np.random.default_rng(5), 200):
            assert ArchSpec.from_summary(a.summary(), a.input_shape, a.output_size) == a


@pytest.mark.parametrize(
    "text, found",
    [
        ("16@8-8@4", "expected LAYERS | head@BITS"),
        ("16@8-x@4 | head@8", "layer 1: 'x@4' is neither"),
        ("16k3@8 | head@8", "layer 0: '16k3@8' is neither"),
        ("16@9 | head@8", "bits must be in"),
    ],
)
def test_from_summary_names_the_bad_part(text, found):
    with pytest.raises(ArchError, match=found):
        ArchSpec.from_summary(text, (4,), 2)
