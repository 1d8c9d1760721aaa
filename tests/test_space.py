"""Search spaces: bundled spaces, sampling, membership, encoding, size and YAML errors."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import small_cnn, small_mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodels.builtin import Eq2Storage
from inag.arch import ArchError, ArchSpec, LayerSpec, conv_out_hw
from inag.ir import layer_table_many
from inag.platform import load_platform
from inag.space import SearchSpace, SpaceError, load_space, space_from_dict

SETTINGS = settings(deadline=None, max_examples=60, derandomize=True, database=None)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)

# A tiny CNN space whose conv stacks really can shrink below 1x1 (2x2 input, strides and
# pools of 2), so size(), sampling and decode's spatial fix-up all have work to do.
TINY_CNN = {
    "schema_version": 1,
    "name": "tiny",
    "kind": "cnn",
    "bits": [2, 8],
    "conv": {
        "min_depth": 1,
        "max_depth": 2,
        "channels": [2, 3],
        "kernels": [1, 3],
        "strides": [1, 2],
        "pools": [1, 2],
    },
    "dense": {"min_depth": 0, "max_depth": 1, "widths": [5]},
    "input_shape": [1, 2, 2],
    "output_size": 3,
}


def write_space(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory) -> SearchSpace:
    return load_space(write_space(tmp_path_factory.mktemp("space"), TINY_CNN))


SPACE_NAMES = ["mlp_space", "cnn_space", "tiny_space"]


@pytest.fixture(params=SPACE_NAMES)
def space(request) -> SearchSpace:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- bundled spaces
def test_bundled_mlp_size_is_paper_sized(mlp_space):
    assert mlp_space.kind == "mlp"
    assert mlp_space.bits == (2, 3, 4, 5, 6, 7, 8)
    (block,) = mlp_space.blocks
    assert (block.min_depth, block.max_depth) == (1, 6)
    assert len(block.widths) == 7
    # 1..6 layers, each 7 widths x 7 bit-widths
    assert mlp_space.size() == sum(49**d for d in range(1, 7)) == 14_129_647_350
    assert 1.0e10 < mlp_space.size() < 2.0e10  # the paper's "more than 17 billion" order


def test_bundled_cnn(cnn_space):
    assert cnn_space.kind == "cnn"
    assert cnn_space.input_shape == (1, 8, 8)
    assert cnn_space.output_size == 10
    assert [b.kind for b in cnn_space.blocks] == ["conv", "dense"]
    assert cnn_space.size() == 848_477_449_155
    # feature names describe every position of the encoding
    assert len(cnn_space.feature_names()) == cnn_space.dim == 4 * 6 + 2 * 3


def test_load_by_path_equals_bundled(tmp_path, mlp_space):
    src = Path(__file__).resolve().parents[1] / "inag" / "spaces" / "mlp.yaml"
    copy = tmp_path / "mine.yaml"
    copy.write_text(src.read_text())
    assert load_space(copy) == mlp_space


# --------------------------------------------------------------------------- sampling
def test_sample_is_deterministic_for_a_seed(space):
    a = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    many1 = space.sample_many(np.random.default_rng(123), 20)
    many2 = space.sample_many(np.random.default_rng(123), 20)
    assert [x.arch_id for x in many1] == [x.arch_id for x in many2]
    many3 = space.sample_many(np.random.default_rng(124), 20)
    assert [x.arch_id for x in many1] != [x.arch_id for x in many3]


def test_samples_are_in_the_space_and_cover_depths(space):
    archs = space.sample_many(np.random.default_rng(0), 200)
    for arch in archs:
        assert space.contains(arch), space.why_not(arch)
    block = space.blocks[0]
    depths = {sum(layer.kind == block.kind for layer in a.layers) for a in archs}
    assert depths == set(range(block.min_depth, block.max_depth + 1))


def test_sample_many_unique_and_exclude(mlp_space):
    archs = mlp_space.sample_many(np.random.default_rng(1), 300)
    ids = [a.arch_id for a in archs]
    assert len(set(ids)) == 300
    more = mlp_space.sample_many(np.random.default_rng(1), 50, exclude=set(ids))
    assert not {a.arch_id for a in more} & set(ids)


def test_sample_many_gives_up_on_an_exhausted_space(tmp_path):
    data = {
        "schema_version": 1,
        "kind": "mlp",
        "bits": [8],
        "dense": {"min_depth": 1, "max_depth": 1, "widths": [4, 8]},
        "input_shape": [1],
        "output_size": 1,
    }
    space = load_space(write_space(tmp_path, data))
    assert space.size() == 2
    assert len(space.sample_many(np.random.default_rng(0), 2)) == 2
    with pytest.raises(SpaceError, match="could only draw 2 distinct architectures of 3"):
        space.sample_many(np.random.default_rng(0), 3, max_tries=200)
    assert len(space.sample_many(np.random.default_rng(0), 5, unique=False)) == 5


# --------------------------------------------------------------------------- membership
def test_contains_and_why_not(mlp_space, cnn_space):
    arch = small_mlp()  # widths 16, 8; bits 8, 4; input 1; output 1
    assert mlp_space.contains(arch)
    assert mlp_space.why_not(arch) == ""
    assert mlp_space.check(arch) is arch

    cases = [
        (dataclasses.replace(arch, layers=(LayerSpec(17, 8),)), "layers[0].width=17 not in"),
        (dataclasses.replace(arch, layers=(LayerSpec(16, 8),) * 7), "7 dense layers"),
        (dataclasses.replace(arch, output_size=2), "output_size 2 differs"),
        (dataclasses.replace(arch, input_shape=(3,)), "input_shape (3,) differs"),
        (dataclasses.replace(arch, output_bits=4), "output_bits 4 differs"),
        (small_cnn(), "kind is 'cnn'"),
    ]
    for bad, reason in cases:
        assert not mlp_space.contains(bad)
        assert reason in mlp_space.why_not(bad)
        with pytest.raises(SpaceError, match="is outside space 'mlp'"):
            mlp_space.check(bad)

    cnn = small_cnn()  # channels 4, 8; kernel 3; pool 2; dense 16
    assert cnn_space.contains(cnn), cnn_space.why_not(cnn)
    stride2 = dataclasses.replace(cnn.layers[1], stride=2)
    bad = dataclasses.replace(cnn, layers=(cnn.layers[0], stride2, cnn.layers[2]))
    assert "layers[1].stride=2 not in [1]" in cnn_space.why_not(bad)
    dense3 = dataclasses.replace(cnn, layers=(cnn.layers[0], *[LayerSpec(16, 8)] * 3))
    assert "3 dense layers; the space allows 0..2" in cnn_space.why_not(dense3)
    five_conv = dataclasses.replace(cnn, layers=(LayerSpec(4, 8, "conv", 3),) * 5)
    assert "5 conv layers; the space allows 1..4" in cnn_space.why_not(five_conv)


def test_largest(mlp_space, cnn_space):
    big = mlp_space.largest()
    assert mlp_space.contains(big)
    assert big.layers == (LayerSpec(64, 8),) * 6
    big_cnn = cnn_space.largest()
    assert cnn_space.contains(big_cnn)
    assert big_cnn.layers == (LayerSpec(32, 8, "conv", 5),) * 4 + (LayerSpec(64, 8),) * 2


def test_bind(mlp_space, cnn_space):
    bound = mlp_space.bind((8, 8), 10)
    assert bound.input_shape == (64,)  # an MLP flattens its input
    assert bound.output_size == 10
    assert bound.size() == mlp_space.size()
    arch = bound.sample(np.random.default_rng(0))
    assert (arch.input_shape, arch.output_size) == ((64,), 10)
    assert bound.contains(arch) and not mlp_space.contains(arch)
    assert bound.largest().input_shape == (64,)

    rgb = cnn_space.bind((3, 32, 32), 10)
    assert rgb.input_shape == (3, 32, 32)
    assert rgb.largest().input_shape == (3, 32, 32)
    assert rgb.size() > cnn_space.size()  # more room for pools on a bigger map
    with pytest.raises(SpaceError, match=r"needs \(C, H, W\) image input"):
        cnn_space.bind((64,), 10)


# --------------------------------------------------------------------------- CNN by input size
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _final_side(arch: ArchSpec) -> int:
    """The larger side of the feature map the conv stack leaves."""
    _, h, w = arch.input_shape
    for layer in arch.layers:
        if layer.kind == "conv":
            h, w = conv_out_hw(h, w, layer)
    return max(h, w)


@pytest.mark.parametrize("task", IMAGE_SHAPES)
def test_cnn_binds_to_each_image_size(cnn_space, task):
    """digits keeps pools only (the space as it always was; most stacks halve the map or
    more); MNIST and CIFAR-10 also get stride 2, and most of their stacks shrink the map to a
    quarter or less."""
    shape = IMAGE_SHAPES[task]
    bound = cnn_space.bind(shape, 10)
    conv = bound.blocks[0]
    assert bound.input_shape == shape and bound.dim == cnn_space.dim
    assert conv.pools == (1, 2) and conv.strides == ((1,) if task == "digits" else (1, 2))
    archs = bound.sample_many(np.random.default_rng(0), 300)
    assert all(bound.contains(a) and a.input_shape == shape for a in archs)
    sides = np.array([_final_side(a) for a in archs])
    assert np.mean(sides <= shape[1] // (2 if task == "digits" else 4)) > 0.6
    if task != "digits":
        assert {layer.stride for a in archs for layer in a.layers if layer.kind == "conv"} == {
            1,
            2,
        }
    # a function of the shape alone: re-binding an already bound space gives the same space
    assert cnn_space.bind((3, 32, 32), 10).bind(shape, 10) == bound
    assert space_from_dict(write_space_dict(bound.to_dict())) == bound


def write_space_dict(data: dict) -> dict:
    """A YAML round trip of a space's dict (what a dataset or a model stores)."""
    return yaml.safe_load(yaml.safe_dump(data))


