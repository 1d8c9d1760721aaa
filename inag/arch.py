"""Quantized network architectures: the values every stage of INAG passes around.

An :class:`ArchSpec` is what NAGAN generates, what the dataset stores and what the exporter
lowers. It is frozen and hashable, round-trips through JSON, and has a stable content hash
(``arch_id``) so that a dataset row, a selection and an exported artifact name the same network.

The last layer (the task head: ``output_size`` units) is implicit: it is always present, dense,
with weights at ``output_bits`` and an int32 output (see ``docs/decisions.md``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

MIN_BITS = 2
MAX_BITS = 8
ArchKind = Literal["mlp", "cnn"]
LayerKind = Literal["dense", "conv"]


class ArchError(ValueError):
    """An architecture (or its JSON) is not valid."""


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: its width (dense nodes or conv channels) and its bit-width B(i).

    ``bits`` quantizes both the layer's weights and its output activations (the paper's B(i)).
    Conv layers also carry a square ``kernel``, a ``stride`` and a max-``pool`` size (1 = none);
    they use 'same' zero padding (``kernel // 2``).
    """

    width: int
    bits: int
    kind: LayerKind = "dense"
    kernel: int = 1
    stride: int = 1
    pool: int = 1

    def __post_init__(self) -> None:
        from inag.ir.ops import PARAM_DEFAULTS, UnknownOpError, get_op

        _check_int("width", self.width, 1, 1 << 20)
        _check_int("bits", self.bits, MIN_BITS, MAX_BITS)
        try:
            op = get_op(self.kind)
        except UnknownOpError as exc:
            raise ArchError(str(exc)) from None
        for p, default in PARAM_DEFAULTS.items():
            if p in op.params:
                _check_int(p, getattr(self, p), *op.params[p])
            elif getattr(self, p) != default:
                raise ArchError(
                    f"a {self.kind} layer has no {p} (it must be {default}), found "
                    f"{p}={getattr(self, p)}"
                )
        problem = op.check(self)
        if problem:
            raise ArchError(problem)

    def to_dict(self) -> dict[str, Any]:
        from inag.ir.ops import get_op

        out: dict[str, Any] = {"kind": self.kind, "width": self.width, "bits": self.bits}
        return out | {p: getattr(self, p) for p in get_op(self.kind).params}

    @staticmethod
    def from_dict(data: Any, where: str = "layer") -> LayerSpec:
        if not isinstance(data, dict):
            raise ArchError(f"{where}: expected an object, found {type(data).__name__}")
        known = {"width", "bits", "kind", "kernel", "stride", "pool"}
        extra = set(data) - known
        if extra:
            raise ArchError(f"{where}: unknown field(s) {sorted(extra)}; known: {sorted(known)}")
        missing = {"width", "bits"} - set(data)
        if missing:
            raise ArchError(f"{where}: missing field(s) {sorted(missing)}")
        try:
            return LayerSpec(**data)
        except ArchError as exc:
            raise ArchError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ArchSpec:
    """A quantized MLP or CNN: hidden layers in order, then the implicit dense head.

    For ``cnn`` the conv layers come first, then optional dense layers; the feature map is
    flattened before the first dense layer.
    """

    kind: ArchKind
    input_shape: tuple[int, ...]
    output_size: int
    layers: tuple[LayerSpec, ...]
    output_bits: int = MAX_BITS
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "cnn"):
            raise ArchError(f"arch kind must be 'mlp' or 'cnn', found {self.kind!r}")
        shape = tuple(self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "layers", tuple(self.layers))
        if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
            raise ArchError(f"input_shape must be positive integers, found {shape}")
        _check_int("output_size", self.output_size, 1, 1 << 20)
        _check_int("output_bits", self.output_bits, MIN_BITS, MAX_BITS)
        if not self.layers:
            raise ArchError("an architecture needs at least one hidden layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerSpec):
                raise ArchError(f"layers[{i}] must be a LayerSpec, found {type(layer).__name__}")
        from inag.ir.ops import get_op

        ops = [get_op(layer.kind) for layer in self.layers]
        if self.kind == "mlp":
            if any(op.spatial for op in ops):
                raise ArchError("an mlp has non-spatial (dense) layers only")
        else:
            if len(shape) != 3:
                raise ArchError(f"a cnn needs input_shape (C, H, W), found {shape}")
            if not ops[0].spatial:
                raise ArchError("a cnn starts with a spatial (conv) layer")
            first_flat = next((i for i, op in enumerate(ops) if not op.spatial), len(ops))
            if any(op.spatial for op in ops[first_flat:]):
                raise ArchError("a cnn has its spatial (conv) layers first, then dense layers")
            fmap: tuple[int, ...] = shape
            for i, (op, layer) in enumerate(zip(ops[:first_flat], self.layers, strict=False)):
                before, fmap = fmap, op.out_shape(fmap, layer)
                if min(fmap[1:]) < 1:
                    raise ArchError(
                        f"layers[{i}] (stride {layer.stride}, pool {layer.pool}) takes the "
                        f"{before[1]}x{before[2]} feature map to {fmap[1]}x{fmap[2]} (input_shape "
                        f"{shape}); a feature map must stay at least 1x1"
                    )

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def arch_id(self) -> str:
        """Stable content hash: the same network has the same id on every machine."""
        if not self._id:
            digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
            object.__setattr__(self, "_id", digest)
        return self._id

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "output_size": self.output_size,
            "output_bits": self.output_bits,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the input of ``arch_id``."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_dict(data: Any) -> ArchSpec:
        if not isinstance(data, dict):
            raise ArchError(f"an architecture is a JSON object, found {type(data).__name__}")
        known = {"kind", "input_shape", "output_size", "output_bits", "layers", "arch_id"}
        extra = set(data) - known
        if extra:
            raise ArchError(
                f"unknown architecture field(s) {sorted(extra)}; known: {sorted(known)}"
            )
        missing = {"kind", "input_shape", "output_size", "layers"} - set(data)
        if missing:
            raise ArchError(f"architecture is missing field(s) {sorted(missing)}")
        if not isinstance(data["layers"], list):
            raise ArchError(f"'layers' must be a list, found {type(data['layers']).__name__}")
        if not isinstance(data["input_shape"], list | tuple):
            raise ArchError(
                f"'input_shape' must be a list, found {type(data['input_shape']).__name__}"
            )
        layers = tuple(
            LayerSpec.from_dict(layer, where=f"layers[{i}]")
            for i, layer in enumerate(data["layers"])
        )
        spec = ArchSpec(
            kind=data["kind"],
            input_shape=tuple(data["input_shape"]),
            output_size=data["output_size"],
            layers=layers,
            output_bits=data.get("output_bits", MAX_BITS),
        )
        claimed = data.get("arch_id")
        if claimed is not None and claimed != spec.arch_id:
            raise ArchError(
                f"arch_id {claimed!r} does not match the content (its hash is {spec.arch_id!r})"
            )
        return spec

    @staticmethod
    def from_json(text: str) -> ArchSpec:
        from inag.safe_io import InputError, load_json

        try:
            data = load_json(text, "architecture")
        except InputError as exc:
            raise ArchError(str(exc)) from None
        if isinstance(data, dict) and "arch" in data and isinstance(data["arch"], dict):
            data = data["arch"]  # a wrapped record, e.g. a line of `inag generate`
        return ArchSpec.from_dict(data)

    def summary(self) -> str:
        """Short human form, e.g. ``32@4-16@8 | head@8``."""
        parts = []
        for layer in self.layers:
            if layer.kind == "conv":
                extra = f"k{layer.kernel}" + (f"s{layer.stride}" if layer.stride > 1 else "")
                extra += f"p{layer.pool}" if layer.pool > 1 else ""
                parts.append(f"c{layer.width}{extra}@{layer.bits}")
            else:
                parts.append(f"{layer.width}@{layer.bits}")
        return "-".join(parts) + f" | head@{self.output_bits}"

    @staticmethod
    def from_summary(text: str, input_shape: tuple[int, ...], output_size: int) -> ArchSpec:
        """The inverse of :meth:`summary` for a given input and output size, so a network can
        be written in one line, e.g. ``c6k3p2@5-c8k5s2@7-12@4 | head@8`` (a cnn if it has a
        conv layer)."""
        body, sep, head = text.partition("|")
        m_head = _HEAD_RE.fullmatch(head.strip()) if sep else None
        if m_head is None:
            raise ArchError(
                f"summary {text!r}: expected LAYERS | head@BITS, e.g. 16@8-8@4 | head@8"
            )
        layers = []
        for i, part in enumerate(body.strip().split("-")):
            m = _LAYER_RE.fullmatch(part.strip())
            if m is None or (m[1] is None and any(m.groups()[2:5])):
                raise ArchError(
                    f"summary {text!r}, layer {i}: {part.strip()!r} is neither WIDTH@BITS (dense) "
                    "nor cWIDTHkK[sS][pP]@BITS (conv)"
                )
            conv, width, k, s, p, bits = m.groups()
            if conv:
                layers.append(
                    LayerSpec(int(width), int(bits), "conv", int(k or 1), int(s or 1), int(p or 1))
                )
            else:
                layers.append(LayerSpec(int(width), int(bits)))
        kind = "cnn" if any(layer.kind == "conv" for layer in layers) else "mlp"
        return ArchSpec(kind, tuple(input_shape), output_size, tuple(layers), int(m_head[1]))


_LAYER_RE = re.compile(r"(c)?(\d+)(?:k(\d+))?(?:s(\d+))?(?:p(\d+))?@(\d+)")
_HEAD_RE = re.compile(r"head@(\d+)")


def conv_out_hw(h: int, w: int, layer: LayerSpec) -> tuple[int, int]:
    """Spatial size a spatial layer leaves (its op's output shape), for callers with sizes."""
    from inag.ir.ops import get_op

    _, oh, ow = get_op(layer.kind).out_shape((1, h, w), layer)
    return oh, ow


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchError(f"{name} must be an integer, found {value!r} ({type(value).__name__})")
    if not lo <= value <= hi:
        raise ArchError(f"{name} must be in {lo}..{hi}, found {value}")
