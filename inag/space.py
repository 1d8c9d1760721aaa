"""Search spaces: which architectures exist, how to sample them, and their vector encoding.

A space is a YAML file (the bundled ``mlp`` and ``cnn`` live in ``inag/spaces/``). It holds one
or two *blocks* of layers — ``conv`` then ``dense`` for a CNN, ``dense`` for an MLP — each with a
depth range and its choices, plus the bit-width choices shared by every layer.

The encoding is a fixed-length float vector in [0, 1]^d, the language of the encoder and NAGAN:
for every slot of every block ``[mask, width, bits, (kernel, stride, pool)]``, each choice as its
ordinal position ``index / (n - 1)``. ``decode`` accepts *any* real vector and always returns a
valid architecture of the space: values are clipped, rounded to the nearest choice, the depth is
the number of masks above 0.5 clamped to the block's range (the highest-mask slots win), and a
conv stack that would shrink the feature map below 1x1 gets its pools, then strides, reduced.

Binding (``bind``) re-targets a space to a task's input shape and output size. An MLP flattens
the input. A CNN needs an image ``(C, H, W)``; its conv choices may depend on the image size
(``conv_by_size`` in the YAML: the first entry whose ``max_side`` covers max(H, W) replaces the
fields it names, larger images keep the ``conv`` block), and ``input_channels`` may pin the
channel counts it accepts. docs/dataset.md says why the bundled ``cnn`` chooses as it does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from inag.arch import MAX_BITS, MIN_BITS, ArchError, ArchSpec, LayerSpec, conv_out_hw
from inag.safe_io import InputError, brief, load_yaml, read_text


class SpaceError(ValueError):
    """A search-space file is invalid, or an architecture is outside the space."""


@dataclass(frozen=True)
class Block:
    """A run of same-kind layers with its depth range and per-layer choices."""

    kind: str  # "dense" | "conv"
    min_depth: int
    max_depth: int
    widths: tuple[int, ...]
    kernels: tuple[int, ...] = (1,)
    strides: tuple[int, ...] = (1,)
    pools: tuple[int, ...] = (1,)

    @property
    def fields(self) -> tuple[str, ...]:
        return ("width", "kernel", "stride", "pool") if self.kind == "conv" else ("width",)

    def choices(self, name: str) -> tuple[int, ...]:
        return {
            "width": self.widths,
            "kernel": self.kernels,
            "stride": self.strides,
            "pool": self.pools,
        }[name]

    @property
    def slot_len(self) -> int:
        return 2 + len(self.fields)  # mask, bits, fields


@dataclass(frozen=True)
class SizePreset:
    """The conv choices for images whose larger side is at most ``max_side`` (None: any)."""

    max_side: int | None
    conv: Block


@dataclass(frozen=True)
class SearchSpace:
    """A bounded space of quantized architectures for one input shape and output size."""

    name: str
    kind: str  # "mlp" | "cnn"
    blocks: tuple[Block, ...]
    bits: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_size: int
    output_bits: int = MAX_BITS
    description: str = ""
    # CNN only. The conv block by image size, smallest first, the YAML's `conv` block last
    # (max_side None); empty: the conv block does not depend on the size.
    conv_by_size: tuple[SizePreset, ...] = ()
    input_channels: tuple[int, ...] = ()  # CNN only: the accepted channel counts (empty: any)

    # ------------------------------------------------------------------ construction
    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this (bound) space; ``space_from_dict`` reads it back."""
        out: dict[str, Any] = {
            "schema_version": 1,
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "bits": list(self.bits),
            "input_shape": list(self.input_shape),
            "output_size": self.output_size,
            "output_bits": self.output_bits,
        }
        if self.input_channels:
            out["input_channels"] = list(self.input_channels)
        for b in self.blocks:
            out[b.kind] = _block_dict(b)
        if self.conv_by_size:
            *presets, base = self.conv_by_size
            out["conv"] = base_dict = _block_dict(base.conv)
            out["conv_by_size"] = [
                {"max_side": p.max_side}
                | {k: v for k, v in _block_dict(p.conv).items() if v != base_dict[k]}
                for p in presets
            ]
        return out

    def choice_counts(self) -> list[int]:
        """Number of choices of every feature of the encoding (2 for masks)."""
        counts = []
        for b in self.blocks:
            for _ in range(b.max_depth):
                counts += [2, len(self.bits), *(len(b.choices(f)) for f in b.fields)]
        return counts

    def bind(
        self, input_shape: Sequence[int], output_size: int, what: str = "the input"
    ) -> SearchSpace:
        """The same space for a task's input shape and output size (``what`` names the task
        in errors): an MLP flattens the input; a CNN takes the conv choices for its size."""
        shape = tuple(int(d) for d in input_shape)
        if self.kind == "mlp":
            return dataclasses.replace(
                self, input_shape=(math.prod(shape),), output_size=int(output_size)
            )
        self._check_image(shape, what)
        blocks = self.blocks
        if self.conv_by_size:
            side = max(shape[1:])
            preset = next(p for p in self.conv_by_size if p.max_side is None or side <= p.max_side)
            blocks = (preset.conv, *self.blocks[1:])
        return dataclasses.replace(
            self, input_shape=shape, output_size=int(output_size), blocks=blocks
        )

    def _check_image(self, shape: tuple[int, ...], what: str) -> None:
        """Refuse an input this CNN space cannot take, naming the shapes."""
        if len(shape) != 3 or min(shape) < 1:
            n = math.prod(shape) if shape else 0
            raise SpaceError(
                f"input_shape: space {self.name!r} is a cnn and needs (C, H, W) image input; "
                f"{what} has input_shape {shape} ({n} feature(s), not an image): bind it to an "
                "image task (digits, mnist, cifar10) or use an mlp space"
            )
        channels, h, w = shape
        if self.input_channels and channels not in self.input_channels:
            raise SpaceError(
                f"input_shape: space {self.name!r} takes images with "
                f"{' or '.join(map(str, self.input_channels))} channel(s) (C, H, W with C in "
                f"{list(self.input_channels)}); {what} has input_shape {shape}, {channels} "
                "channel(s)"
            )
        if max(h, w) > MAX_CNN_SIDE:
            raise SpaceError(
                f"input_shape: space {self.name!r} takes images with H, W <= {MAX_CNN_SIDE}; "
                f"{what} has input_shape {shape}"
            )

    @property
    def dim(self) -> int:
        """Length of the encoded vector."""
        return sum(b.max_depth * b.slot_len for b in self.blocks)

    def feature_names(self) -> list[str]:
        names = []
        for b in self.blocks:
            for s in range(b.max_depth):
                names += [f"{b.kind}{s}.{f}" for f in ("mask", "bits", *b.fields)]
        return names

    # ------------------------------------------------------------------ size / membership
    def size(self) -> int:
        """Exact number of distinct architectures in the space."""
        nb = len(self.bits)
        if self.kind == "mlp":
            (b,) = self.blocks
            per = len(b.widths) * nb
            return sum(per**d for d in range(b.min_depth, b.max_depth + 1))
        conv, dense = self.blocks
        # Count conv stacks by DP over the spatial size they leave; every stack that keeps the
        # map at least 1x1 is valid.
        _, h, w = self.input_shape
        counts: dict[tuple[int, int], int] = {(h, w): 1}
        n_conv = 0
        per_width = len(conv.widths) * nb
        for depth in range(1, conv.max_depth + 1):
            nxt: dict[tuple[int, int], int] = {}
            for (hh, ww), c in counts.items():
                for k in conv.kernels:
                    for s in conv.strides:
                        for p in conv.pools:
                            oh, ow = conv_out_hw(hh, ww, LayerSpec(1, MIN_BITS, "conv", k, s, p))
                            if oh >= 1 and ow >= 1:
                                nxt[(oh, ow)] = nxt.get((oh, ow), 0) + c * per_width
            counts = nxt
            if depth >= conv.min_depth:
                n_conv += sum(counts.values())
        per_dense = len(dense.widths) * nb
        n_dense = sum(per_dense**d for d in range(dense.min_depth, dense.max_depth + 1))
        return n_conv * n_dense

    def contains(self, arch: ArchSpec) -> bool:
        return not self.why_not(arch)

    def why_not(self, arch: ArchSpec) -> str:
        """Empty if ``arch`` is in the space, else the first reason it is not."""
        if arch.kind != self.kind:
            return f"kind is {arch.kind!r}, the space {self.name!r} holds {self.kind!r}"
        if tuple(arch.input_shape) != self.input_shape:
            return f"input_shape {arch.input_shape} differs from the space's {self.input_shape}"
        if arch.output_size != self.output_size:
            return f"output_size {arch.output_size} differs from the space's {self.output_size}"
        if arch.output_bits != self.output_bits:
            return f"output_bits {arch.output_bits} differs from the space's {self.output_bits}"
        start = 0
        for b in self.blocks:
            n = 0
            for layer in arch.layers[start:]:
                if layer.kind != b.kind:
                    break
                n += 1
            run = arch.layers[start : start + n]
            if not b.min_depth <= n <= b.max_depth:
                return f"{n} {b.kind} layers; the space allows {b.min_depth}..{b.max_depth}"
            for i, layer in enumerate(run, start):
                if layer.bits not in self.bits:
                    return f"layers[{i}].bits={layer.bits} not in {list(self.bits)}"
                for f in b.fields:
                    if getattr(layer, f) not in b.choices(f):
                        return f"layers[{i}].{f}={getattr(layer, f)} not in {list(b.choices(f))}"
            start += n
        if start != len(arch.layers):
            return f"layers[{start}] ({arch.layers[start].kind}) is not allowed after that"
        return ""

    def check(self, arch: ArchSpec) -> ArchSpec:
        reason = self.why_not(arch)
        if reason:
            raise SpaceError(
                f"architecture {arch.summary()} is outside space {self.name!r}: {reason}"
            )
        return arch

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator) -> ArchSpec:
        """One architecture: depth uniform in each block's range, every choice uniform.

        Uniform depth (not uniform over points) keeps shallow nets from vanishing next to the
        far more numerous deep ones, so a dataset covers low to high capacity.
        """
        layers: list[LayerSpec] = []
        for b in self.blocks:
            depth = int(rng.integers(b.min_depth, b.max_depth + 1))
            for _ in range(depth):
                kw = {f: int(rng.choice(b.choices(f))) for f in b.fields}
                bits = int(rng.choice(self.bits))
                layers.append(_layer(b.kind, bits, kw))
        return self._build(self._fit_spatial(layers))

    def sample_many(
        self,
        rng: np.random.Generator,
        n: int,
        unique: bool = True,
        exclude: set[str] | None = None,
        max_tries: int | None = None,
    ) -> list[ArchSpec]:
        """``n`` samples; with ``unique`` no arch_id repeats (nor any in ``exclude``)."""
        seen = set(exclude or ())
        out: list[ArchSpec] = []
        tries = 0
        limit = max_tries if max_tries is not None else 50 * n + 1000
        while len(out) < n:
            tries += 1
            if tries > limit:
                raise SpaceError(
                    f"could only draw {len(out)} distinct architectures of {n} "
                    f"from space {self.name!r} (size {self.size()})"
                )
            arch = self.sample(rng)
            if unique:
                if arch.arch_id in seen:
                    continue
                seen.add(arch.arch_id)
            out.append(arch)
        return out

    def largest(self) -> ArchSpec:
        """Every block at max depth, max width, max bits, max kernel, no stride, no pool."""
        layers = []
        for b in self.blocks:
            kw = {"width": max(b.widths)}
            if b.kind == "conv":
                kw |= {"kernel": max(b.kernels), "stride": min(b.strides), "pool": min(b.pools)}
            layers += [_layer(b.kind, max(self.bits), kw) for _ in range(b.max_depth)]
        return self._build(layers)

    # ------------------------------------------------------------------ encoding
    def encode(self, arch: ArchSpec) -> np.ndarray:
        self.check(arch)
        vec = np.zeros(self.dim, dtype=np.float32)
        pos = 0
        start = 0
        for b in self.blocks:
            n = 0
            while start + n < len(arch.layers) and arch.layers[start + n].kind == b.kind:
                n += 1
            for s in range(b.max_depth):
                if s < n:
                    layer = arch.layers[start + s]
                    vec[pos] = 1.0
                    vec[pos + 1] = _ordinal(self.bits, layer.bits)
                    for j, f in enumerate(b.fields):
                        vec[pos + 2 + j] = _ordinal(b.choices(f), getattr(layer, f))
                pos += b.slot_len
            start += n
        return vec

    def encode_many(self, archs: Sequence[ArchSpec]) -> np.ndarray:
        if not archs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.encode(a) for a in archs])

    def canonical_many(self, matrix: np.ndarray) -> np.ndarray:
        """``encode(decode(row))`` for every row, vectorized (tested equal to it): the choice
        indices of every block's active slots packed first, for CNNs the spatial fix of
        ``_fit_spatial`` applied once per distinct (map, layer) with the same per-layer rule,
        then the ordinal codes."""
        m = self._clipped(matrix)
        n = m.shape[0]
        parts = []
        pos = 0
        for b in self.blocks:
            span = b.max_depth * b.slot_len
            sl = m[:, pos : pos + span].reshape(n, b.max_depth, b.slot_len)
            pos += span
            depth, active = _active_slots(sl, b)
            order = np.argsort(~active, axis=1, kind="stable")
            packed = np.take_along_axis(sl, order[:, :, None], axis=1)
            idx = {"bits": _index(packed[:, :, 1], len(self.bits))}
            for j, f in enumerate(b.fields):
                idx[f] = _index(packed[:, :, 2 + j], len(b.choices(f)))
            keep = np.arange(b.max_depth)[None, :] < depth[:, None]
            parts.append((b, idx, keep))
        if self.kind == "cnn":
            self._fit_spatial_indices(*parts[0])
        out = np.zeros((n, self.dim), dtype=np.float64)
        pos = 0
        for b, idx, keep in parts:
            o = np.zeros((n, b.max_depth, b.slot_len))
            o[:, :, 0] = 1.0
            for j, (f, count) in enumerate(
                [("bits", len(self.bits))] + [(f, len(b.choices(f))) for f in b.fields]
            ):
                o[:, :, 1 + j] = idx[f] / (count - 1) if count > 1 else 0.0
            o *= keep[:, :, None]
            out[:, pos : pos + b.max_depth * b.slot_len] = o.reshape(n, -1)
            pos += b.max_depth * b.slot_len
        return (out + 0.0).astype(np.float32)  # no -0.0: rows compare as bytes

    def _fit_spatial_indices(
        self, conv: Block, idx: dict[str, np.ndarray], keep: np.ndarray
    ) -> None:
        """``_fit_spatial`` on packed conv choice indices, in place."""
        n = keep.shape[0]
        h = np.full(n, self.input_shape[1])
        w = np.full(n, self.input_shape[2])
        values = {f: np.asarray(conv.choices(f)) for f in ("kernel", "stride", "pool")}
        position = {f: {v: i for i, v in enumerate(conv.choices(f))} for f in ("stride", "pool")}
        memo: dict[tuple[int, ...], tuple[int, int, int, int]] = {}
        for s in range(conv.max_depth):
            rows = np.flatnonzero(keep[:, s])
            if not len(rows):
                break
            key_cols = np.stack(
                [h[rows], w[rows], *(values[f][idx[f][rows, s]] for f in values)], axis=1
            )
            uniq, inverse = np.unique(key_cols, axis=0, return_inverse=True)
            fixed = np.empty((len(uniq), 4), dtype=np.int64)  # stride, pool, oh, ow
            for u, (hh, ww, k, st, pl) in enumerate(uniq.tolist()):
                key = (hh, ww, k, st, pl)
                if key not in memo:
                    layer = _layer("conv", self.bits[0], {"width": 1, "kernel": k, "stride": st,
                                                          "pool": pl})  # fmt: skip
                    got, oh, ow = self._fit_conv(hh, ww, layer)
                    memo[key] = (got.stride, got.pool, oh, ow)
                fixed[u] = memo[key]
            f = fixed[inverse.reshape(-1)]
            idx["stride"][rows, s] = [position["stride"][v] for v in f[:, 0].tolist()]
            idx["pool"][rows, s] = [position["pool"][v] for v in f[:, 1].tolist()]
            h[rows], w[rows] = f[:, 2], f[:, 3]

    def decode(self, vector: Sequence[float] | np.ndarray) -> ArchSpec:
        return self.decode_many(np.asarray(vector, dtype=np.float64)[None, :])[0]

    def decode_many(self, matrix: np.ndarray) -> list[ArchSpec]:
        """Vectorized decode of a (n, dim) matrix; every row gives a valid architecture."""
        m = self._clipped(matrix)
        n = m.shape[0]
        per_block = []
        pos = 0
        for b in self.blocks:
            sl = m[:, pos : pos + b.max_depth * b.slot_len].reshape(n, b.max_depth, b.slot_len)
            pos += b.max_depth * b.slot_len
            _, active = _active_slots(sl, b)
            bits = np.asarray(self.bits)[_index(sl[:, :, 1], len(self.bits))]
            fields = {
                f: np.asarray(b.choices(f))[_index(sl[:, :, 2 + j], len(b.choices(f)))]
                for j, f in enumerate(b.fields)
            }
            per_block.append((b, active, bits, fields))
        out = []
        for r in range(n):
            layers: list[LayerSpec] = []
            for b, active, bits, fields in per_block:
                for s in np.flatnonzero(active[r]):
                    kw = {f: int(v[r, s]) for f, v in fields.items()}
                    layers.append(_layer(b.kind, int(bits[r, s]), kw))
            out.append(self._build(self._fit_spatial(layers)))
        return out

    # ------------------------------------------------------------------ helpers
    def _clipped(self, matrix: np.ndarray) -> np.ndarray:
        """A (n, dim) float64 copy in [0, 1] (NaN -> 0, +inf -> 1), or a SpaceError."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != self.dim:
            raise SpaceError(
                f"expected a (n, {self.dim}) matrix for space {self.name!r}, found shape {m.shape}"
            )
        return np.clip(np.nan_to_num(m, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)

    def _build(self, layers: list[LayerSpec]) -> ArchSpec:
        return ArchSpec(
            kind=self.kind,
            input_shape=self.input_shape,  # type: ignore[arg-type]
            output_size=self.output_size,
            layers=tuple(layers),
            output_bits=self.output_bits,
        )

    def _fit_spatial(self, layers: list[LayerSpec]) -> list[LayerSpec]:
        """Reduce pools, then strides, of conv layers whose map would shrink below 1x1."""
        if self.kind != "cnn":
            return layers
        h, w = self.input_shape[1], self.input_shape[2]
        fixed = []
        for layer in layers:
            if layer.kind == "conv":
                layer, h, w = self._fit_conv(h, w, layer)
            fixed.append(layer)
        return fixed

    def _fit_conv(self, h: int, w: int, layer: LayerSpec) -> tuple[LayerSpec, int, int]:
        """One conv layer on an h x w map: itself, or with its pool, then stride, reduced
        until its map is at least 1x1; and the map it leaves."""
        conv = self.blocks[0]
        oh, ow = conv_out_hw(h, w, layer)
        if oh >= 1 and ow >= 1:
            return layer, oh, ow
        # only ever reduce: keep the largest pool, then stride, not above the layer's own (1 is
        # always a choice and always fits)
        for pool in sorted((p for p in conv.pools if p <= layer.pool), reverse=True):
            for stride in sorted((s for s in conv.strides if s <= layer.stride), reverse=True):
                cand = dataclasses.replace(layer, pool=pool, stride=stride)
                oh, ow = conv_out_hw(h, w, cand)
                if oh >= 1 and ow >= 1:
                    return cand, oh, ow
        return cand, oh, ow


_LAYER_CACHE: dict[tuple, LayerSpec] = {}


def _layer(kind: str, bits: int, kw: dict[str, int]) -> LayerSpec:
    """LayerSpecs are immutable: decode reuses one instance per distinct layer."""
    key = (kind, bits, *sorted(kw.items()))
    layer = _LAYER_CACHE.get(key)
    if layer is None:
        layer = _LAYER_CACHE[key] = LayerSpec(kind=kind, bits=bits, **kw)  # type: ignore[arg-type]
    return layer


def _active_slots(slots: np.ndarray, b: Block) -> tuple[np.ndarray, np.ndarray]:
    """Depth per row and which slots are active, from the masks of (n, max_depth, slot_len)
    slots: the depth is the masks above 0.5 clamped to the block's range, and the slots with
    the highest masks are the active ones (stable: the earlier slot wins a tie)."""
    n = slots.shape[0]
    masks = slots[:, :, 0]
    depth = np.clip((masks > 0.5).sum(1), b.min_depth, b.max_depth)
    order = np.argsort(-masks, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(b.max_depth)[None, :].repeat(n, 0), 1)
    return depth, rank < depth[:, None]


def _block_dict(b: Block) -> dict[str, Any]:
    """A block's YAML form."""
    d: dict[str, Any] = {"min_depth": b.min_depth, "max_depth": b.max_depth}
    if b.kind == "conv":
        return d | {
            "channels": list(b.widths),
            "kernels": list(b.kernels),
            "strides": list(b.strides),
            "pools": list(b.pools),
        }
    return d | {"widths": list(b.widths)}


