"""The frozen integer model every exporter reads: codes, scales and requantization records.

A :class:`QuantizedNet` is the trained float net pushed once through the rules of
``export.quant``; after that nothing is float except the scales kept for the boundaries and
the manifest. The numpy reference, the ONNX writer, the TVM builder and the C emitter all read
the same object, so they cannot disagree about a weight code or a shift.

Two ways in:

- :meth:`QuantizedNet.load` reads a net file written by ``inag train-net`` (safetensors:
  float weights, biases and activation ranges plus metadata) and checks it thoroughly,
  because it is user input.
- :meth:`QuantizedNet.random` makes a net for any architecture (CNNs too, which the trainer
  cannot train yet) with output scales calibrated on random inputs, so activations neither
  saturate nor vanish: the bit-exactness tests need live codes in every layer.

Layouts: dense weights are ``(in, out)`` (the trainer's layout), conv weights
``(out, in, k, k)``; feature maps are channel-major (C, H, W), so flattening is a no-op
reshape in every backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export import quant
from export.errors import ExportError
from inag.arch import ArchError, ArchSpec
from inag.ir import compute_nodes, lower
from inag.ir.ops import get_op

NET_FORMAT = "inag-qat-net-v1"  # written by inag.train.trainer.train_final (same string)
INPUT_QMAX = 127  # network input codes are clamped to [-127, 127] (symmetric int8)
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class QUnit:
    """One unit (the paper's layer i): dense/conv + bias + ReLU-requantization (+ max-pool).

    ``in_signed`` is true only for the first unit (the int8 network input); every other unit
    reads unsigned post-ReLU codes. The head (``head=True``) has no requantization: its int32
    accumulator is the network output, dequantized as ``acc * s_in * s_w``.
    """

    index: int
    kind: Literal["dense", "conv"]
    bits: int  # B(i): weight bits, and output activation bits of a hidden unit
    in_bits: int
    in_signed: bool
    head: bool
    weight: np.ndarray = field(repr=False)  # int8 codes: dense (in, out); conv (out, in, k, k)
    bias: np.ndarray = field(repr=False)  # int32 codes (out,)
    in_shape: tuple[int, ...]  # what the unit reads (1-D for dense: flattened)
    conv_shape: tuple[int, ...]  # accumulator shape (conv: before the pool)
    out_shape: tuple[int, ...]  # what the unit writes (after the pool)
    s_in: float
    s_w: float
    s_out: float | None  # None for the head
    m0: int | None
    shift: int | None
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    pool: int = 1
    flatten: bool = False  # the input is flattened (C,H,W) -> (C*H*W,) before this unit

    @property
    def out_channels(self) -> int:
        return int(self.bias.shape[0])

    @property
    def qmax(self) -> int:
        """Largest output code (hidden units: 2^b - 1)."""
        return int(quant.act_qmax(self.bits)) if not self.head else INT32_MAX

    @property
    def in_qmax(self) -> int:
        return INPUT_QMAX if self.in_signed else int(quant.act_qmax(self.in_bits))

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weight.shape[1:])) if self.kind == "conv" else self.weight.shape[0]

    def weight_matrix(self) -> np.ndarray:
        """Weights as ``(fan_in, out)`` int8 (conv flattened in (in, ky, kx) order)."""
        if self.kind == "dense":
            return self.weight
        return self.weight.reshape(self.weight.shape[0], -1).T

    def record(self) -> dict[str, Any]:
        """The manifest's per-unit record: everything needed to recompute the unit by hand."""
        out: dict[str, Any] = {
            "unit": self.index,
            "kind": self.kind,
            "head": self.head,
            "bits": self.bits,
            "in_bits": self.in_bits,
            "in_signed": self.in_signed,
            "weight_shape": list(self.weight.shape),
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "s_in": self.s_in,
            "s_w": self.s_w,
            "bias_scale": self.s_in * self.s_w,
        }
        if self.kind == "conv":
            out.update(kernel=self.kernel, stride=self.stride, pad=self.pad, pool=self.pool)
        if self.head:
            out["output"] = "int32 accumulator"
            out["dequant_scale"] = self.s_in * self.s_w
        else:
            out.update(s_out=self.s_out, m0=self.m0, shift=self.shift, qmax=self.qmax)
            out["multiplier"] = (self.m0 or 0) / 2.0 ** (self.shift or 0)
        return out


@dataclass(frozen=True, eq=False)
class QuantizedNet:
    """The integer-only network: input scale, units in order, and where it came from."""

    arch: ArchSpec
    input_scale: float
    units: tuple[QUnit, ...]
    source: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int32_bounds(self)

    @property
    def arch_id(self) -> str:
        return self.arch.arch_id

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.arch.input_shape)

    @property
    def output_size(self) -> int:
        return self.arch.output_size

    @property
    def output_scale(self) -> float:
        head = self.units[-1]
        return head.s_in * head.s_w

    @property
    def bits(self) -> list[int]:
        return [u.bits for u in self.units]

    def records(self) -> list[dict[str, Any]]:
        return [u.record() for u in self.units]

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def from_float(
        arch: ArchSpec,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        act_max: np.ndarray,
        input_scale: float,
        source: Mapping[str, str] | None = None,
    ) -> QuantizedNet:
        """Quantize float parameters by the scheme of ``export.quant`` (what QAT faked).

        ``weights[i]`` is ``(in, out)`` for dense and ``(out, in, k, k)`` for conv units;
        ``act_max[i]`` is the activation range of hidden unit i.
        """
        shapes = unit_shapes(arch)
        if len(weights) != len(shapes) or len(biases) != len(shapes):
            raise ExportError(
                f"{arch.summary()} has {len(shapes)} units; found {len(weights)} weight and "
                f"{len(biases)} bias tensors"
            )
        s_in = float(input_scale)
        units = []
        for i, sh in enumerate(shapes):
            w = np.asarray(weights[i], dtype=np.float64)
            b = np.asarray(biases[i], dtype=np.float64)
            head = i == len(shapes) - 1
            try:
                q_w, s_w = quant.quantize_weights(w, sh["bits"])
                q_b = quant.quantize_bias(b, s_in * s_w)
                if head:
                    s_out, m0, shift = None, None, None
                else:
                    s_out = quant.act_scale(float(act_max[i]), sh["bits"])
                    m0, shift = quant.quantize_multiplier(s_in * s_w / s_out)
            except quant.QuantError as exc:
                raise ExportError(f"unit {i} of {arch.summary()}: {exc}") from None
            units.append(_unit(i, sh, q_w, q_b, s_in, s_w, s_out, m0, shift))
            if s_out is not None:
                s_in = s_out
        return QuantizedNet(arch, float(input_scale), tuple(units), dict(source or {}))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> QuantizedNet:
        """Read and check a net file of ``inag train-net`` (see :func:`read_net_file`)."""
        arch, tensors, meta = read_net_file(path)
        n = arch.depth + 1
        weights = [tensors[f"unit{i}.weight"] for i in range(n)]
        biases = [tensors[f"unit{i}.bias"] for i in range(n)]
        source = {k: meta[k] for k in ("task", "task_kind", "qat_performance") if k in meta}
        source["origin"] = "trained"
        source["net_file"] = Path(path).name
        try:
            return QuantizedNet.from_float(
                arch, weights, biases, tensors["act_max"], float(meta["input_scale"]), source
            )
        except ExportError as exc:  # name the file: its input_scale or tensors made this
            raise ExportError(
                f"{path}: its input_scale ({meta['input_scale']}) and tensors do not make an "
                f"integer model: {exc}"
            ) from None

    @staticmethod
    def random(
        arch: ArchSpec, rng: np.random.Generator, n_calib: int = 256, fill: float = 0.9
    ) -> QuantizedNet:
        """A net with random weights whose output scales are calibrated on random inputs.

        Weights are Gaussian, quantized by the scheme; biases are a fraction of the
        accumulator's spread (so some units start negative and ReLU matters). Each hidden
        unit's multiplier maps the 99th percentile of its positive accumulators on the
        calibration inputs to ``fill * qmax`` — live, unsaturated codes, a few clamped.
        """
        shapes = unit_shapes(arch)
        s_in = 1.0 / INPUT_QMAX  # inputs in [-1, 1]
        a = rng.integers(-INPUT_QMAX, INPUT_QMAX + 1, (n_calib, *arch.input_shape))
        a = a.astype(np.int64)
        units: list[QUnit] = []
        for i, sh in enumerate(shapes):
            head = i == len(shapes) - 1
            w = rng.standard_normal(sh["weight_shape"])
            q_w, s_w = quant.quantize_weights(w, sh["bits"])
            probe = _unit(i, sh, q_w, np.zeros(sh["out"], np.int32), s_in, s_w, None, 1, 1)
            from export.reference import accumulate  # local: reference imports this module

            acc = accumulate(probe, a.reshape(n_calib, *sh["in_shape"]))
            spread = float(np.std(acc)) or 1.0
            q_b = np.round(rng.standard_normal(sh["out"]) * 0.3 * spread).astype(np.int32)
            if head:
                units.append(_unit(i, sh, q_w, q_b, s_in, s_w, None, None, None))
                break
            acc = acc + q_b.reshape((-1,) + (1,) * (acc.ndim - 2))
            # revive channels that (almost) never fire: move their median to zero
            per_ch = np.moveaxis(acc, 1, 0).reshape(sh["out"], -1)
            dead = (per_ch > 0).mean(axis=1) < 0.1
            if dead.any():
                lift = np.zeros(sh["out"], np.int64)
                lift[dead] = 1 - np.median(per_ch[dead], axis=1).astype(np.int64)
                q_b = (q_b + lift).astype(np.int32)
                acc = acc + lift.reshape((-1,) + (1,) * (acc.ndim - 2))
            pos = acc[acc > 0]
            p99 = float(np.percentile(pos, 99)) if pos.size else spread
            qmax = int(quant.act_qmax(sh["bits"]))
            s_out = s_in * s_w * max(p99, 1.0) / (fill * qmax)
            m0, shift = quant.quantize_multiplier(s_in * s_w / s_out)
            unit = _unit(i, sh, q_w, q_b, s_in, s_w, s_out, m0, shift)
            units.append(unit)
            from export.reference import run_unit

            a = run_unit(unit, a.reshape(n_calib, *sh["in_shape"]))
            s_in = s_out
        source = {"origin": "random"}
        return QuantizedNet(arch, 1.0 / INPUT_QMAX, tuple(units), source)