def test_digits_binding_is_the_bundled_default(cnn_space):
    assert cnn_space.bind((1, 8, 8), 10) == cnn_space
    assert cnn_space.to_dict()["conv_by_size"] == [{"max_side": 8, "strides": [1]}]
    assert cnn_space.to_dict()["conv"]["strides"] == [1, 2]  # the block for larger images


def test_conv_by_size_picks_the_first_entry_that_covers_the_image(tmp_path):
    data = TINY_CNN | {
        "input_shape": [1, 2, 2],
        "conv_by_size": [
            {"max_side": 2, "strides": [1], "pools": [1]},
            {"max_side": 4, "kernels": [3]},
        ],
    }
    space = load_space(write_space(tmp_path, data))
    got = {side: space.bind((1, side, side), 3).blocks[0] for side in (1, 2, 3, 4, 5)}
    assert got[1] == got[2] and (got[2].strides, got[2].pools) == ((1,), (1,))
    assert got[3] == got[4] and (got[4].kernels, got[4].strides) == ((3,), (1, 2))
    assert got[5].kernels == (1, 3)  # no entry covers 5x5: the conv block itself
    assert space.bind((1, 2, 5), 3).blocks[0] == got[5]  # the larger side decides
    assert space_from_dict(write_space_dict(space.to_dict())) == space