def _ordinal(choices: Sequence[int], value: int) -> float:
    return 0.0 if len(choices) == 1 else choices.index(value) / (len(choices) - 1)


def _index(values: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.rint(values * (n - 1)), 0, n - 1).astype(np.int64)


# ---------------------------------------------------------------------- loading
BUNDLED_SPACES = ("mlp", "cnn")
# Bounds that keep a crafted space from hanging (size sums, DP) or asking for absurd memory
# (the encoding is max_depth x slot floats per architecture); the bundled ones use 6 and 4.
MAX_SPACE_DEPTH = 64
MAX_CHOICES = 256
MAX_INPUT_ELEMENTS = 1 << 26
MAX_OUTPUT_SIZE = 1 << 16
MAX_CNN_SIDE = 1024
MAX_CONV_COMBOS = 64
_TOP_KEYS = (
    "schema_version",
    "name",
    "kind",
    "description",
    "bits",
    "input_shape",
    "output_size",
    "output_bits",
)
_BLOCK_KEYS = {
    "dense": ("min_depth", "max_depth", "widths"),
    "conv": ("min_depth", "max_depth", "channels", "kernels", "strides", "pools"),
}


def _check_keys(data: dict, valid: Sequence[str], where: str) -> None:
    """Refuse misspelled keys (``min_dpeth``): ignoring them silently changes the space."""
    import difflib

    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpaceError(
                f"{where}: unknown key {brief(key)}{hint}; valid keys: {', '.join(valid)}"
            )


