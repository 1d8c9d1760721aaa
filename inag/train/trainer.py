"""Quantization-aware training of candidate networks: many at once, or one at a time.

The dataset builder trains thousands of small MLPs and CNNs, where PyTorch's per-op overhead
would dominate one-at-a-time training. ``BatchedMLPTrainer`` (despite its name, it trains both
kinds; a chunk may mix them) has two engines with the same rules:

- ``"c"`` (the default where a C compiler exists): ``inag/train/kernels/qat_mlp.c`` trains each
  net alone in one fused call -- register-blocked matmul kernels, the elementwise work done
  on data still in cache, no per-op dispatch -- and runs one net per thread. A net's result
  cannot depend on its companions, its chunk or the thread count.
- ``"torch"``: groups, *per layer*, the nets whose layer has the same (input width, output
  width) on a padding grid chosen per chunk; each group is one ``bmm``, and the weights of
  all nets of a layer live in one flat parameter, so fake quantization, bias handling and
  Adam run in a handful of ops per layer. A net's result can move by float summation order
  with the chunk's padding grid (docs/dataset.md).

CNNs (conv with 'same' padding and a stride, optional max-pool, flatten, dense layers, the dense
head): the C engine trains each alone with ``inag/train/kernels/qat_cnn.c`` (im2col onto the
same register-blocked GEMMs; its docstring says why not a direct convolution); the torch
engine groups the runs whose units have identical shapes (restarts always do) into one
grouped-conv model trained with autograd (:class:`_CNNGroup`). The unit shapes come from
``export.qnet.unit_shapes``, the exporters' own, so training and export cannot disagree.

Every net keeps its own initialization (seeded by ``config.seed`` and its ``arch_id``) and its
own Adam state, and all nets see the same minibatch order (seeded by ``config.seed`` and the
epoch); ``PlainQATMLP`` / ``PlainQATCNN`` + ``train_single`` is the independent one-net
autograd reference both engines are tested against.

The quantization rules are those of ``export.quant`` (Jacob et al. 2017), faked in float.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from export import quant
from inag.arch import ArchSpec
from inag.tasks import TaskData, performance_batch

# progress(done, total): the trainers' progress callback (epochs or trained nets), or None
Progress = Callable[[int, int], None] | None

# Fields added after datasets were first written, with the value every earlier record meant:
# a record without the field reads back as this value, and this value stays out of the hash,
# so the earlier recipes keep their trainer hash.
_LEGACY_FIELDS: dict[str, Any] = {"restart_score": "best"}


# Restarts per architecture when `inag sample` is not told: the fewest that make labels as
# repeatable as the MLP recipe's (repeatability ~0.97, docs/dataset.md). A digits CNN costs
# ~5.5x a data_a MLP per training run, and 4 restarts already reach 0.976 on digits CNNs (16
# on data_a MLPs: 0.972), so a CNN dataset of 1500 rows builds in 12 min on 2 cores, not ~50.
DEFAULT_RESTARTS = {"mlp": 16, "cnn": 4}


@dataclass(frozen=True)
class TrainerConfig:
    """Training hyper-parameters; shared by every candidate of a dataset."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0
    act_ema: float = 0.9  # EMA momentum of the activation range (Jacob et al. 2017)
    seed: int = 0
    schedule: str = "cosine"  # "cosine" (to 0 over the run) or "constant"
    restarts: int = 16  # initializations per arch (DEFAULT_RESTARTS); see restart_score
    # how restarts make one label: "best" -- the test performance of the restart best on
    # validation; "mean" -- the mean test performance over restarts (a diverged one counts 0)
    restart_score: str = "mean"
    quant_delay: float = 0.5  # fraction of steps trained in float before fake quantization

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"invalid trainer config {self}: epochs, batch_size >= 1, lr > 0")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, found {self.restarts}")
        if self.restart_score not in ("best", "mean"):
            raise ValueError(
                f"restart_score must be 'best' or 'mean', found {self.restart_score!r}"
            )
        if not 0.0 <= self.quant_delay < 1.0:
            raise ValueError(f"quant_delay must be in [0, 1), found {self.quant_delay}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', found {self.schedule!r}")

    @classmethod
    def from_record(cls, fields: dict[str, Any]) -> TrainerConfig:
        """The config stored with a dataset or artifact (``asdict`` output).

        Records written before ``restart_score`` existed used the best restart on validation,
        so a record without the field means "best", not today's default.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown trainer setting(s) {unknown} in a stored record; known: {sorted(known)}"
                " (was it written by a newer INAG?)"
            )
        return cls(**{**_LEGACY_FIELDS, **fields})

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) of ``total``.

        Cosine decay to zero ends every candidate at a settled point instead of wherever a
        low-bit net's weights happen to oscillate, which makes its performance reproducible.
        """
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))

    def steps(self, n_train: int) -> int:
        return self.epochs * math.ceil(n_train / self.batch_size)

    def config_hash(self) -> str:
        legacy = _LEGACY_FIELDS.items()
        fields = {k: v for k, v in asdict(self).items() if (k, v) not in legacy}
        text = json.dumps({"trainer": "qat-v1", **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainResult:
    arch_id: str
    status: str  # "ok" | "failed"
    performance: float
    final_loss: float
    reason: str = ""
    seconds: float = 0.0


def net_seed(seed: int, arch_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{arch_id}".encode()).hexdigest()[:15], 16)


def init_dense(gen: torch.Generator, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's nn.Linear default init, drawn from a per-net generator, as (in, out)."""
    w, b = init_dense_np(gen, n_in, n_out)
    return torch.from_numpy(w), torch.from_numpy(b)


def init_dense_np(gen: torch.Generator, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``init_dense`` as float32 arrays: U(-1/sqrt(n_in), 1/sqrt(n_in)) from ``gen``'s stream.

    The arithmetic is numpy's (float32, the same IEEE operations torch would do, so the same
    bits) because a torch op costs microseconds of dispatch and the C engine initializes
    thousands of nets per chunk.
    """
    bound = np.float32(1.0 / math.sqrt(n_in))
    one, two = np.float32(1), np.float32(2)
    w = torch.rand(n_in, n_out, generator=gen).numpy()
    b = torch.rand(n_out, generator=gen).numpy()
    return (w * two - one) * bound, (b * two - one) * bound


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def _widths(arch: ArchSpec) -> list[int]:
    if arch.kind != "mlp":
        raise ValueError(f"the batched trainer trains MLPs; {arch.summary()} is a {arch.kind}")
    return [arch.input_shape[0], *(layer.width for layer in arch.layers), arch.output_size]


def _net_macs(ws: Sequence[int]) -> int:
    """Multiply-accumulates of one sample through dense layers of widths ``ws``."""
    return sum(int(a) * int(b) for a, b in zip(ws, ws[1:], strict=False))


def _loss_per_net(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of every net: ``out`` is (k, n, out_size)."""
    if kind == "regression":
        return ((out[..., 0] - y) ** 2).mean(dim=1)
    k, n, c = out.shape
    ce = nn.functional.cross_entropy(out.reshape(k * n, c), y.repeat(k), reduction="none")
    return ce.view(k, n).mean(dim=1)


# ---------------------------------------------------------------------------- CNN units
@dataclass(frozen=True)
class _Unit:
    """One unit (the paper's layer i) of a net as every engine computes it.

    Shapes come from ``export.qnet.unit_shapes`` (which reads the IR's op definitions), so the
    trainer and the exporters cannot disagree about a padding, a stride or a pool.
    """

    spatial: bool  # a convolution over (C, H, W); else dense over the flattened input
    in_shape: tuple[int, ...]
    src_shape: tuple[int, ...]  # the tensor it reads before any flatten: (C, H, W) or (n,)
    weight_shape: tuple[int, ...]  # conv (out, in, k, k); dense (in, out): the export layout
    out: int  # output channels / width
    conv_shape: tuple[int, ...]  # what the conv / matmul writes (before the pool)
    out_shape: tuple[int, ...]  # what the unit writes (after the pool)
    kernel: int
    stride: int
    pad: int
    pool: int
    bits: int
    head: bool

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape) // self.out

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one sample: every weight once per output position."""
        positions = math.prod(self.conv_shape[1:]) if self.spatial else 1
        return math.prod(self.weight_shape) * positions


@functools.lru_cache(maxsize=4096)
def _units(arch: ArchSpec) -> tuple[_Unit, ...]:
    """The units of ``arch`` in order (hidden layers, then the head)."""
    from export.qnet import unit_shapes
    from inag.ir.ops import get_op

    shapes = unit_shapes(arch)
    srcs = [tuple(arch.input_shape)] + [tuple(sh["out_shape"]) for sh in shapes[:-1]]
    return tuple(
        _Unit(
            spatial=get_op(sh["kind"]).spatial,
            in_shape=tuple(sh["in_shape"]),
            src_shape=src,
            weight_shape=tuple(sh["weight_shape"]),
            out=int(sh["out"]),
            conv_shape=tuple(sh["conv_shape"]),
            out_shape=tuple(sh["out_shape"]),
            kernel=int(sh["kernel"]),
            stride=int(sh["stride"]),
            pad=int(sh["pad"]),
            pool=int(sh["pool"]),
            bits=int(sh["bits"]),
            head=bool(sh["head"]),
        )
        for sh, src in zip(shapes, srcs, strict=True)
    )


def arch_macs(arch: ArchSpec) -> int:
    """Multiply-accumulates of one sample through ``arch`` (MLP or CNN, true shapes)."""
    if arch.kind == "mlp":
        return _net_macs(_widths(arch))
    return sum(u.macs for u in _units(arch))


def train_flops(arch: ArchSpec) -> int:
    """Flops one sample costs in one training step: forward and weight gradient of every unit
    (2 + 2 per MAC), input gradient of every unit but the first (2 per MAC): nobody needs the
    gradient with respect to the data, and no engine, the plain loop included, computes it.
    This is the work any engine must do; benchmarks divide it by time for useful GFLOP/s."""
    if arch.kind == "mlp":
        ws = _widths(arch)
        first = int(ws[0]) * int(ws[1])
        total = _net_macs(ws)
    else:
        units = _units(arch)
        first, total = units[0].macs, sum(u.macs for u in units)
    return 6 * total - 2 * first


def init_unit_np(gen: torch.Generator, u: _Unit) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's default init of the unit's layer (nn.Conv2d / nn.Linear alike):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights, then biases, from ``gen``'s stream, in the
    export layout. For a dense unit it is :func:`init_dense_np`, number for number."""
    bound = np.float32(1.0 / math.sqrt(u.fan_in))
    one, two = np.float32(1), np.float32(2)
    w = torch.rand(*u.weight_shape, generator=gen).numpy()
    b = torch.rand(u.out, generator=gen).numpy()
    return (w * two - one) * bound, (b * two - one) * bound


def _c_unit_row(u: _Unit) -> list[int]:
    """The C kernel's 12 shape ints of a unit (qat_cnn.c's ``Unit``); a dense unit is a 1x1
    conv over a 1x1 map whose channels are the flattened input."""
    if u.spatial:
        cin, h, w = u.in_shape
        _, oh, ow = u.conv_shape
        _, ph, pw = u.out_shape
        return [cin, h, w, u.out, u.kernel, u.stride, u.pad, oh, ow, u.pool, ph, pw]
    return [math.prod(u.in_shape), 1, 1, u.out, 1, 1, 0, 1, 1, 1, 1, 1]


def _c_weight(u: _Unit, w: np.ndarray) -> np.ndarray:
    """A weight in the export layout -> the C kernel's (fan_in, out) matrix: conv rows in
    (ky, kx, ci) order (im2col of NHWC maps); a dense unit that flattens a feature map has
    its rows permuted from the export's (c, h, w) order to the kernel's (h, w, c)."""
    if u.spatial:
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, u.out))
    if len(u.src_shape) == 3:
        c, h, wd = u.src_shape
        return np.ascontiguousarray(w.reshape(c, h, wd, u.out).transpose(1, 2, 0, 3)).reshape(
            -1, u.out
        )
    return w


def _to_nhwc(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Flat (N, C*H*W) samples in channel-major order -> contiguous NHWC float32."""
    return np.ascontiguousarray(x.reshape(len(x), *shape).transpose(0, 2, 3, 1), np.float32)


def check_input(arch: ArchSpec, task: TaskData) -> None:
    """Refuse an arch whose input does not match the task's, naming both shapes.

    A CNN reads the task's samples reshaped to its (C, H, W): a task that gives the same
    number of values in another shape (a flat 64-vector for 1x8x8) is accepted, anything else
    is an error (a CNN bound to data_a, a 3-channel space on 1-channel images)."""
    n_arch, n_task = math.prod(arch.input_shape), math.prod(task.input_shape)
    if n_arch != n_task:
        shape = "x".join(map(str, arch.input_shape))
        raise ValueError(
            f"{arch.summary()} ({arch.kind}) reads inputs of shape {shape} ({n_arch} values); "
            f"task {task.name!r} gives {'x'.join(map(str, task.input_shape))} ({n_task} values)"
        )


def training_bytes(arch: ArchSpec, batch_size: int) -> int:
    """What training one net of ``arch`` holds in memory, roughly: its parameters six times
    (weights, their fake-quantized copy and transpose, gradient, Adam's m and v) and, per
    sample of the minibatch, every unit's conv output three times (output, mask or pool
    indices, gradient), all float32. An estimate for refusing absurd nets, not a budget."""
    if arch.kind == "mlp":
        ws = _widths(arch)
        params = _net_macs(ws) + sum(ws[1:])
        acts = sum(ws[1:])
    else:
        units = _units(arch)
        params = sum(math.prod(u.weight_shape) + u.out for u in units)
        acts = sum(math.prod(u.conv_shape) if u.spatial else u.out for u in units)
    return 4 * (6 * params + 3 * batch_size * acts)


def memory_limit_bytes() -> int:
    """Half of this machine's physical memory: the most one net may take to train."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf: a 16 GiB machine
        return 8 << 30


def check_size(arch: ArchSpec, batch_size: int, limit_bytes: int | None = None) -> None:
    """Refuse a net too large to train here before anything is allocated, naming its size:
    a width of 2^20 is a valid ``LayerSpec`` but would ask for terabytes."""
    need = training_bytes(arch, batch_size)
    limit = memory_limit_bytes() if limit_bytes is None else limit_bytes
    if need > limit:
        raise ValueError(
            f"{arch.summary()} is too large to train here: ~{need / 2**30:.3g} GiB for its "
            f"parameters and a minibatch of {batch_size}, above the {limit / 2**30:.3g} GiB "
            "limit (half of this machine's memory); use narrower or fewer layers"
        )


# ---------------------------------------------------------------------------- batched
# Cost model that picks the padding grid of a chunk (see choose_grid): seconds of dispatch per
# class and step (forward + backward), and the bmm throughput on these shapes (2 cores here).
CLASS_OVERHEAD_S = 60e-6
BMM_FLOPS = 60e9


def choose_grid(widths: Sequence[Sequence[int]], bsz: int) -> tuple[int, ...]:
    """The set of padded hidden widths that minimizes estimated step time for a chunk.

    Exact shapes need one bmm per distinct (layer, in, out) — many tiny calls for a varied
    chunk; rounding widths up to a coarser grid merges calls but computes padding. Every
    subset of the chunk's hidden widths that keeps the largest is scored with
    ``classes * CLASS_OVERHEAD_S + padded_flops / BMM_FLOPS``.
    """
    hidden = sorted({w for ws in widths for w in ws[1:-1]})
    if not hidden:
        return ()
    best: tuple[float, tuple[int, ...]] | None = None
    rest = hidden[:-1]
    for mask in range(1 << len(rest)):
        grid = tuple([w for j, w in enumerate(rest) if mask >> j & 1] + [hidden[-1]])
        classes = set()
        flops = 0
        for ws in widths:
            pw = pad_widths(ws, grid)
            last = len(ws) - 2
            for li in range(len(ws) - 1):
                classes.add((li, li == last, pw[li], pw[li + 1]))
                flops += 6 * bsz * pw[li] * pw[li + 1]
        cost = len(classes) * CLASS_OVERHEAD_S + flops / BMM_FLOPS
        if best is None or cost < best[0]:
            best = (cost, grid)
    assert best is not None
    return best[1]


def pad_widths(ws: Sequence[int], grid: Sequence[int]) -> list[int]:
    """Hidden widths rounded up to ``grid``; input and output widths stay as they are."""
    return [ws[0], *(min(g for g in grid if g >= w) for w in ws[1:-1]), ws[-1]]


@dataclass
class _Class:
    """Nets whose layer l has the same (head?, padded out width, padded in width)."""

    head: bool
    w_out: int
    w_in: int
    start: int  # first position in the layer's member order
    k: int
    w_off: int  # offset of its weights in the flat parameter vector
    b_off: int  # offset of its biases in the flat bias part
    rows: torch.Tensor | None = None  # rows of the previous layer's width group (None: slice)
    row_slice: tuple[int, int] = (0, 0)


class _Plan:
    """Static layout of one chunk of nets: padded widths, classes per layer, offsets."""

    def __init__(
        self,
        archs: Sequence[ArchSpec],
        seed: int,
        bsz: int,
        init_keys: Sequence[str] | None = None,
    ):
        self.n = len(archs)
        true_w = [_widths(a) for a in archs]
        self.grid = choose_grid(true_w, bsz)
        widths = [pad_widths(ws, self.grid) for ws in true_w]
        bits = [[layer.bits for layer in a.layers] + [a.output_bits] for a in archs]
        depth = [a.depth for a in archs]
        self.out_size = widths[0][-1]
        self.n_layers = max(depth) + 1
        self.layers: list[list[_Class]] = []
        self.members: list[list[int]] = []  # net ids per layer, class order
        self.n_hidden: list[int] = []  # non-head prefix length per layer
        self.groups: list[dict[int, tuple[int, int]]] = []  # w_out -> (start, k) in prefix
        self.head_order: list[int] = []
        self.prev_pos: list[torch.Tensor] = []
        self.useful_macs = sum(_net_macs(ws) for ws in true_w)
        self.padded_macs = sum(_net_macs(ws) for ws in widths)
        w_chunks: list[torch.Tensor] = []
        b_chunks: list[torch.Tensor] = []
        q_w: list[float] = []
        inits = []
        for a, ws in zip(archs, true_w, strict=True):
            key = a.arch_id if init_keys is None else init_keys[len(inits)]
            gen = torch.Generator().manual_seed(net_seed(seed, key))
            inits.append([init_dense(gen, ws[j], ws[j + 1]) for j in range(len(ws) - 1)])
        w_off = b_off = 0
        for li in range(self.n_layers):
            nets = [i for i in range(self.n) if depth[i] >= li]
            key = {i: (depth[i] == li, widths[i][li + 1], widths[i][li]) for i in nets}
            nxt = {
                i: (depth[i] == li + 1, widths[i][li + 2]) if depth[i] > li else (True, 0)
                for i in nets
            }
            # within a class, order nets by their next-layer class so later gathers are slices
            nets.sort(key=lambda i: (key[i], nxt[i], i))
            classes: list[_Class] = []
            start = 0
            while start < len(nets):
                k = 1
                while start + k < len(nets) and key[nets[start + k]] == key[nets[start]]:
                    k += 1
                head, w_out, w_in = key[nets[start]]
                classes.append(_Class(head, w_out, w_in, start, k, w_off, b_off))
                for i in nets[start : start + k]:
                    w, b = inits[i][li]
                    wp = torch.zeros(w_in, w_out)
                    wp[: w.shape[0], : w.shape[1]] = w
                    bp = torch.zeros(w_out)
                    bp[: b.shape[0]] = b
                    w_chunks.append(wp.reshape(-1))
                    b_chunks.append(bp)
                    q_w.append(float(quant.weight_qmax(bits[i][li])))
                w_off += k * w_in * w_out
                b_off += k * w_out
                start += k
            groups: dict[int, tuple[int, int]] = {}
            for c in classes:
                if not c.head:
                    s0, k0 = groups.get(c.w_out, (c.start, 0))
                    groups[c.w_out] = (s0, k0 + c.k)
            self.head_order += [
                i for c in classes if c.head for i in nets[c.start : c.start + c.k]
            ]
            if li > 0:
                prev_nets = self.members[-1]
                pos_prev = {g: p for p, g in enumerate(prev_nets)}
                for c in classes:
                    g0, _ = self.groups[-1][c.w_in]
                    rows = [pos_prev[i] - g0 for i in nets[c.start : c.start + c.k]]
                    if rows == list(range(rows[0], rows[0] + c.k)):
                        c.row_slice = (rows[0], rows[0] + c.k)
                    else:
                        c.rows = torch.tensor(rows)
                self.prev_pos.append(torch.tensor([pos_prev[i] for i in nets]))
            else:
                self.prev_pos.append(torch.zeros(0, dtype=torch.long))
            self.layers.append(classes)
            self.members.append(nets)
            self.n_hidden.append(sum(c.k for c in classes if not c.head))
            self.groups.append(groups)
        self.n_weights = w_off
        self.params = torch.cat(w_chunks + b_chunks).contiguous()
        self.q_w = torch.tensor(q_w)
        sizes = [c.w_in * c.w_out for classes in self.layers for c in classes for _ in range(c.k)]
        self.w_owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.q_w_el = self.q_w[self.w_owner]
        self.head_pos = torch.empty(self.n, dtype=torch.long)
        self.head_pos[torch.tensor(self.head_order)] = torch.arange(self.n)
        self.head_index = torch.tensor(self.head_order)
        # per layer: activation code bound per hidden net, bias owner index, offsets
        self.q_a = [
            torch.tensor(
                [float(quant.act_qmax(bits[i][li])) for i in self.members[li][: self.n_hidden[li]]]
            )
            for li in range(self.n_layers)
        ]
        self.bias_owner = []
        self.layer_b = []
        self.net_off = []
        off = 0
        for classes in self.layers:
            owner = [
                p for c in classes for p in range(c.start, c.start + c.k) for _ in range(c.w_out)
            ]
            self.bias_owner.append(torch.tensor(owner))
            lo = classes[0].b_off
            hi = classes[-1].b_off + classes[-1].k * classes[-1].w_out
            self.layer_b.append((lo, hi))
            n_li = sum(c.k for c in classes)
            self.net_off.append((off, off + n_li))
            off += n_li

    def group_items(self, li: int) -> list[tuple[int, int, int]]:
        """(width, first position, count) of the width groups of layer li, in buffer order."""
        return sorted(((w, s0, k) for w, (s0, k) in self.groups[li].items()), key=lambda t: t[1])


class _Buffers:
    """Preallocated activations and gradients of one batch size, with per-class views."""

    def __init__(self, plan: _Plan, st: _State, bsz: int):
        self.bsz = bsz
        self.pred = torch.empty(plan.n, bsz, plan.out_size)
        self.z: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.dy: list[torch.Tensor] = []
        self.masks: list[list[torch.Tensor]] = []
        # per layer and width group: (z, y, dy) views (k, bsz * w) and the group's net slice
        self.group_views: list[
            list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]]
        ] = []
        self.cls: list[list[dict[str, Any]]] = []
        for li in range(plan.n_layers):
            items = plan.group_items(li)
            size = sum(k * bsz * w for w, _, k in items)
            z, y, dy = torch.empty(size), torch.empty(size), torch.empty(size)
            offs, off = {}, 0
            gviews = []
            for w, s0, k in items:
                offs[w] = off
                sl = slice(off, off + k * bsz * w)
                gviews.append(
                    (
                        z[sl].view(k, bsz * w),
                        y[sl].view(k, bsz * w),
                        dy[sl].view(k, bsz * w),
                        s0,
                        k,
                    )
                )
                off += k * bsz * w
            # float 0/1 masks: a comparison into float and a float multiply are ~5x faster
            # than into bool and multiplying by a bool tensor (which converts it every time)
            self.masks.append([torch.empty(k, bsz * w) for w, _, k in items])
            self.z.append(z)
            self.y.append(y)
            self.dy.append(dy)
            self.group_views.append(gviews)
            fill: dict[int, int] = {}
            views = []
            lo = plan.layer_b[li][0]
            for c in plan.layers[li]:
                d: dict[str, Any] = {}
                n_w = c.k * c.w_in * c.w_out
                d["wq"] = st.wq[c.w_off : c.w_off + n_w].view(c.k, c.w_in, c.w_out)
                d["gw"] = st.grad[c.w_off : c.w_off + n_w].view(c.k, c.w_in, c.w_out)
                gb = st.grad[plan.n_weights + c.b_off : plan.n_weights + c.b_off + c.k * c.w_out]
                d["gb"] = gb.view(c.k, c.w_out)
                d["bq"] = st.bq[c.b_off : c.b_off + c.k * c.w_out].view(c.k, 1, c.w_out)
                if not c.head:
                    base = offs[c.w_out] + fill.get(c.w_out, 0)
                    fill[c.w_out] = fill.get(c.w_out, 0) + c.k * bsz * c.w_out
                    d["out"] = z[base : base + c.k * bsz * c.w_out].view(c.k, bsz, c.w_out)
                    d["dz"] = dy[base : base + c.k * bsz * c.w_out].view(c.k, bsz, c.w_out)
                views.append(d)
            del lo
            self.cls.append(views)
        # head outputs: contiguous in head order across layers
        h = 0
        for li in range(plan.n_layers):
            for c, d in zip(plan.layers[li], self.cls[li], strict=True):
                if c.head:
                    d["out"] = self.pred[h : h + c.k]
                    d["h"] = (h, h + c.k)
                    h += c.k
        # inputs (forward) and input-gradient targets (backward) of layers >= 1
        for li in range(1, plan.n_layers):
            prev_items = {w: (s0, k) for w, s0, k in plan.group_items(li - 1)}
            offs, off = {}, 0
            for w, _, k in plan.group_items(li - 1):
                offs[w] = off
                off += k * bsz * w
            for c, d in zip(plan.layers[li], self.cls[li], strict=True):
                _, g_k = prev_items[c.w_in]
                o = offs[c.w_in]
                ysrc = self.y[li - 1][o : o + g_k * bsz * c.w_in].view(g_k, bsz, c.w_in)
                dsrc = self.dy[li - 1][o : o + g_k * bsz * c.w_in].view(g_k, bsz, c.w_in)
                if c.rows is None:
                    r0, r1 = c.row_slice
                    d["a"] = ysrc[r0:r1]
                    d["da"] = dsrc[r0:r1]
                else:
                    d["a_src"] = ysrc
                    d["a"] = torch.empty(c.k, bsz, c.w_in)
                    d["da_dst"] = dsrc
                    d["da"] = torch.empty(c.k, bsz, c.w_in)