@pytest.mark.parametrize(
    ("conv_by_size", "needle"),
    [
        ([], "conv_by_size: expected a non-empty list"),
        ([{"strides": [1]}], "conv_by_size[0].max_side: expected an integer in 1..1024"),
        ([{"max_side": 4}, {"max_side": 4}], "conv_by_size[1].max_side: entries go from small"),
        ([{"max_side": 4, "pools": [2]}], "conv_by_size[0]: strides and pools must include 1"),
        ([{"max_side": 4, "stride": [1]}], "unknown key 'stride' (did you mean 'strides'?)"),
    ],
)
def test_conv_by_size_errors_name_the_entry(tmp_path, conv_by_size, needle):
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, TINY_CNN | {"conv_by_size": conv_by_size}))
    assert needle in str(err.value)


def test_mlp_space_has_no_image_keys(tmp_path):
    data = {
        "schema_version": 1,
        "kind": "mlp",
        "bits": [8],
        "dense": {"max_depth": 1, "widths": [4]},
        "input_shape": [1],
        "output_size": 1,
        "input_channels": [1],
    }
    with pytest.raises(SpaceError, match="unknown key 'input_channels'"):
        load_space(write_space(tmp_path, data))


# --------------------------------------------------------------------------- bad input
def test_cnn_space_bound_to_a_non_image_task_names_the_shapes(cnn_space):
    with pytest.raises(SpaceError) as err:
        cnn_space.bind((1,), 1, what="task 'data_a'")
    msg = str(err.value)
    assert msg.startswith("input_shape: space 'cnn'")  # the field
    assert "needs (C, H, W) image input" in msg  # expected
    assert "task 'data_a' has input_shape (1,)" in msg and "use an mlp space" in msg  # found