def _int_field(data: dict, key: str, where: str, lo: int, hi: int, default: Any = None) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SpaceError(f"{where}.{key}: expected an integer in {lo}..{hi}, found {brief(v)}")
    return v


def _int_list(data: dict, key: str, where: str, lo: int, hi: int) -> tuple[int, ...]:
    vals = data.get(key)
    if not isinstance(vals, list) or not vals:
        raise SpaceError(
            f"{where}.{key}: expected a non-empty list of integers, found {brief(vals)}"
        )
    if len(vals) > MAX_CHOICES:
        raise SpaceError(
            f"{where}.{key}: {len(vals)} choices, more than the {MAX_CHOICES} accepted"
        )
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise SpaceError(f"{where}.{key}: expected integers in {lo}..{hi}, found {brief(v)}")
    if len(set(vals)) != len(vals):
        raise SpaceError(f"{where}.{key}: duplicate choices in {vals}")
    return tuple(sorted(vals))


def _parse_block(name: str, kind: str, bd: Any, where: str) -> Block:
    """One ``dense`` or ``conv`` section, every field checked."""
    if not isinstance(bd, dict):
        raise SpaceError(f"{where}: expected a mapping of the block's fields, found {brief(bd)}")
    _check_keys(bd, _BLOCK_KEYS[name], where)
    lo_default = 1 if (name == "dense" and kind == "mlp") or name == "conv" else 0
    min_d = bd.get("min_depth", lo_default)
    max_d = bd.get("max_depth")
    if (
        isinstance(max_d, bool)
        or isinstance(min_d, bool)
        or not isinstance(max_d, int)
        or not isinstance(min_d, int)
        or not 0 <= min_d <= max_d
    ):
        raise SpaceError(
            f"{where}: need integers 0 <= min_depth <= max_depth, found "
            f"{brief(min_d)}..{brief(max_d)}"
        )
    if max_d > MAX_SPACE_DEPTH:
        raise SpaceError(
            f"{where}.max_depth: {max_d} layers, more than the {MAX_SPACE_DEPTH} accepted"
        )
    if min_d < lo_default:
        raise SpaceError(f"{where}: min_depth must be at least {lo_default}, found {min_d}")
    key = "channels" if name == "conv" else "widths"
    kw: dict[str, Any] = {"widths": _int_list(bd, key, where, 1, 1 << 16)}
    if name == "conv":
        kw["kernels"] = _int_list(bd, "kernels", where, 1, 15)
        if any(k % 2 == 0 for k in kw["kernels"]):
            raise SpaceError(f"{where}.kernels: must be odd, found {list(kw['kernels'])}")
        kw["strides"] = _int_list(bd, "strides", where, 1, 8) if "strides" in bd else (1,)
        kw["pools"] = _int_list(bd, "pools", where, 1, 8) if "pools" in bd else (1,)
        combos = len(kw["kernels"]) * len(kw["strides"]) * len(kw["pools"])
        if combos > MAX_CONV_COMBOS:
            raise SpaceError(
                f"{where}: {combos} kernel x stride x pool combinations, more than the "
                f"{MAX_CONV_COMBOS} accepted (counting the space's size grows with them)"
            )
        if 1 not in kw["strides"] or 1 not in kw["pools"]:
            raise SpaceError(
                f"{where}: strides and pools must include 1 (so any stack can be kept at least "
                "1x1)"
            )
    return Block(kind=name, min_depth=min_d, max_depth=max_d, **kw)