def _unit(
    i: int,
    sh: dict[str, Any],
    q_w: np.ndarray,
    q_b: np.ndarray,
    s_in: float,
    s_w: float,
    s_out: float | None,
    m0: int | None,
    shift: int | None,
) -> QUnit:
    return QUnit(
        index=i,
        kind=sh["kind"],
        bits=sh["bits"],
        in_bits=sh["in_bits"],
        in_signed=i == 0,
        head=sh["head"],
        weight=np.ascontiguousarray(q_w, dtype=np.int8),
        bias=np.ascontiguousarray(q_b, dtype=np.int32),
        in_shape=sh["in_shape"],
        conv_shape=sh["conv_shape"],
        out_shape=sh["out_shape"],
        s_in=float(s_in),
        s_w=float(s_w),
        s_out=None if s_out is None else float(s_out),
        m0=m0,
        shift=shift,
        kernel=sh["kernel"],
        stride=sh["stride"],
        pad=sh["pad"],
        pool=sh["pool"],
        flatten=sh["flatten"],
    )


def unit_shapes(arch: ArchSpec) -> list[dict[str, Any]]:
    """Per-unit shapes and attributes, read from the IR (the one shape authority)."""
    g = lower(arch)
    units = g.graph["units"]
    out = []
    prev_rank = len(arch.input_shape)
    for name in compute_nodes(g):
        node = g.nodes[name]
        u = node["unit"]
        last = g.nodes[units[u][-1]]
        in_shape = tuple(node["in_shape"])
        op = get_op(node["op"])
        spec = node["spec"]
        n_out = spec.width
        head = name == "head.dense"
        wshape = op.weight_shape(in_shape, spec)
        out.append(
            {
                "kind": op.name,
                "bits": node["bits"],
                "in_bits": node["in_bits"],
                "head": head,
                "in_shape": in_shape,
                "conv_shape": tuple(node["out_shape"]),
                "out_shape": tuple(last["out_shape"]),
                "weight_shape": wshape,
                "out": n_out,
                "kernel": node.get("kernel", 1),
                "stride": node.get("stride", 1),
                "pad": node.get("pad", 0),
                "pool": next((g.nodes[n]["pool"] for n in units[u] if "pool" in g.nodes[n]), 1),
                "flatten": not op.spatial and prev_rank > 1,
            }
        )
        prev_rank = len(last["out_shape"])
    return out