def test_one_channel_space_refuses_three_channel_images(tmp_path):
    gray = load_space(write_space(tmp_path, TINY_CNN | {"input_channels": [1]}))
    assert gray.bind((1, 28, 28), 10).input_shape == (1, 28, 28)
    with pytest.raises(SpaceError) as err:
        gray.bind((3, 32, 32), 10, what="task 'cifar10:/data/cifar'")
    msg = str(err.value)
    assert msg.startswith("input_shape: space 'tiny' takes images with 1 channel(s)")
    assert "C in [1]" in msg and "task 'cifar10:/data/cifar' has input_shape (3, 32, 32)" in msg
    assert space_from_dict(write_space_dict(gray.to_dict())) == gray
    with pytest.raises(SpaceError, match=r"input_shape \(3, 2, 2\), 3 channel"):
        load_space(
            write_space(tmp_path, TINY_CNN | {"input_channels": [1], "input_shape": [3, 2, 2]})
        )


def test_an_image_larger_than_the_limit_is_refused(cnn_space):
    with pytest.raises(
        SpaceError, match=r"H, W <= 1024; the input has input_shape \(1, 8, 2048\)"
    ):
        cnn_space.bind((1, 8, 2048), 10)


def test_an_arch_whose_map_shrinks_below_1x1_names_the_layer_and_sizes():
    """Four 2x2 pools take an 8x8 map to 0x0: the arch is refused where it is read."""
    layer = {"kind": "conv", "width": 4, "bits": 8, "kernel": 3, "stride": 1, "pool": 2}
    data = {"kind": "cnn", "input_shape": [1, 8, 8], "output_size": 10, "layers": [layer] * 4}
    with pytest.raises(ArchError) as err:
        ArchSpec.from_dict(data)
    msg = str(err.value)
    assert "layers[3]" in msg and "0x0" in msg and "at least 1x1" in msg
    # the space never makes one: decoding the same choices drops the last pool
    space = load_space("cnn")
    conv = space.blocks[0]
    slot = [1.0, 1.0, conv.widths.index(4) / 4, 0.5, 0.0, 1.0]  # mask bits width k3 s1 pool2
    arch = space.decode(np.array(slot * 4 + [0.0] * 6))
    assert [layer.pool for layer in arch.layers] == [2, 2, 2, 1] and _final_side(arch) == 1


# --------------------------------------------------------------------------- size
def _enumerate(space: SearchSpace) -> list[ArchSpec]:
    """Every architecture of a CNN space, by brute force (invalid stacks are skipped)."""
    conv, dense = space.blocks
    conv_layers = [
        LayerSpec(w, b, "conv", k, s, p)
        for w, b, k, s, p in itertools.product(
            conv.widths, space.bits, conv.kernels, conv.strides, conv.pools
        )
    ]
    dense_layers = [LayerSpec(w, b) for w, b in itertools.product(dense.widths, space.bits)]
    out = []
    for dc in range(conv.min_depth, conv.max_depth + 1):
        for convs in itertools.product(conv_layers, repeat=dc):
            for dd in range(dense.min_depth, dense.max_depth + 1):
                for denses in itertools.product(dense_layers, repeat=dd):
                    try:
                        arch = ArchSpec(
                            "cnn", space.input_shape, space.output_size, convs + denses
                        )
                    except ArchError:
                        continue
                    out.append(arch)
    return out


@pytest.mark.parametrize("shape", [[1, 2, 2], [2, 5, 3], [1, 4, 4]])
def test_cnn_size_matches_brute_force(tmp_path, shape):
    space = load_space(write_space(tmp_path, TINY_CNN | {"input_shape": shape}))
    archs = _enumerate(space)
    assert len({a.arch_id for a in archs}) == len(archs) == space.size()
    assert all(space.contains(a) for a in archs)
    # the 2x2 map really prunes: 32 first layers x 32 second layers would be 1024 stacks
    if shape == [1, 2, 2]:
        assert space.size() < (32 + 32 * 32) * 3


def test_mlp_size_matches_brute_force(tmp_path):
    data = {
        "schema_version": 1,
        "kind": "mlp",
        "bits": [2, 5, 8],
        "dense": {"min_depth": 2, "max_depth": 3, "widths": [4, 8]},
        "input_shape": [3],
        "output_size": 2,
    }
    space = load_space(write_space(tmp_path, data))
    layers = [LayerSpec(w, b) for w in (4, 8) for b in (2, 5, 8)]
    n = sum(len(list(itertools.product(layers, repeat=d))) for d in (2, 3))
    assert space.size() == n == 6**2 + 6**3


