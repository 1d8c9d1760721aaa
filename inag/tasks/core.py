"""Task data: what every loader returns, and the one split + standardization step.

``load_task(spec, seed)`` turns a task spec into a :class:`TaskData` with standardized
train/validation/test splits, so the QAT trainer, the dataset builder and the evaluation code all
see the same arrays for the same ``(spec, seed, max_train)``. Specs:

``data_a``
    The paper's Data_a: ``f1(x) = -2x^4 - 8x^3 + 5x^2 + 15`` plus Gaussian noise,
    ``x ~ U[-5, 2]``. The range holds the whole hump of the quartic: from f(-5) = -110 up to
    the maximum near x = -3.37 (f ~ 120), down through the local minimum at x = 0 (f = 15), the
    small local maximum near x = 0.37 and on to f(2) = -61. A straight line explains only 26 %
    of var(f) here and a parabola 52 % (74 % / 75 % on [-4.5, 1.5]), so nets that capture only
    part of the shape land in the middle of the R² range: a dataset of candidates spans low to
    high performance, which the generator needs to learn every condition.
``data_b``
    The paper's Data_b (its formula is garbled; see DESIGN.md): ``-2x^7 + 2x^5 - 4x^3 + 15`` plus
    noise, ``x ~ U[-1.5, 1.5]``: flat in the middle (the x^3 term), steep tails where x^7
    dominates (f(-1.5) = 47.5, f(1.5) = -17.5). ``std(f(x)) = 9.128``; a straight line explains
    67 % of var(f).
``digits`` / ``diabetes``
    scikit-learn's bundled datasets (no download): 8x8 digit images, input (1, 8, 8), 10 classes;
    diabetes progression, 10 raw (unscaled) features, regression.
``mnist:DIR``
    The four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; plain or ``.gz``). Input (1, 28, 28),
    pixels scaled to [0, 1] and then standardized.
``cifar10:DIR``
    The python pickle batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``); DIR may be
    ``cifar-10-batches-py`` itself or its parent. Read with a restricted unpickler that can only
    rebuild numpy arrays. Input (3, 32, 32).
``california:FILE.csv``
    The California housing CSV. Target ``median_house_value``; the 8 numeric columns plus a
    one-hot of ``ocean_proximity`` over its 5 known categories (13 features). Rows with a missing
    value (the real file has 207 empty ``total_bedrooms``) are dropped and counted in ``meta``.
``csv:FILE.csv?target=COL[&kind=regression|classification]``
    Any numeric CSV with a header. Without ``kind``, an integer-valued target with at most 20
    distinct values is a classification task (labels mapped to 0..K-1 in sorted order), anything
    else is regression. Rows with a missing cell are dropped. The query is split on ``&`` and
    ``=`` literally (no URL decoding).

Noise (data_a, data_b): ``sigma = std(f) * sqrt((1 - R2*) / R2*)`` with ``R2* = 0.97``, i.e.
sigma = 7.213 for data_a and 1.605 for data_b. The noise ceiling -- the R^2 of the true function
on unseen noisy data -- is then 0.97 in expectation: good nets reach about 0.97, weak ones spread
down to 0, which gives the condition range the GAN needs.

Sample counts: the synthetic tasks draw 2000 train / 500 validation / 1000 test points. Shuffled
tasks (digits, diabetes, california, csv) split 60 / 20 / 20 by a seeded permutation; mnist and
cifar10 keep the official test set and split 10 % of the official training set off as validation.

Seeds: every split is a deterministic function of ``seed`` (numpy ``default_rng``); for the
synthetic tasks the points and the noise are drawn from it too, so one seed is one dataset. Pass
the same seed to every candidate network of a dataset build so they are compared on equal data.

Standardization: features with training-split statistics (per feature for tabular data, per
channel for images; a constant feature keeps std 1); regression targets too (R^2 does not change).
The statistics are kept in ``meta`` to map predictions back. ``max_train`` keeps a random subset
of the training split (after the split; statistics come from that subset).

Results are cached (the arrays are read-only); a file task's cache entry is keyed on the files'
size and modification time, so an edited file is read again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

TaskKind = Literal["regression", "classification"]

N_TRAIN_SYNTHETIC = 2000
N_VAL_SYNTHETIC = 500
N_TEST_SYNTHETIC = 1000
NOISE_CEILING_R2 = 0.97
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
IMAGE_VAL_FRACTION = 0.1
MAX_INFERRED_CLASSES = 20
MIN_ROWS = 10
_CACHE_SIZE = 4
_CHUNK_ROWS = 4096
MAX_CSV_BYTES = 1 << 30  # California housing is 1.4 MB
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the networks train in float32
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


class TaskError(ValueError):
    """A task spec, or the data it points to, cannot be used."""


@dataclass(frozen=True, eq=False)
class TaskData:
    """Standardized splits of one task, ready for training (x float32; y float32 or int64)."""

    name: str
    kind: TaskKind
    input_shape: tuple[int, ...]
    output_size: int
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_val: np.ndarray = field(repr=False)
    y_val: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("regression", "classification"):
            raise TaskError(f"task kind must be regression or classification, found {self.kind!r}")
        y_dtype = np.float32 if self.kind == "regression" else np.int64
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float32 or x.shape[1:] != tuple(self.input_shape):
                raise TaskError(
                    f"x_{split} must be float32 shaped (n, *{tuple(self.input_shape)}), found "
                    f"{x.dtype} {x.shape}"
                )
            if y.dtype != y_dtype or y.shape != (x.shape[0],):
                raise TaskError(
                    f"y_{split} must be {np.dtype(y_dtype)} shaped ({x.shape[0]},), found "
                    f"{y.dtype} {y.shape}"
                )

    @property
    def n_features(self) -> int:
        """Flattened input size (what an MLP's first layer sees)."""
        return math.prod(self.input_shape)


# --------------------------------------------------------------------------- split + standardize


@dataclass(frozen=True)
class _Raw:
    """What a loader hands to ``_finalize``: unsplit data or data with fixed splits."""

    name: str
    kind: TaskKind
    input_shape: tuple[int, ...]
    output_size: int
    x: np.ndarray  # all rows, or the train(+val) rows when ``x_test`` is given
    y: np.ndarray
    meta: dict[str, Any]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    n_val: int | None = None  # fixed validation size (the rows right after the training rows)
    x_scale: float = 1.0  # raw-to-model unit factor (1/255 for image pixels)
    row_lines: tuple[int, ...] | None = None  # source line of each row of ``x`` (CSV tasks)


def _finalize(raw: _Raw, seed: int, max_train: int | None) -> TaskData:
    rng = np.random.default_rng(seed)
    n = raw.x.shape[0]
    test_idx: np.ndarray | None = None  # set when the test rows are cut from raw.x
    if raw.n_val is not None:  # synthetic: rows already random and laid out train|val|test
        n_train = n - raw.n_val
        train_idx, val_idx = np.arange(n_train), np.arange(n_train, n)
        x_test, y_test = raw.x_test, raw.y_test
        split = "generated in order train|val|test"
    elif raw.x_test is not None:
        if n < 2:
            raise TaskError(f"{raw.name}: the training set needs at least 2 samples, found {n}")
        n_val = max(1, round(IMAGE_VAL_FRACTION * n))
        perm = rng.permutation(n)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_test, y_test = raw.x_test, raw.y_test
        split = f"official test set; {IMAGE_VAL_FRACTION:.0%} of the official train set as val"
    else:
        if n < MIN_ROWS:
            raise TaskError(
                f"{raw.name}: need at least {MIN_ROWS} usable rows for train/val/test splits, "
                f"found {n}"
            )
        n_test = max(1, round(TEST_FRACTION * n))
        n_val = max(1, round(VAL_FRACTION * n))
        perm = rng.permutation(n)
        test_idx = np.sort(perm[:n_test])
        val_idx = np.sort(perm[n_test : n_test + n_val])
        train_idx = np.sort(perm[n_test + n_val :])
        x_test, y_test = raw.x[test_idx], raw.y[test_idx]
        split = f"seeded permutation {1 - VAL_FRACTION - TEST_FRACTION:.0%}/{VAL_FRACTION:.0%}/"
        split += f"{TEST_FRACTION:.0%}"
    assert x_test is not None and y_test is not None
    if max_train is not None and max_train < len(train_idx):
        keep = rng.choice(len(train_idx), size=max_train, replace=False)
        train_idx = train_idx[np.sort(keep)]
    x_train, y_train = raw.x[train_idx], raw.y[train_idx]
    x_val, y_val = raw.x[val_idx], raw.y[val_idx]

    image = len(raw.input_shape) == 3
    mean_raw, std_raw = _feature_stats(x_train, per_channel=image)
    shape = (1, -1, 1, 1) if image else (1, -1)
    mean32 = mean_raw.astype(np.float32).reshape(shape)
    std32 = std_raw.astype(np.float32).reshape(shape)

    def standardize_x(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused after
            out = x.astype(np.float32)  # always a copy
            out -= mean32
            out /= std32
        return out.reshape((x.shape[0], *raw.input_shape))

    meta = dict(raw.meta)
    meta.update(
        spec_name=raw.name,
        seed=seed,
        max_train=max_train,
        split=split,
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=int(x_test.shape[0]),
        standardization="per channel" if image else "per feature",
        x_mean=(mean_raw * raw.x_scale).tolist(),
        x_std=(std_raw * raw.x_scale).tolist(),
    )
    if raw.kind == "regression":
        y_mean = float(np.mean(y_train, dtype=np.float64))
        y_std = float(np.std(y_train, dtype=np.float64))
        y_std = y_std if y_std > 1e-12 else 1.0
        meta.update(y_mean=y_mean, y_std=y_std)

        def standardize_y(y: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused after
                return ((y.astype(np.float64) - y_mean) / y_std).astype(np.float32)

    else:

        def standardize_y(y: np.ndarray) -> np.ndarray:
            return y.astype(np.int64)

    arrays = {
        "x_train": standardize_x(x_train),
        "y_train": standardize_y(y_train),
        "x_val": standardize_x(x_val),
        "y_val": standardize_y(y_val),
        "x_test": standardize_x(x_test),
        "y_test": standardize_y(y_test),
    }
    # which rows of which array each split came from, to name a bad value's source row
    from_raw = test_idx is not None
    test_rows = test_idx if test_idx is not None else np.arange(len(x_test))
    sources = {"train": (train_idx, True), "val": (val_idx, True), "test": (test_rows, from_raw)}
    for part, (rows, in_raw) in sources.items():
        raw_x, raw_y = (raw.x, raw.y) if in_raw else (x_test, y_test)
        _refuse_non_finite(raw, part, arrays[f"x_{part}"], raw_x, rows, in_raw, False)
        if raw.kind == "regression":
            _refuse_non_finite(raw, part, arrays[f"y_{part}"], raw_y, rows, in_raw, True)
    for arr in arrays.values():
        arr.setflags(write=False)
    return TaskData(
        name=raw.name,
        kind=raw.kind,
        input_shape=tuple(raw.input_shape),
        output_size=raw.output_size,
        meta=meta,
        **arrays,
    )


def _refuse_non_finite(
    raw: _Raw,
    split: str,
    out: np.ndarray,
    source: np.ndarray,
    rows: np.ndarray,
    in_raw: bool,
    target: bool,
) -> None:
    """Refuses a split whose standardized values are not finite in float32.

    Values within float32 can still overflow after centring and scaling (a huge outlier in the
    validation rows against a tiny training std); training on inf/NaN would silently give junk.
    """
    if not out.size or (np.isfinite(out.min()) and np.isfinite(out.max())):  # NaN propagates
        return
    flat = out.reshape(out.shape[0], -1)
    bad = np.argwhere(~np.isfinite(flat))
    r, c = (int(v) for v in bad[0])
    source_row = int(rows[r])
    if in_raw and raw.row_lines is not None:
        where = f"line {raw.row_lines[source_row]}"
    elif in_raw:
        where = f"row {source_row + 1}"
    else:
        where = f"{split} row {r + 1}"
    names = raw.meta.get("feature_names")
    if target:
        column = f"target {raw.meta.get('target', 'y')!r}"
        value = float(np.asarray(source)[source_row])
    else:
        column = f"column {names[c]!r}" if names and c < len(names) else f"feature {c + 1}"
        value = float(np.asarray(source).reshape(len(source), -1)[source_row, c])
    source_name = f" of {str(raw.meta['source'])!r}" if "source" in raw.meta else ""
    raise TaskError(
        f"{raw.name}: {column}{source_name} holds {value:.6g} on {where} ({split} split), which "
        "is not finite in float32 after standardizing with the training rows' mean and std; "
        "expected values whose spread fits float32 (rescale that column)"
    )


def _feature_stats(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float64) per feature or per channel, in chunks so uint8 images stay small."""
    n = x.shape[0]
    if n == 0:
        raise TaskError("the training split is empty")
    if per_channel:
        x = x.reshape(n, x.shape[1], -1)
        axes: tuple[int, ...] = (0, 2)
        count = n * x.shape[2]
        width = x.shape[1]
    else:
        x = x.reshape(n, -1)
        axes = (0,)
        count = n
        width = x.shape[1]
    total = np.zeros(width)
    for start in range(0, n, _CHUNK_ROWS):
        total += x[start : start + _CHUNK_ROWS].astype(np.float64).sum(axis=axes)
    mean = total / count
    bshape = (1, -1, 1) if per_channel else (1, -1)
    sq = np.zeros(width)
    for start in range(0, n, _CHUNK_ROWS):
        chunk = x[start : start + _CHUNK_ROWS].astype(np.float64) - mean.reshape(bshape)
        sq += (chunk * chunk).sum(axis=axes)
    std = np.sqrt(sq / count)
    std[std < 1e-12] = 1.0  # a constant feature: centre it, do not blow it up
    return mean, std


def _require_dir(path_text: str, task: str, expected: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TaskError(f"{task}: the path {str(path)!r} does not exist; expected {expected}")
    if not path.is_dir():
        raise TaskError(f"{task}: {str(path)!r} is not a directory; expected {expected}")
    return path