def _parse_conv_by_size(entries: Any, base: dict, where: str) -> tuple[SizePreset, ...]:
    """``conv_by_size``: entries of ``max_side`` plus conv fields that replace the base
    block's, in increasing ``max_side``; the base block ends the tuple (any larger image)."""
    if not isinstance(entries, list) or not entries:
        raise SpaceError(
            f"{where}: expected a non-empty list of {{max_side: N, <conv fields>}}, found "
            f"{brief(entries)}"
        )
    presets = []
    last = 0
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise SpaceError(f"{at}: expected a mapping, found {brief(entry)}")
        _check_keys(entry, ("max_side", *_BLOCK_KEYS["conv"]), at)
        side = _int_field(entry, "max_side", at, 1, MAX_CNN_SIDE)
        if side <= last:
            raise SpaceError(
                f"{at}.max_side: entries go from small to large images; {side} follows {last}"
            )
        last = side
        fields = {k: v for k, v in entry.items() if k != "max_side"}
        presets.append(SizePreset(side, _parse_block("conv", "cnn", base | fields, at)))
    return (*presets, SizePreset(None, _parse_block("conv", "cnn", base, f"{where} base")))


def space_from_dict(data: Any, source: str = "<dict>") -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(
            f"{source}: a search space is a YAML mapping, found {type(data).__name__}"
        )
    sv = data.get("schema_version")
    if isinstance(sv, bool) or sv != 1:
        raise SpaceError(f"{source}: schema_version must be 1, found {brief(sv)}")
    kind = data.get("kind")
    if kind not in ("mlp", "cnn"):
        raise SpaceError(f"{source}: kind must be 'mlp' or 'cnn', found {brief(kind)}")
    block_names = ("dense",) if kind == "mlp" else ("conv", "dense")
    cnn_keys = ("conv_by_size", "input_channels") if kind == "cnn" else ()
    _check_keys(data, (*_TOP_KEYS, *block_names, *cnn_keys), source)
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise SpaceError(f"{source}: {key} must be a string, found {brief(data[key])}")
    bits = _int_list(data, "bits", source, MIN_BITS, MAX_BITS)
    blocks = []
    for name in block_names:
        if not isinstance(data.get(name), dict):
            raise SpaceError(
                f"{source}: {name}: missing section (a {kind} space needs {list(block_names)})"
            )
        blocks.append(_parse_block(name, kind, data[name], f"{source}: {name}"))
    presets: tuple[SizePreset, ...] = ()
    if "conv_by_size" in data:
        presets = _parse_conv_by_size(
            data["conv_by_size"], data["conv"], f"{source}: conv_by_size"
        )
    channels: tuple[int, ...] = ()
    if "input_channels" in data:
        channels = _int_list(data, "input_channels", source, 1, 1 << 16)
    shape = data.get("input_shape")
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise SpaceError(
            f"{source}: input_shape must be a list of positive integers, found {brief(shape)}"
        )
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise SpaceError(
            f"{source}: input_shape {brief(shape)} has {math.prod(shape):,} elements, more "
            f"than the {MAX_INPUT_ELEMENTS:,} accepted"
        )
    if kind == "cnn" and (len(shape) != 3 or max(shape[1:]) > MAX_CNN_SIDE):
        raise SpaceError(
            f"{source}: a cnn space needs input_shape [C, H, W] with H, W <= {MAX_CNN_SIDE}, "
            f"found {brief(shape)}"
        )
    out_size = data.get("output_size")
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size < 1:
        raise SpaceError(
            f"{source}: output_size must be a positive integer, found {brief(out_size)}"
        )
    if out_size > MAX_OUTPUT_SIZE:
        raise SpaceError(
            f"{source}: output_size {out_size} is more than the {MAX_OUTPUT_SIZE} accepted"
        )
    out_bits = _int_field(data, "output_bits", source, MIN_BITS, MAX_BITS, MAX_BITS)
    space = SearchSpace(
        name=str(data.get("name", Path(source).stem)),
        kind=kind,
        blocks=tuple(blocks),
        bits=bits,
        input_shape=tuple(shape),
        output_size=out_size,
        output_bits=out_bits,
        description=str(data.get("description", "")),
        conv_by_size=presets,
        input_channels=channels,
    )
    space = space.bind(space.input_shape, space.output_size, f"{source}'s own input_shape")
    try:
        space.largest()
    except ArchError as exc:
        raise SpaceError(f"{source}: the space's largest architecture is invalid: {exc}") from None
    return space


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A bundled space by name (``mlp``, ``cnn``) or a YAML file by path."""
    text_source = str(name_or_path)
    if text_source in BUNDLED_SPACES:
        text = resources.files("inag").joinpath(f"spaces/{text_source}.yaml").read_text()
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise SpaceError(
                f"no search space {text_source!r}: not a bundled name "
                f"({', '.join(BUNDLED_SPACES)}) and no such file"
            )
        try:
            text = read_text(path, "a search-space YAML file")
        except InputError as exc:
            raise SpaceError(str(exc)) from None
    try:
        data = load_yaml(text, text_source)
    except InputError as exc:
        raise SpaceError(str(exc)) from None
    return space_from_dict(data, source=text_source)


def largest_for(arch: ArchSpec) -> ArchSpec:
    """The normalization reference of ``arch``: the largest architecture of the bundled space
    of its kind, bound to its input shape and output size (the paper's Table 3 convention)."""
    return _bundled(arch.kind).bind(arch.input_shape, arch.output_size).largest()


_BUNDLED_CACHE: dict[str, SearchSpace] = {}


def _bundled(name: str) -> SearchSpace:
    if name not in _BUNDLED_CACHE:
        _BUNDLED_CACHE[name] = load_space(name)
    return _BUNDLED_CACHE[name]