# --------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("name", SPACE_NAMES)
@SETTINGS
@given(seed=SEEDS)
def test_encode_decode_round_trip(request, name, seed):
    space = request.getfixturevalue(name)
    arch = space.sample(np.random.default_rng(seed))
    vec = space.encode(arch)
    assert vec.shape == (space.dim,)
    assert np.all((vec >= 0) & (vec <= 1))
    assert space.decode(vec) == arch


def _any_vector(dim: int):
    return st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=dim, max_size=dim
    )


@pytest.mark.parametrize("name", SPACE_NAMES)
@SETTINGS
@given(data=st.data())
def test_decode_of_any_vector_is_valid_and_in_space(request, name, data):
    space = request.getfixturevalue(name)
    vec = data.draw(_any_vector(space.dim))
    arch = space.decode(vec)
    assert isinstance(arch, ArchSpec)
    assert space.contains(arch), space.why_not(arch)
    # decoding is a projection: re-encoding the result decodes to itself
    assert space.decode(space.encode(arch)) == arch


@pytest.mark.parametrize("name", SPACE_NAMES)
@SETTINGS
@given(data=st.data())
def test_decode_many_equals_rowwise_decode(request, name, data):
    space = request.getfixturevalue(name)
    rows = data.draw(st.lists(_any_vector(space.dim), min_size=1, max_size=6))
    matrix = np.asarray(rows, dtype=np.float64)
    assert space.decode_many(matrix) == [space.decode(r) for r in rows]


def test_decode_extremes(mlp_space, cnn_space):
    assert mlp_space.decode(np.ones(mlp_space.dim)) == mlp_space.largest()
    assert mlp_space.decode(np.full(mlp_space.dim, 1e300)) == mlp_space.largest()
    # all-ones on the CNN also asks for pool 2 everywhere: 8 -> 4 -> 2 -> 1, then the fourth
    # pool would empty the map and is dropped
    top = cnn_space.decode(np.full(cnn_space.dim, np.inf))
    assert [la.pool for la in top.layers] == [2, 2, 2, 1, 1, 1]
    assert top == dataclasses.replace(
        cnn_space.largest(),
        layers=tuple(
            dataclasses.replace(la, pool=p)
            for la, p in zip(cnn_space.largest().layers, [2, 2, 2, 1, 1, 1], strict=True)
        ),
    )
    for space in (mlp_space, cnn_space):
        lo = space.decode(np.full(space.dim, -np.inf))
        assert lo == space.decode(np.zeros(space.dim)) == space.decode(np.full(space.dim, np.nan))
        # all masks off: the minimum depth with the smallest choices
        assert lo.layers[0].width == min(space.blocks[0].widths)
        assert lo.layers[0].bits == min(space.bits)
        assert len(lo.layers) == sum(b.min_depth for b in space.blocks)


def test_decode_depth_picks_highest_masks(mlp_space):
    vec = np.zeros(mlp_space.dim)
    slot = mlp_space.blocks[0].slot_len  # mask, bits, width
    vec[3 * slot : 3 * slot + 3] = [0.9, 1.0, 1.0]  # slot 3 on: 64@8
    vec[5 * slot : 5 * slot + 3] = [0.7, 0.0, 0.0]  # slot 5 on: 2@2
    assert mlp_space.decode(vec).layers == (LayerSpec(64, 8), LayerSpec(2, 2))


def test_decode_only_ever_reduces_pool_and_stride(tiny_space):
    """A stack that would shrink below 1x1 keeps its own stride; only the pool gives way."""
    # conv slot = [mask, bits, width, kernel, stride, pool]; both layers ask for stride 1,
    # pool 2 on a 2x2 map: 2x2 -> 1x1 -> 0x0, so the second pool must go.
    vec = np.zeros(tiny_space.dim)
    vec[0:6] = [1, 0, 0, 0, 0, 1]
    vec[6:12] = [1, 0, 0, 0, 0, 1]
    arch = tiny_space.decode(vec)
    assert [(la.stride, la.pool) for la in arch.layers] == [(1, 2), (1, 1)]


def test_encode_rejects_out_of_space_and_decode_rejects_bad_shape(mlp_space):
    with pytest.raises(SpaceError, match="outside space"):
        mlp_space.encode(small_cnn())
    with pytest.raises(SpaceError, match=r"expected a \(n, 18\) matrix"):
        mlp_space.decode_many(np.zeros((2, 17)))
    assert mlp_space.encode_many([]).shape == (0, 18)