def _affine(b: torch.Tensor, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    """``out = b + a @ w`` per net, with every net's result independent of its companions.

    A bmm with one output column takes a gemv path whose result depends on how many nets
    share the call, so a net's training would depend on its chunk (and a resumed build would
    write other numbers than an uninterrupted one). A row-wise product and sum does not.
    """
    if w.shape[-1] == 1:
        torch.sum(a * w.transpose(1, 2), dim=-1, keepdim=True, out=out).add_(b)
    else:
        torch.baddbmm(b, a, w, out=out)


ENGINES = ("auto", "c", "torch")


def resolve_engine(engine: str) -> str:
    """The engine ``engine`` names: "auto" is "c" where a C compiler builds it, else "torch"."""
    if engine not in ENGINES:
        raise ValueError(f"unknown trainer engine {engine!r}; available: {', '.join(ENGINES)}")
    if engine == "auto":
        from inag.train import kernels

        return "c" if kernels.available() else "torch"
    if engine == "c":
        from inag.train import kernels

        kernels.qat_library()  # raises KernelUnavailable with the compiler's message
    return engine


@dataclass(frozen=True)
class Runs:
    """Per training run (arch-major, ``restarts`` per arch): test and validation
    performance, last-epoch mean loss, and the failure reason ("" if it trained)."""

    test: np.ndarray
    val: np.ndarray
    loss: np.ndarray
    failed: list[str]


class BatchedMLPTrainer:
    """Train many MLP candidates of one task together (see module docstring).

    In both engines forward and backward are written out by hand (the straight-through
    estimators make them short), without autograd's per-op bookkeeping. ``threads``: nets
    trained at once by the C engine (default: torch's thread count).
    """

    def __init__(
        self,
        task: TaskData,
        config: TrainerConfig,
        engine: str = "auto",
        threads: int | None = None,
    ):
        self.task = task
        self.config = config
        self.engine = resolve_engine(engine)
        # the C engine trains one net per thread; the torch engine uses torch's intra-op pool
        self.threads = threads or torch.get_num_threads()
        x_tr = task.x_train.reshape(len(task.x_train), -1)
        self.s_x = quant.input_scale(x_tr)
        self.x_train = self._quant_input(x_tr)
        self.x_test = self._quant_input(task.x_test.reshape(len(task.x_test), -1))
        self.x_val = self._quant_input(task.x_val.reshape(len(task.x_val), -1))
        ydt = torch.float32 if task.kind == "regression" else torch.int64
        self.y_train = torch.tensor(np.array(task.y_train), dtype=ydt)
        self.last_plan: _Plan | None = None

    def _quant_input(self, x: np.ndarray) -> torch.Tensor:
        q = quant.quantize_input(x, self.s_x).astype(np.float32)
        return torch.from_numpy(q * np.float32(self.s_x))

    # ------------------------------------------------------------------ public
    def train(self, archs: Sequence[ArchSpec], progress: Progress = None) -> list[TrainResult]:
        """Train ``archs`` together; one result per arch, in order.

        With ``config.restarts`` > 1 every arch is trained from that many initializations, and
        ``config.restart_score`` turns them into one label: their mean test performance
        ("mean", the expected result of one training run) or the test performance of the one
        best on validation ("best"). Either way the label describes the *architecture*, not
        one lucky or unlucky initialization; the mean is the more reproducible of the two
        (docs/dataset.md). ``progress(done, total)`` counts epochs (torch engine) or
        trained nets (C engine).
        """
        t0 = time.perf_counter()
        r = self.config.restarts
        runs = self.train_runs(
            archs, progress, validation=r > 1 and self.config.restart_score == "best"
        )
        perf, val, losses, failed = runs.test, runs.val, runs.loss, runs.failed
        dt = (time.perf_counter() - t0) / max(len(archs), 1)
        out = []
        for i, a in enumerate(archs):
            idx = [i * r + j for j in range(r) if not failed[i * r + j]]
            if not idx:
                out.append(TrainResult(a.arch_id, "failed", 0.0, float("nan"), failed[i * r], dt))
                continue
            if self.config.restart_score == "mean":
                score = float(sum(perf[j] for j in idx)) / r
                loss = float(np.mean([losses[j] for j in idx]))
            else:
                best = max(idx, key=lambda j: (val[j], -j))
                score, loss = float(perf[best]), float(losses[best])
            out.append(TrainResult(a.arch_id, "ok", score, loss, "", dt))
        return out

    def train_runs(
        self,
        archs: Sequence[ArchSpec],
        progress: Progress = None,
        validation: bool = True,
    ) -> Runs:
        """Every training run of ``archs`` x ``restarts`` (arch-major), before restarts are
        reduced to one label: restart j of an arch starts from the init keyed ``arch_id#j``
        (restart 0 from the single-run init)."""
        r = self.config.restarts
        runs = [a for a in archs for _ in range(r)]
        keys = [a.arch_id if j == 0 else f"{a.arch_id}#{j}" for a in archs for j in range(r)]
        for a in archs:
            check_input(a, self.task)  # refuses a mismatched input before any work
            check_size(a, self.config.batch_size)
        if self.engine == "c":
            return self._runs_native(runs, keys, progress, validation)
        if all(a.kind == "mlp" for a in runs):
            return self._runs_torch_mlp(runs, keys, progress, validation)
        out = Runs(np.zeros(len(runs)), np.zeros(len(runs)), np.zeros(len(runs)), [""] * len(runs))
        for kind, fit in (("mlp", self._runs_torch_mlp), ("cnn", self._runs_torch_cnn)):
            idx = [i for i, a in enumerate(runs) if a.kind == kind]
            if not idx:
                continue
            part = fit([runs[i] for i in idx], [keys[i] for i in idx], progress, validation)
            for j, i in enumerate(idx):
                out.test[i], out.val[i], out.loss[i] = part.test[j], part.val[j], part.loss[j]
                out.failed[i] = part.failed[j]
        return out

    def _runs_torch_mlp(
        self, runs: Sequence[ArchSpec], keys: Sequence[str], progress: Progress, validation: bool
    ) -> Runs:
        """MLP runs with the torch engine: one padded, grouped plan (see :class:`_Plan`)."""
        plan = _Plan(runs, self.config.seed, min(self.config.batch_size, len(self.x_train)), keys)
        self.last_plan = plan
        st = _State(plan)
        losses, failed = self._fit(plan, st, progress)
        test = self._evaluate(plan, st, self.x_test, self.task.y_test)
        val = (
            self._evaluate(plan, st, self.x_val, self.task.y_val)
            if validation
            else np.zeros(plan.n)
        )
        return Runs(test, val, losses, failed)

    # ------------------------------------------------------------------ C engine
    def _runs_native(
        self, runs: Sequence[ArchSpec], keys: Sequence[str], progress: Progress, validation: bool
    ) -> Runs:
        """Each run trained alone by the fused C kernel, ``self.threads`` runs at a time."""
        from concurrent.futures import ThreadPoolExecutor

        from inag.train import kernels

        lib = kernels.qat_library()
        cfg, task = self.config, self.task
        n = len(self.x_train)
        x = np.ascontiguousarray(self.x_train.numpy(), dtype=np.float32)
        perm = np.stack([epoch_order(cfg.seed, e, n).numpy() for e in range(cfg.epochs)])
        perm = np.ascontiguousarray(perm, dtype=np.int32)
        total = cfg.steps(n)
        lr = np.array([cfg.lr_at(s, total) for s in range(total)], dtype=np.float32)
        quant_start = math.ceil(cfg.quant_delay * total)  # first step with step >= delay*total
        if task.kind == "regression":
            y_reg, y_cls = np.ascontiguousarray(self.y_train.numpy(), dtype=np.float32), None
        else:
            y_reg, y_cls = None, np.ascontiguousarray(self.y_train.numpy(), dtype=np.int64)
        evals = [(self.x_test, task.y_test)] + ([(self.x_val, task.y_val)] if validation else [])
        x_eval = [np.ascontiguousarray(xe.numpy(), dtype=np.float32) for xe, _ in evals]
        n_out = task.output_size if task.kind != "regression" else 1
        preds = [np.zeros((len(runs), len(xe), n_out), np.float32) for xe in x_eval]
        losses = np.zeros(len(runs))
        failed = [""] * len(runs)

        # CNNs read NHWC feature maps (the kernel's layout), one copy per input shape
        nhwc: dict[tuple[int, ...], tuple[np.ndarray, list[np.ndarray]]] = {}
        for a in runs:
            if a.kind == "cnn" and a.input_shape not in nhwc:
                nhwc[a.input_shape] = (
                    _to_nhwc(x, a.input_shape),
                    [_to_nhwc(xe, a.input_shape) for xe in x_eval],
                )

        def prepare(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            """Shapes (MLP: widths; CNN: a row of 12 ints per unit), weight / activation
            code bounds and initial parameters of run i, in the kernel's layout."""
            a = runs[i]
            gen = torch.Generator().manual_seed(net_seed(cfg.seed, keys[i]))
            parts = []
            if a.kind == "cnn":
                units = _units(a)
                for u in units:
                    w, b = init_unit_np(gen, u)
                    parts += [_c_weight(u, w).reshape(-1), b]
                shape = np.array([_c_unit_row(u) for u in units], np.int32)
            else:
                ws = _widths(a)
                for j in range(len(ws) - 1):
                    w, b = init_dense_np(gen, ws[j], ws[j + 1])
                    parts += [w.reshape(-1), b]
                shape = np.array(ws, np.int32)
            bits = [layer.bits for layer in a.layers] + [a.output_bits]
            return (
                shape,
                np.array([quant.weight_qmax(b) for b in bits], np.int32),
                np.array([quant.act_qmax(b) for b in bits], np.int32),
                np.ascontiguousarray(np.concatenate(parts), dtype=np.float32),
            )

        def ptr(arr: np.ndarray | None) -> int | None:
            return None if arr is None else arr.ctypes.data

        def one(i: int) -> None:
            # prepared here, in the pool: one thread's Python work overlaps another's C call
            shape, w_q, a_q, params = prepare(i)
            L = len(w_q)
            act_max = np.zeros(L, np.float32)
            ep_loss = np.zeros(cfg.epochs, np.float32)
            if runs[i].kind == "cnn":
                train, predict = lib.inag_qat_train_cnn, lib.inag_qat_predict_cnn
                xt, xe_all = nhwc[runs[i].input_shape]
            else:
                train, predict = lib.inag_qat_train, lib.inag_qat_predict
                xt, xe_all = x, x_eval
            status = train(
                L, ptr(shape), ptr(w_q), ptr(a_q), ptr(params), ptr(act_max), self.s_x,
                ptr(xt), ptr(y_reg), ptr(y_cls), n, ptr(perm), cfg.epochs, cfg.batch_size,
                ptr(lr), quant_start, cfg.act_ema, cfg.weight_decay, ptr(ep_loss),
            )  # fmt: skip
            if status == -2:
                raise MemoryError("the C trainer could not allocate its buffers")
            if status >= 0:
                failed[i] = f"diverged: non-finite loss at epoch {status + 1}"
                return
            losses[i] = float(ep_loss[-1])
            for xe, out in zip(xe_all, preds, strict=True):
                predict(
                    L, ptr(shape), ptr(w_q), ptr(a_q), ptr(params), ptr(act_max), self.s_x,
                    ptr(xe), len(xe), cfg.batch_size, ptr(out[i]),
                )  # fmt: skip

        # big nets first, so the pool does not end on one long straggler
        order = sorted(range(len(runs)), key=lambda i: -arch_macs(runs[i]))
        done = 0
        with ThreadPoolExecutor(max(1, self.threads)) as ex:
            for _ in ex.map(one, order):
                done += 1
                if progress is not None:
                    progress(done, len(runs))
        perf = []
        for (_, y), out in zip(evals, preds, strict=True):
            o = out[..., 0] if task.kind == "regression" else out
            perf.append(performance_batch(task.kind, np.asarray(y), o))
        val = perf[1] if validation else np.zeros(len(runs))
        return Runs(perf[0], val, losses, failed)

    # ------------------------------------------------------------------ torch engine, CNNs
    def _runs_torch_cnn(
        self, runs: Sequence[ArchSpec], keys: Sequence[str], progress: Progress, validation: bool
    ) -> Runs:
        """CNN runs with the torch engine: runs whose units have identical shapes (they may
        differ in bits, and restarts always share shapes) form a group, trained as one model
        (:class:`_CNNGroup`) with autograd; a group is split where its activations would
        pass ``GROUP_FLOATS``."""
        bsz = min(self.config.batch_size, len(self.x_train))
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, a in enumerate(runs):
            groups.setdefault(_shape_key(a), []).append(i)
        out = Runs(np.zeros(len(runs)), np.zeros(len(runs)), np.zeros(len(runs)), [""] * len(runs))
        done = 0
        for members in groups.values():
            cap = max(1, GROUP_FLOATS // (bsz * _act_floats(runs[members[0]])))
            for s0 in range(0, len(members), cap):
                part = members[s0 : s0 + cap]
                res = self._fit_cnn_group(
                    [runs[i] for i in part], [keys[i] for i in part], validation
                )
                for j, i in enumerate(part):
                    out.test[i], out.val[i], out.loss[i] = res.test[j], res.val[j], res.loss[j]
                    out.failed[i] = res.failed[j]
                done += len(part)
                if progress is not None:
                    progress(done, len(runs))
        return out

    def _fit_cnn_group(
        self, archs: Sequence[ArchSpec], keys: Sequence[str], validation: bool
    ) -> Runs:
        """Train one group of same-shape CNNs together: the plain loop's recipe, one loss per
        net summed (each net's gradient is its own loss's), one Adam (elementwise)."""
        cfg, task = self.config, self.task
        k = len(archs)
        model = _CNNGroup(archs, keys, cfg.seed, self.s_x, cfg.act_ema)
        opt = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False
        )
        shape = archs[0].input_shape
        n = len(self.x_train)
        x_train = self.x_train.reshape(n, *shape)
        alive = torch.ones(k, dtype=torch.bool)
        failed = [""] * k
        total_steps, step = cfg.steps(n), 0
        last = torch.zeros(k)
        for epoch in range(cfg.epochs):
            perm = epoch_order(cfg.seed, epoch, n)
            total = torch.zeros(k)
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                model.quant_on = step >= cfg.quant_delay * total_steps
                loss = _loss_per_net(model(x_train[idx]), self.y_train[idx], task.kind)
                model.seen = True
                finite = torch.isfinite(loss.detach())
                for j in torch.nonzero(alive & ~finite).flatten().tolist():
                    failed[j] = f"diverged: non-finite loss at epoch {epoch + 1}"
                alive &= finite
                if not bool(alive.any()):
                    break
                opt.zero_grad(set_to_none=True)
                loss[alive].sum().backward()
                if not bool(alive.all()):  # a dead net's NaNs stay in its own slices
                    for p in model.parameters():
                        if p.grad is not None:
                            p.grad.nan_to_num_(0.0, 0.0, 0.0)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step, total_steps)
                opt.step()
                step += 1
                total += loss.detach().nan_to_num(0.0) * len(idx)
            last = total / n
            if not bool(alive.any()):
                break
        model.eval()
        model.quant_on = True
        test = self._evaluate_group(model, self.x_test, task.y_test)
        val = self._evaluate_group(model, self.x_val, task.y_val) if validation else np.zeros(k)
        return Runs(test, val, last.numpy().astype(np.float64), failed)

    @torch.no_grad()
    def _evaluate_group(self, model: _CNNGroup, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), *model.input_shape)
        step = self.config.batch_size
        out = torch.cat([model(x[s : s + step]) for s in range(0, len(x), step)], dim=1)
        pred = out.numpy()
        if self.task.kind == "regression":
            pred = pred[..., 0]
        return performance_batch(self.task.kind, np.asarray(y), pred)

    # ------------------------------------------------------------------ torch engine
    def _forward(
        self, plan: _Plan, st: _State, x: torch.Tensor, train: bool, quant_on: bool = True
    ) -> _Buffers:
        """Run every net on ``x``; outputs land in ``buffers.pred`` (head order).

        With ``quant_on`` false (the float warm-up of ``quant_delay``) weights, biases and
        activations stay float (ReLU), while activation ranges are already tracked.
        """
        bsz = x.shape[0]
        buf = st.buffers(bsz)
        if quant_on:
            w_all = st.params[: plan.n_weights]
            amax = torch.cat(
                [torch.linalg.vector_norm(v, ord=float("inf"), dim=1) for v in st.w_class_views]
            )
            s_w = torch.where(amax > 0, amax / plan.q_w, torch.ones_like(amax))
            s_w_el = s_w[plan.w_owner]
            torch.div(w_all, s_w_el, out=st.wq).add_(0.5).floor_()
            torch.clamp(st.wq, -plan.q_w_el, plan.q_w_el, out=st.wq).mul_(s_w_el)
            s_in = torch.full((len(plan.members[0]),), self.s_x)
        else:
            st.wq.copy_(st.params[: plan.n_weights])
            st.bq.copy_(st.params[plan.n_weights :])
        for li, classes in enumerate(plan.layers):
            if quant_on:
                n0, n1 = plan.net_off[li]
                lo, hi = plan.layer_b[li]
                b = st.params[plan.n_weights + lo : plan.n_weights + hi]
                s_b = (s_in * s_w[n0:n1])[plan.bias_owner[li]]
                torch.div(b, s_b, out=st.bq[lo:hi]).add_(0.5).floor_().mul_(s_b)
            for c, d in zip(classes, buf.cls[li], strict=True):
                if li == 0:
                    d["a"] = x.expand(c.k, bsz, c.w_in)
                elif "a_src" in d:
                    torch.index_select(d["a_src"], 0, c.rows, out=d["a"])
                _affine(d["bq"], d["a"], d["wq"], d["out"])
            if not plan.n_hidden[li]:
                continue
            if train:
                self._track_range(plan, st, buf, li)
            if not quant_on:
                for (zv, yv, *_), mask in zip(buf.group_views[li], buf.masks[li], strict=True):
                    torch.gt(zv, 0.0, out=mask)
                    torch.clamp(zv, min=0.0, out=yv)
                continue
            am = st.act_max[li]
            s_a = torch.where(am > 0, am / plan.q_a[li], torch.ones_like(am))
            for (zv, yv, _, g0, k), mask in zip(buf.group_views[li], buf.masks[li], strict=True):
                s_g = s_a[g0 : g0 + k].view(k, 1)
                torch.div(zv, s_g, out=zv).add_(0.5).floor_()  # z is not needed after this
                # scalar clamp + broadcast minimum: 6x faster than clamp with a tensor bound
                torch.clamp(zv, min=0.0, out=yv)
                torch.minimum(yv, plan.q_a[li][g0 : g0 + k].view(k, 1), out=yv)
                torch.eq(zv, yv, out=mask)  # inside the code range: the gradient passes
                yv.mul_(s_g)
            if li + 1 < plan.n_layers:
                s_in = s_a[plan.prev_pos[li + 1]]
        return buf

    def _track_range(self, plan: _Plan, st: _State, buf: _Buffers, li: int) -> None:
        """Activation range per net: EMA of the max (Jacob et al. 2017)."""
        m = torch.cat([g[0].amax(1) for g in buf.group_views[li]]).clamp_(min=0)
        if not st.seen[li]:
            st.act_max[li].copy_(m)
            st.seen[li] = True
        else:
            st.act_max[li].mul_(self.config.act_ema).add_(m, alpha=1 - self.config.act_ema)

    def _backward(
        self, plan: _Plan, st: _State, buf: _Buffers, x: torch.Tensor, d_pred: torch.Tensor
    ) -> None:
        bsz = x.shape[0]
        for li in range(plan.n_layers - 1, -1, -1):
            if plan.n_hidden[li]:  # d loss / d z: straight-through inside the clamp range
                for (_, _, dyv, _, _), mask in zip(
                    buf.group_views[li], buf.masks[li], strict=True
                ):
                    dyv.mul_(mask)
            for c, d in zip(plan.layers[li], buf.cls[li], strict=True):
                if c.head:
                    h0, h1 = d["h"]
                    dz = d_pred[h0:h1]
                else:
                    dz = d["dz"]
                a = x.expand(c.k, bsz, c.w_in) if li == 0 else d["a"]
                torch.bmm(a.transpose(1, 2), dz, out=d["gw"])
                torch.sum(dz, dim=1, out=d["gb"])
                if li > 0:
                    torch.bmm(dz, d["wq"].transpose(1, 2), out=d["da"])
                    if "da_dst" in d:
                        d["da_dst"].index_copy_(0, c.rows, d["da"])

    def _fit(self, plan: _Plan, st: _State, progress: Progress) -> tuple[np.ndarray, list[str]]:
        cfg = self.config
        n = len(self.x_train)
        alive = torch.ones(plan.n, dtype=torch.bool)
        alive_heads = torch.ones(plan.n, dtype=torch.bool)
        failed = [""] * plan.n
        last = torch.zeros(plan.n)
        kind = self.task.kind
        total_steps = cfg.steps(n)
        for epoch in range(cfg.epochs):
            perm = epoch_order(cfg.seed, epoch, n)
            total = torch.zeros(plan.n)
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                x, y = self.x_train[idx], self.y_train[idx]
                buf = self._forward(
                    plan, st, x, train=True, quant_on=st.step >= cfg.quant_delay * total_steps
                )
                loss_h, d_pred = _loss_and_grad(buf.pred, y, kind)  # head order
                finite = torch.isfinite(loss_h)
                if not bool(finite[alive_heads].all()):
                    for h in torch.nonzero(alive_heads & ~finite).flatten().tolist():
                        failed[plan.head_order[h]] = (
                            f"diverged: non-finite loss at epoch {epoch + 1}"
                        )
                    alive_heads &= finite
                    alive = alive_heads[plan.head_pos]
                if not bool(alive_heads.all()):
                    d_pred[~alive_heads] = 0.0
                self._backward(plan, st, buf, x, d_pred)
                if not bool(alive.all()):
                    st.grad.nan_to_num_(0.0, 0.0, 0.0)
                st.adam_step(cfg, cfg.lr_at(st.step, total_steps))
                total += loss_h[plan.head_pos].nan_to_num(0.0) * len(idx)
            last = total / n
            if progress is not None:
                progress(epoch + 1, cfg.epochs)
        return last.numpy(), failed

    @torch.no_grad()
    def _evaluate(self, plan: _Plan, st: _State, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
        preds = []
        step = self.config.batch_size  # the training buffers are reused: no extra memory
        for start in range(0, len(x), step):
            buf = self._forward(plan, st, x[start : start + step], train=False)
            preds.append(buf.pred[plan.head_pos].clone())
        out = torch.cat(preds, dim=1).numpy()
        if self.task.kind == "regression":
            out = out[..., 0]
        return performance_batch(self.task.kind, np.asarray(y), out)


# Largest activation footprint (floats) of one torch-engine CNN group: nets x batch x the
# floats autograd keeps per sample (see _act_floats); bounds the engine's memory (~256 MB).
GROUP_FLOATS = 64 << 20


def _shape_key(arch: ArchSpec) -> tuple[Any, ...]:
    """What must be equal for two CNNs to share a grouped model: every unit's shapes."""
    return tuple(dataclasses.replace(u, bits=0) for u in _units(arch))


def _act_floats(arch: ArchSpec) -> int:
    """Floats per sample autograd holds for one net (conv output, fake-quant intermediates,
    pooled output: ~6 tensors of each unit's output size)."""
    return 6 * sum(math.prod(u.conv_shape) for u in _units(arch))


class _CNNGroup(nn.Module):
    """k CNNs with identical unit shapes trained as one model (the torch engine's CNN path).

    Conv units are one grouped ``conv2d`` (``groups=k``: net j's channels are block j of the
    channel axis), dense units one ``baddbmm``; every net keeps its own weight scale,
    activation range and code bounds (its bits), and, under one elementwise Adam, its own
    optimizer state. The forward is :class:`PlainQATCNN`'s, net for net.
    """

    def __init__(
        self,
        archs: Sequence[ArchSpec],
        keys: Sequence[str],
        seed: int,
        s_x: float,
        act_ema: float,
    ):
        super().__init__()
        self.k = k = len(archs)
        self.units = _units(archs[0])
        self.input_shape = tuple(archs[0].input_shape)
        inits = []
        for a, key in zip(archs, keys, strict=True):
            gen = torch.Generator().manual_seed(net_seed(seed, key))
            inits.append([init_unit_np(gen, u) for u in _units(a)])
        self.weights = nn.ParameterList(
            [
                nn.Parameter(torch.from_numpy(np.stack([net[i][0] for net in inits])))
                for i in range(len(self.units))
            ]
        )
        self.biases = nn.ParameterList(
            [
                nn.Parameter(torch.from_numpy(np.stack([net[i][1] for net in inits])))
                for i in range(len(self.units))
            ]
        )
        bits = [[u.bits for u in _units(a)] for a in archs]
        self.q_w = [
            torch.tensor([float(quant.weight_qmax(b[i])) for b in bits])
            for i in range(len(self.units))
        ]
        self.q_a = [
            torch.tensor([float(quant.act_qmax(b[i])) for b in bits])
            for i in range(len(self.units))
        ]
        self.s_x = s_x
        self.momentum = act_ema
        self.act_max = torch.zeros(len(self.units), k)
        self.seen = False
        self.quant_on = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch, C, H, W) -> outputs (k, batch, out) of every net."""
        k, bsz = self.k, len(x)
        s_in = torch.full((k,), self.s_x)
        a = x.repeat(1, k, 1, 1)  # (batch, k * C, H, W): net j reads channel block j
        for i, (u, w, b) in enumerate(zip(self.units, self.weights, self.biases, strict=True)):
            if self.quant_on:
                q_w = self.q_w[i].view(k, *(1,) * (w.dim() - 1))
                wq, s_w = quant.fake_quant_weight(w, q_w, reduce_dims=tuple(range(1, w.dim())))
                s_b = (s_in * s_w.reshape(k)).view(k, 1)
                bq = quant.ste_round_half_up(b / s_b) * s_b
            else:
                wq, bq = w, b
            if u.spatial:  # a: (batch, k * C, H, W)
                wg = wq.reshape(k * u.out, *wq.shape[2:])
                z = nn.functional.conv2d(
                    a, wg, bq.reshape(-1), stride=u.stride, padding=u.pad, groups=k
                )
                per_net, view, dims = z.view(bsz, k, -1), (1, k, 1), (0, 2)
            else:  # a: (k, batch, n), or a feature map flattened per net
                if a.dim() == 4:
                    a = a.reshape(bsz, k, -1).transpose(0, 1)
                z = torch.baddbmm(bq.unsqueeze(1), a, wq)
                if u.head:
                    return z
                per_net, view, dims = z, (k, 1, 1), (1, 2)
            if self.training:
                with torch.no_grad():
                    m = per_net.detach().amax(dim=dims).clamp_min(0)
                    self.act_max[i] = (
                        m
                        if not self.seen
                        else self.momentum * self.act_max[i] + (1 - self.momentum) * m
                    )
            if self.quant_on:
                am = self.act_max[i]
                s_a = torch.where(am > 0, am / self.q_a[i], torch.ones_like(am))
                y = quant.fake_quant_act(per_net, s_a.view(view), self.q_a[i].view(view))
                a = y.view(z.shape)
                s_in = s_a
            else:
                a = torch.relu(z)
            if u.pool > 1:
                a = nn.functional.max_pool2d(a, u.pool)
        raise AssertionError("unreachable")


class _State:
    """Mutable training state of a chunk: parameters, gradients, Adam moments, act ranges."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.params = plan.params.clone()
        self.grad = torch.zeros_like(self.params)
        self.wq = torch.empty(plan.n_weights)
        self.bq = torch.empty(len(self.params) - plan.n_weights)
        self.m = torch.zeros_like(self.params)
        self.v = torch.zeros_like(self.params)
        self.step = 0
        self.act_max = [torch.zeros(plan.n_hidden[li]) for li in range(plan.n_layers)]
        self.seen = [False] * plan.n_layers
        self.w_class_views = [
            self.params[c.w_off : c.w_off + c.k * c.w_in * c.w_out].view(c.k, -1)
            for classes in plan.layers
            for c in classes
        ]
        self._buffers: dict[int, _Buffers] = {}

    def buffers(self, bsz: int) -> _Buffers:
        if bsz not in self._buffers:
            self._buffers[bsz] = _Buffers(self.plan, self, bsz)
        return self._buffers[bsz]

    def adam_step(
        self,
        cfg: TrainerConfig,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        """torch.optim.Adam's update, on the flat parameter vector of every net at once."""
        self.step += 1
        g = self.grad
        if cfg.weight_decay:
            g = g.add(self.params, alpha=cfg.weight_decay)
        self.m.lerp_(g, 1 - beta1)
        self.v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1 = 1 - beta1**self.step
        bc2_sqrt = math.sqrt(1 - beta2**self.step)
        denom = (self.v.sqrt() / bc2_sqrt).add_(eps)
        self.params.addcdiv_(self.m, denom, value=-lr / bc1)


def _loss_and_grad(
    pred: torch.Tensor, y: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-net mean loss and its gradient wrt ``pred`` (n_nets, batch, out)."""
    n = pred.shape[1]
    if kind == "regression":
        diff = pred[..., 0] - y
        return (diff * diff).mean(dim=1), (diff * (2.0 / n)).unsqueeze(-1)
    logp = torch.log_softmax(pred, dim=-1)
    loss = -logp.gather(-1, y.view(1, n, 1).expand(pred.shape[0], n, 1))[..., 0].mean(dim=1)
    d = logp.exp()
    d[:, torch.arange(n), y] -= 1.0
    return loss, d / n


# ---------------------------------------------------------------------------- one at a time
_P = TypeVar("_P", bound="_PlainQAT")


class _PlainQAT(nn.Module):
    """What :class:`PlainQATMLP` and :class:`PlainQATCNN` share: per-tensor symmetric
    fake-quantized weights with biases at ``s_in * s_w``, the output range of a hidden unit an
    EMA of the batch max of its pre-activation, activations fake-quantized to 0..2^b - 1 (ReLU
    folded in), or float weights and a plain ReLU while ``quant_on`` is off (the warm-up)."""

    act_max: torch.Tensor  # a registered buffer

    def __init__(
        self,
        inits: Sequence[tuple[torch.Tensor, torch.Tensor]],
        bits: list[int],
        s_x: float,
        act_ema: float,
    ):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w) for w, _ in inits])
        self.biases = nn.ParameterList([nn.Parameter(b) for _, b in inits])
        self.bits = bits
        self.s_x = s_x
        self.momentum = act_ema
        self.register_buffer("act_max", torch.zeros(len(inits)))
        self.seen = False
        self.quant_on = True

    def _unit_params(self, i: int, s_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit i's weights and bias as its forward pass uses them (input scale ``s_in``)."""
        w, b = self.weights[i], self.biases[i]
        if not self.quant_on:
            return w, b
        qmax_w = torch.tensor(float(quant.weight_qmax(self.bits[i])))
        wq, s_w = quant.fake_quant_weight(w, qmax_w, reduce_dims=tuple(range(w.dim())))
        s_b = s_in * s_w.reshape(())
        return wq, quant.ste_round_half_up(b / s_b) * s_b

    def _activation(
        self, i: int, z: torch.Tensor, s_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden unit i's output from its pre-activation ``z`` (its range tracked while
        training), and the next unit's input scale."""
        if self.training:
            with torch.no_grad():
                m = z.detach().max().clamp_min(0)
                self.act_max[i] = (
                    m
                    if not self.seen
                    else (self.momentum * self.act_max[i] + (1 - self.momentum) * m)
                )
        if not self.quant_on:
            return torch.relu(z), s_in
        qmax_a = torch.tensor(float(quant.act_qmax(self.bits[i])))
        s_a = self.act_max[i] / qmax_a if self.act_max[i] > 0 else torch.tensor(1.0)
        return quant.fake_quant_act(z, s_a, qmax_a), s_a

    def train(self: _P, mode: bool = True) -> _P:
        if not mode and self.training:
            self.seen = True
        return super().train(mode)


class PlainQATMLP(_PlainQAT):
    """One quantized MLP as ordinary PyTorch: the reference the batched trainer must match."""

    def __init__(self, arch: ArchSpec, s_x: float, seed: int, act_ema: float):
        ws = _widths(arch)
        gen = torch.Generator().manual_seed(net_seed(seed, arch.arch_id))
        inits = [init_dense(gen, ws[j], ws[j + 1]) for j in range(len(ws) - 1)]
        bits = [layer.bits for layer in arch.layers] + [arch.output_bits]
        super().__init__(inits, bits, s_x, act_ema)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_in = torch.tensor(self.s_x)
        n = len(self.weights)
        for i in range(n):
            wq, bq = self._unit_params(i, s_in)
            z = torch.addmm(bq, x, wq)
            if i == n - 1:
                return z
            x, s_in = self._activation(i, z, s_in)
        raise AssertionError("unreachable")


class PlainQATCNN(_PlainQAT):
    """One quantized CNN as ordinary PyTorch: the reference both CNN engines must match.

    The recipe is :class:`PlainQATMLP`'s, unit by unit (:class:`_PlainQAT`): the output range
    is taken of the conv/matmul output (before the pool, where the integer model requantizes),
    then the floor 2x2 (``pool``) max-pool follows the activation -- exact in integers because
    max commutes with monotone quantization. Weights are kept in the export layout: conv
    ``(out, in, k, k)``, dense ``(in, out)``; a feature map is flattened channel-major before
    the first dense unit, as the exporters do.
    """

    def __init__(
        self, arch: ArchSpec, s_x: float, seed: int, act_ema: float, init_key: str | None = None
    ):
        units = _units(arch)
        gen = torch.Generator().manual_seed(net_seed(seed, init_key or arch.arch_id))
        inits = [init_unit_np(gen, u) for u in units]
        super().__init__(
            [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in inits],
            [u.bits for u in units],
            s_x,
            act_ema,
        )
        self.units = units
        self.input_shape = tuple(arch.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_in = torch.tensor(self.s_x)
        x = x.reshape(len(x), *self.input_shape)
        for i, u in enumerate(self.units):
            wq, bq = self._unit_params(i, s_in)
            if u.spatial:
                z = nn.functional.conv2d(x, wq, bq, stride=u.stride, padding=u.pad)
            else:
                z = torch.addmm(bq, x.reshape(len(x), -1), wq)
            if u.head:
                return z
            x, s_in = self._activation(i, z, s_in)
            if u.pool > 1:
                x = nn.functional.max_pool2d(x, u.pool)
        raise AssertionError("unreachable")


def plain_model(
    arch: ArchSpec, s_x: float, seed: int, act_ema: float
) -> PlainQATMLP | PlainQATCNN:
    """The plain one-net model of ``arch``: :class:`PlainQATMLP` or :class:`PlainQATCNN`."""
    if arch.kind == "mlp":
        return PlainQATMLP(arch, s_x, seed, act_ema)
    return PlainQATCNN(arch, s_x, seed, act_ema)


class _Diverged(FloatingPointError):
    pass


def _fit_plain(
    arch: ArchSpec,
    task: TaskData,
    config: TrainerConfig,
    progress: Progress = None,
) -> tuple[PlainQATMLP | PlainQATCNN, BatchedMLPTrainer, float, float]:
    """The plain loop: one net, ordinary PyTorch, same scheme, init, data order and optimizer.

    Returns the trained model, the helper holding the quantized inputs, the last epoch's mean
    loss and the test performance; raises :class:`_Diverged` on a non-finite loss.
    """
    check_input(arch, task)
    check_size(arch, config.batch_size)
    helper = BatchedMLPTrainer(task, config, engine="torch")  # the input quantization only
    model = plain_model(arch, helper.s_x, config.seed, config.act_ema)
    opt = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=False
    )
    n = len(helper.x_train)
    total_steps, step, last = config.steps(n), 0, float("nan")
    for epoch in range(config.epochs):
        perm = epoch_order(config.seed, epoch, n)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            model.quant_on = step >= config.quant_delay * total_steps
            out = model(helper.x_train[idx])
            loss = _loss_per_net(out.unsqueeze(0), helper.y_train[idx], task.kind)[0]
            model.seen = True
            if not torch.isfinite(loss):
                raise _Diverged(f"diverged: non-finite loss at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step, total_steps)
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        last = total / n
        if progress is not None:
            progress(epoch + 1, config.epochs)
    model.eval()
    model.quant_on = True
    with torch.no_grad():
        out = model(helper.x_test).numpy()
    if task.kind == "regression":
        out = out[..., 0]
    perf = float(performance_batch(task.kind, np.asarray(task.y_test), out[None])[0])
    return model, helper, last, perf


def train_single(arch: ArchSpec, task: TaskData, config: TrainerConfig) -> TrainResult:
    """One net with the plain loop: the reference the batched trainer must match."""
    t0 = time.perf_counter()
    try:
        _, _, last, perf = _fit_plain(arch, task, config)
    except _Diverged as exc:
        return TrainResult(
            arch.arch_id, "failed", 0.0, float("nan"), str(exc), time.perf_counter() - t0
        )
    return TrainResult(arch.arch_id, "ok", perf, last, "", time.perf_counter() - t0)


# ---------------------------------------------------------------------------- final training
NET_FORMAT = "inag-qat-net-v1"


def train_final(
    arch: ArchSpec,
    task: TaskData,
    config: TrainerConfig,
    progress: Progress = None,
) -> tuple[TrainResult, dict[str, np.ndarray], dict[str, str]]:
    """QAT-train one chosen net (usually longer than the dataset budget) and return its state.

    The state is what the exporters need: float weights and biases per unit (fake-quantized
    at export by ``export.quant``), the activation range per hidden unit, and the input scale.
    """
    t0 = time.perf_counter()
    try:
        model, helper, last, perf = _fit_plain(arch, task, config, progress)
    except _Diverged as exc:
        raise FloatingPointError(f"training {exc}; try a lower --lr") from None
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        tensors[f"unit{i}.weight"] = w.detach().numpy().astype(np.float32)  # (in, out)
        tensors[f"unit{i}.bias"] = b.detach().numpy().astype(np.float32)
    tensors["act_max"] = model.act_max.numpy().astype(np.float32)[: len(arch.layers)]
    meta = {
        "format": NET_FORMAT,
        "arch": arch.to_json(),
        "arch_id": arch.arch_id,
        "input_scale": repr(float(helper.s_x)),
        "task": task.name,
        "task_kind": task.kind,
        "qat_performance": repr(perf),
        "trainer": json.dumps(asdict(config)),
    }
    return (
        TrainResult(arch.arch_id, "ok", perf, last, "", time.perf_counter() - t0),
        tensors,
        meta,
    )