def check_int32_bounds(net: QuantizedNet) -> None:
    """Prove statically that no accumulator can leave int32, for any input.

    ``|acc| <= sum_k |w_k| * max|x| + |b|`` per output channel; the backends accumulate in
    int32 (ONNX MatMulInteger, TVM out_dtype int32, C int32_t), so a net that could overflow
    would be computed differently by each. It is refused instead.
    """
    for u in net.units:
        wm = np.abs(u.weight_matrix().astype(np.int64)).sum(axis=0)
        worst = int(np.max(wm * u.in_qmax + np.abs(u.bias.astype(np.int64))))
        if worst > INT32_MAX:
            raise ExportError(
                f"unit {u.index}: an accumulator could reach {worst} > int32 max; the fan-in "
                "or the bias is too large for int32 accumulation"
            )


# ---------------------------------------------------------------------------- net files
def read_net_file(
    path: str | os.PathLike[str],
) -> tuple[ArchSpec, dict[str, np.ndarray], dict[str, str]]:
    """Read a net file and check everything a wrong, corrupt or truncated file could break.

    Returns the architecture, the float32 tensors and the metadata. Every failure is an
    :class:`ExportError` naming the file and what is wrong with it.
    """
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"no net file {str(p)!r} (write one with `inag train-net`)")
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load as st_load
    except ImportError as exc:  # pragma: no cover - safetensors is a core dependency
        raise ExportError("reading net files needs safetensors: pip install safetensors") from exc
    data = p.read_bytes()
    try:
        tensors = st_load(data)
        meta = _read_metadata(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ExportError(
            f"{p}: not a readable safetensors net file (corrupt or truncated?): {exc}"
        ) from None
    where = str(p)
    if meta.get("format") != NET_FORMAT:
        raise ExportError(
            f"{where}: format is {meta.get('format')!r}, expected {NET_FORMAT!r} (a net file "
            "written by `inag train-net`)"
        )
    stored = meta.get(HASH_KEY)
    if stored is not None and stored != net_content_hash(tensors, meta):
        raise ExportError(
            f"{where}: content hash mismatch: the file changed after it was written (a flipped "
            f"byte, an edit); its {HASH_KEY} is {stored[:16]}..., the content hashes to "
            f"{net_content_hash(tensors, meta)[:16]}...; train it again with `inag train-net`"
        )
    for key in ("arch", "input_scale"):
        if key not in meta:
            raise ExportError(f"{where}: metadata has no {key!r}")
    problem = _metadata_problem(meta)
    if problem:
        raise ExportError(f"{where}: metadata {problem}")
    try:
        arch = ArchSpec.from_json(meta["arch"])
    except ArchError as exc:
        raise ExportError(f"{where}: metadata 'arch' is not a valid architecture: {exc}") from None
    if "arch_id" in meta and meta["arch_id"] != arch.arch_id:
        raise ExportError(
            f"{where}: arch_id {meta['arch_id']!r} does not match its architecture "
            f"({arch.arch_id!r})"
        )
    try:
        s_x = float(meta["input_scale"])
    except ValueError:
        bad = meta["input_scale"]
        raise ExportError(f"{where}: input_scale {bad!r} is not a number") from None
    if not (math.isfinite(s_x) and s_x > 0):
        raise ExportError(f"{where}: input_scale must be finite and > 0, found {s_x!r}")
    expected: dict[str, tuple[int, ...]] = {}
    for i, sh in enumerate(unit_shapes(arch)):
        expected[f"unit{i}.weight"] = sh["weight_shape"]
        expected[f"unit{i}.bias"] = (sh["out"],)
    expected["act_max"] = (arch.depth,)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ExportError(
            f"{where}: tensors do not match {arch.summary()}: missing {missing}, unexpected "
            f"{extra}"
        )
    for name, shape in expected.items():
        t = tensors[name]
        if t.dtype != np.float32:
            raise ExportError(f"{where}: tensor {name} must be float32, found {t.dtype}")
        if tuple(t.shape) != shape:
            raise ExportError(
                f"{where}: tensor {name} has shape {tuple(t.shape)}, the architecture "
                f"{arch.summary()} needs {shape}"
            )
        if not np.all(np.isfinite(t)):
            raise ExportError(f"{where}: tensor {name} holds NaN or infinite values")
    if np.any(tensors["act_max"] < 0):
        raise ExportError(f"{where}: act_max must be >= 0 (ranges of post-ReLU activations)")
    return arch, tensors, meta


HASH_KEY = "content_sha256"


def net_content_hash(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> str:
    """SHA-256 of a net file's tensors (name, dtype, shape, bytes) and metadata (but the hash
    itself), in sorted order: what `save_net_file` stores and `read_net_file` checks, so a
    corrupted or edited file is refused instead of exported. Files written before the hash
    existed have none and are read as before."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())
    for key in sorted(k for k in meta if k != HASH_KEY):
        h.update(json.dumps([key, meta[key]]).encode())
    return h.hexdigest()


def _metadata_problem(meta: Mapping[str, str]) -> str:
    """What is wrong with the optional metadata a net file carries into an export's manifest
    ("" if nothing)."""
    if "task_kind" in meta and meta["task_kind"] not in ("regression", "classification"):
        return f"'task_kind' must be 'regression' or 'classification', found {meta['task_kind']!r}"
    if "qat_performance" in meta:
        try:
            ok = math.isfinite(float(meta["qat_performance"]))
        except ValueError:
            ok = False
        if not ok:
            return f"'qat_performance' must be a finite number, found {meta['qat_performance']!r}"
    if "trainer" in meta:
        try:
            ok = isinstance(json.loads(meta["trainer"]), dict)
        except ValueError:
            ok = False
        if not ok:
            return f"'trainer' must be a JSON object of settings, found {meta['trainer'][:60]!r}"
    return ""


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (the numpy API does not return it)."""
    if len(data) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds the file size")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ must map strings to strings")
    return meta


def save_net_file(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]
) -> Path:
    """Write a net file atomically (temp file + rename), so a crash never leaves half a file."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {k: v for k, v in meta.items() if k != HASH_KEY}
    meta[HASH_KEY] = net_content_hash(arrays, meta)
    try:
        save_file(arrays, str(tmp), meta)
        os.replace(tmp, p)
    except (OSError, SafetensorError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = getattr(exc, "strerror", None) or exc
        raise ExportError(f"cannot write net file {str(p)!r}: {why}") from None
    return p