# --------------------------------------------------------------------------- storage monotone
@pytest.fixture(scope="module")
def eq2() -> Eq2Storage:
    return Eq2Storage(load_platform("cortex_m"))


def _storage(model: Eq2Storage, arch: ArchSpec) -> float:
    return float(model.total(layer_table_many([arch]))[0])


@pytest.mark.parametrize("name", SPACE_NAMES)
@SETTINGS
@given(seed=SEEDS, data=st.data())
def test_storage_monotone_in_width_and_bits(request, eq2, name, seed, data):
    space = request.getfixturevalue(name)
    arch = space.sample(np.random.default_rng(seed))
    i = data.draw(st.integers(0, arch.depth - 1), label="layer")
    layer = arch.layers[i]
    block = next(b for b in space.blocks if b.kind == layer.kind)
    field = data.draw(st.sampled_from(["width", "bits"]), label="field")
    choices = block.widths if field == "width" else space.bits
    larger = [c for c in choices if c > getattr(layer, field)]
    if not larger:
        return
    new_value = data.draw(st.sampled_from(larger), label="value")
    grown = dataclasses.replace(
        arch,
        layers=(
            *arch.layers[:i],
            dataclasses.replace(layer, **{field: new_value}),
            *arch.layers[i + 1 :],
        ),
    )
    assert space.contains(grown)
    assert _storage(eq2, grown) > _storage(eq2, arch)


# --------------------------------------------------------------------------- YAML errors
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kind: mlp\nbits: [2, 3\n", "malformed YAML"),
        ("- 1\n- 2\n", "a search space is a YAML mapping, found list"),
    ],
)
def test_unreadable_yaml(tmp_path, text, needle):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=needle):
        load_space(path)


def _without(data: dict, *keys: str) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    *parents, last = keys
    node = out
    for k in parents:
        node = node[k]
    del node[last]
    return out


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_without(TINY_CNN, "bits"), "bits: expected a non-empty list of integers, found None"),
        (_without(TINY_CNN, "dense"), "dense: missing section"),
        (_without(TINY_CNN, "conv", "max_depth"), "need integers 0 <= min_depth <= max_depth"),
        (_without(TINY_CNN, "conv", "kernels"), "conv.kernels: expected a non-empty list"),
        (_without(TINY_CNN, "input_shape"), "input_shape must be a list of positive integers"),
        (_without(TINY_CNN, "output_size"), "output_size must be a positive integer"),
        (_without(TINY_CNN, "schema_version"), "schema_version must be 1, found None"),
        (TINY_CNN | {"kind": "rnn"}, "kind must be 'mlp' or 'cnn', found 'rnn'"),
        (TINY_CNN | {"bits": [1, 8]}, "bits: expected integers in 2..8, found 1"),
        (TINY_CNN | {"bits": [8, 8]}, "duplicate choices"),
        (TINY_CNN | {"conv": TINY_CNN["conv"] | {"kernels": [1, 2]}}, "must be odd, found [1, 2]"),
        (TINY_CNN | {"conv": TINY_CNN["conv"] | {"kernels": [0]}}, "kernels: expected integers"),
        (TINY_CNN | {"conv": TINY_CNN["conv"] | {"pools": [2]}}, "must include 1"),
        (TINY_CNN | {"conv": TINY_CNN["conv"] | {"min_depth": 0}}, "min_depth must be at least 1"),
        (TINY_CNN | {"conv": TINY_CNN["conv"] | {"channels": ["4"]}}, "conv.channels"),
        (TINY_CNN | {"input_shape": [1, 0, 2]}, "input_shape must be a list of positive"),
    ],
)
def test_space_errors_name_the_field(tmp_path, data, needle):
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, data, "tiny.yaml"))
    assert needle in str(err.value)
    assert "tiny" in str(err.value)  # the source file is named


def test_unknown_space_name_lists_bundled():
    with pytest.raises(SpaceError, match=r"no search space 'resnet'.*\(mlp, cnn\)"):
        load_space("resnet")


def test_mlp_size_formula_is_consistent_with_math(mlp_space):
    # per layer choices x depth, computed another way
    per = math.prod(len(c) for c in (mlp_space.blocks[0].widths, mlp_space.bits))
    assert mlp_space.size() == (per**7 - per) // (per - 1)
