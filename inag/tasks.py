"""Task registry: the data every candidate network is trained and scored on.

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

import copy
import csv
import functools
import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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


# --------------------------------------------------------------------------- synthetic tasks


@dataclass(frozen=True)
class PolynomialTask:
    """A 1-D polynomial regression task with Gaussian noise sized to a target noise ceiling."""

    formula: str
    coefficients: tuple[float, ...]  # lowest degree first
    x_low: float
    x_high: float
    target_r2: float = NOISE_CEILING_R2

    def f(self, x: np.ndarray) -> np.ndarray:
        return np.polynomial.polynomial.polyval(x, self.coefficients)

    @property
    def function_std(self) -> float:
        """Exact std of f(x) for x uniform on [x_low, x_high] (integrated polynomials)."""
        poly = np.polynomial.Polynomial(self.coefficients)
        width = self.x_high - self.x_low

        def mean_of(p: np.polynomial.Polynomial) -> float:
            q = p.integ()
            return float(q(self.x_high) - q(self.x_low)) / width

        m1, m2 = mean_of(poly), mean_of(poly * poly)
        return math.sqrt(max(m2 - m1 * m1, 0.0))

    @property
    def noise_sigma(self) -> float:
        """Noise std so that var(f) / (var(f) + sigma^2) equals ``target_r2``."""
        return self.function_std * math.sqrt((1.0 - self.target_r2) / self.target_r2)


POLYNOMIAL_TASKS: dict[str, PolynomialTask] = {
    "data_a": PolynomialTask(
        formula="-2x^4 - 8x^3 + 5x^2 + 15",
        coefficients=(15.0, 0.0, 5.0, -8.0, -2.0),
        x_low=-5.0,
        x_high=2.0,
    ),
    "data_b": PolynomialTask(
        formula="-2x^7 + 2x^5 - 4x^3 + 15",
        coefficients=(15.0, 0.0, 0.0, -4.0, 0.0, 2.0, 0.0, -2.0),
        x_low=-1.5,
        x_high=1.5,
    ),
}


# --------------------------------------------------------------------------- registry

_TASK_FORMS: dict[str, str] = {
    "data_a": "data_a",
    "data_b": "data_b",
    "digits": "digits",
    "diabetes": "diabetes",
    "mnist": "mnist:DIR",
    "cifar10": "cifar10:DIR",
    "california": "california:FILE.csv",
    "csv": "csv:FILE.csv?target=COL[&kind=regression|classification]",
}
_PATH_TASKS = frozenset({"mnist", "cifar10", "california", "csv"})


def available_tasks() -> list[str]:
    """Every accepted spec form, path-taking ones with their placeholder."""
    return list(_TASK_FORMS.values())


def load_task(spec: str, seed: int = 0, max_train: int | None = None) -> TaskData:
    """Load (or fetch from the cache) the standardized splits named by ``spec``."""
    name, arg = _parse_spec(spec)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TaskError(f"seed must be a non-negative integer, found {seed!r}")
    if max_train is not None and (
        isinstance(max_train, bool) or not isinstance(max_train, int | np.integer) or max_train < 1
    ):
        raise TaskError(f"max_train must be a positive integer or None, found {max_train!r}")
    fingerprint = _fingerprint(name, arg)
    data = _load_cached(
        name, arg, int(seed), None if max_train is None else int(max_train), fingerprint
    )
    return replace(data, meta=copy.deepcopy(data.meta))


def _parse_spec(spec: Any) -> tuple[str, str | None]:
    if not isinstance(spec, str):
        raise TaskError(f"a task spec is a string, found {type(spec).__name__}")
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _TASK_FORMS:
        raise TaskError(
            f"unknown task {name!r} (spec {spec!r}); available tasks: "
            f"{', '.join(available_tasks())}"
        )
    arg = arg.strip()
    if name in _PATH_TASKS and not arg:
        raise TaskError(
            f"task {name!r} reads local files: write it as {_TASK_FORMS[name]!r} (found {spec!r})"
        )
    if name not in _PATH_TASKS and sep:
        raise TaskError(f"task {name!r} takes no argument: write it as {name!r} (found {spec!r})")
    return name, (arg or None)


def _fingerprint(name: str, arg: str | None) -> tuple[Any, ...]:
    """Sizes and modification times of the files a spec reads (cache invalidation)."""
    if arg is None:
        return ()
    path = Path(_split_query(arg)[0] if name == "csv" else arg).expanduser()
    entries: list[Path] = []
    if path.is_file():
        entries = [path]
    elif path.is_dir():
        for folder in (path, path / "cifar-10-batches-py"):
            if folder.is_dir():
                entries.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    stamps = []
    for entry in entries:
        stat = entry.stat()
        stamps.append((str(entry.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(
    name: str, arg: str | None, seed: int, max_train: int | None, fingerprint: tuple[Any, ...]
) -> TaskData:
    del fingerprint  # part of the cache key only
    raw = _LOADERS[name](arg, seed)
    return _finalize(raw, seed, max_train)


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


def _finalize(raw: _Raw, seed: int, max_train: int | None) -> TaskData:
    rng = np.random.default_rng(seed)
    n = raw.x.shape[0]
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


# --------------------------------------------------------------------------- loaders


def _load_polynomial(name: str, arg: str | None, seed: int) -> _Raw:
    del arg
    task = POLYNOMIAL_TASKS[name]
    rng = np.random.default_rng(seed)
    n = N_TRAIN_SYNTHETIC + N_VAL_SYNTHETIC + N_TEST_SYNTHETIC
    x = rng.uniform(task.x_low, task.x_high, size=n)
    sigma = task.noise_sigma
    y = task.f(x) + rng.normal(0.0, sigma, size=n)
    n_fit = N_TRAIN_SYNTHETIC + N_VAL_SYNTHETIC
    meta = {
        "source": "synthetic",
        "formula": f"f(x) = {task.formula} + N(0, sigma^2)",
        "x_range": [task.x_low, task.x_high],
        "x_distribution": "uniform",
        "function_std": task.function_std,
        "noise_sigma": sigma,
        "noise_ceiling_r2": task.target_r2,
    }
    return _Raw(
        name=name,
        kind="regression",
        input_shape=(1,),
        output_size=1,
        x=x[:n_fit, None],
        y=y[:n_fit],
        x_test=x[n_fit:, None],
        y_test=y[n_fit:],
        n_val=N_VAL_SYNTHETIC,
        meta=meta,
    )


def _load_digits(arg: str | None, seed: int) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    return _Raw(
        name="digits",
        kind="classification",
        input_shape=(1, 8, 8),
        output_size=10,
        x=images.reshape(-1, 1, 8, 8),
        y=np.asarray(bunch.target, dtype=np.int64),
        meta={"source": "sklearn.datasets.load_digits", "pixel_range": [0, 16]},
    )


def _load_diabetes(arg: str | None, seed: int) -> _Raw:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    return _Raw(
        name="diabetes",
        kind="regression",
        input_shape=(10,),
        output_size=1,
        x=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.float64),
        meta={
            "source": "sklearn.datasets.load_diabetes(scaled=False)",
            "feature_names": list(bunch.feature_names),
        },
    )


# ----- MNIST (IDX)

_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051),
    "train_labels": ("train-labels-idx1-ubyte", 2049),
    "test_images": ("t10k-images-idx3-ubyte", 2051),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049),
}


def _require_dir(path_text: str, task: str, expected: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TaskError(f"{task}: the path {str(path)!r} does not exist; expected {expected}")
    if not path.is_dir():
        raise TaskError(f"{task}: {str(path)!r} is not a directory; expected {expected}")
    return path


def _find_idx(folder: Path, base: str) -> Path | None:
    dotted = base.replace("-idx", ".idx")  # the common 'train-images.idx3-ubyte' spelling
    for candidate in (base, base + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


# An IDX file larger than this is not MNIST-like data this trainer can hold (MNIST's largest
# file is 47 MB); deflate cannot expand more than ~1032:1, so a header that claims more than
# that of its .gz is a lie, found before anything is allocated.
MAX_IDX_BYTES = 1 << 30
_GZIP_MAX_RATIO = 1100


def _read_idx(path: Path, magic_expected: int) -> np.ndarray:
    """An unsigned-byte IDX array, plain or gzip, its sizes checked against the header first."""
    ndim = magic_expected & 0xFF
    header = 4 + 4 * ndim
    what = "images (3 dimensions: count, rows, cols)" if ndim == 3 else "labels (1 dimension)"
    try:
        file_size = path.stat().st_size
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if not gzipped and path.suffix == ".gz":
                raise TaskError(
                    f"mnist: {str(path)!r} is named .gz but is not gzip data (it starts with "
                    f"{raw.read(4)!r}); expected a gzip-compressed IDX file"
                )
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            head = stream.read(header)
            if len(head) < header:
                raise TaskError(
                    f"mnist: {str(path)!r} is too short for an IDX header ({len(head)} bytes); "
                    f"expected an IDX file of unsigned-byte {what}"
                )
            (magic,) = struct.unpack(">i", head[:4])
            if magic != magic_expected:
                raise TaskError(
                    f"mnist: {str(path)!r} has IDX magic number {magic}, expected "
                    f"{magic_expected} (unsigned-byte {what}); is it the right file, or "
                    "compressed with something other than gzip?"
                )
            dims = struct.unpack(">" + "I" * ndim, head[4:header])
            size = math.prod(dims)
            if size > MAX_IDX_BYTES:
                raise TaskError(
                    f"mnist: {str(path)!r} declares dimensions {dims} ({size:,} bytes), more "
                    f"than the {MAX_IDX_BYTES:,} accepted; the header is corrupt"
                )
            if gzipped and size > _GZIP_MAX_RATIO * file_size + 4096:
                raise TaskError(
                    f"mnist: {str(path)!r} declares dimensions {dims} ({size:,} bytes) but is a "
                    f"gzip file of {file_size:,} bytes, which cannot hold that; the header is "
                    "corrupt"
                )
            if not gzipped and file_size - header != size:
                raise TaskError(
                    f"mnist: {str(path)!r} declares dimensions {dims} ({size} bytes of data) but "
                    f"holds {file_size - header} bytes after the header; the file is truncated "
                    "or corrupt"
                )
            data = stream.read(size + 1)  # one byte more reveals data beyond the header's size
    except (OSError, EOFError, zlib.error) as exc:
        raise TaskError(
            f"mnist: {str(path)!r} cannot be read, or looks gzip-compressed but is corrupt: {exc}"
        ) from None
    if len(data) != size:
        found = f"{len(data)} bytes" if len(data) < size else "more bytes"
        raise TaskError(
            f"mnist: {str(path)!r} declares dimensions {dims} ({size} bytes of data) but holds "
            f"{found} after the header; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _load_mnist(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    expected = (
        "a directory holding the four MNIST IDX files "
        f"{', '.join(base for base, _ in _MNIST_FILES.values())} (each plain or .gz)"
    )
    folder = _require_dir(arg, "mnist", expected)
    arrays: dict[str, np.ndarray] = {}
    for key, (base, magic) in _MNIST_FILES.items():
        path = _find_idx(folder, base)
        if path is None:
            raise TaskError(
                f"mnist: {str(folder)!r} has no {base} (or {base}.gz); expected {expected}"
            )
        arrays[key] = _read_idx(path, magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise TaskError(
                f"mnist: the {split} set has {images.shape[0]} images but {labels.shape[0]} "
                "labels; the IDX files do not belong together"
            )
        if labels.size and labels.max() > 9:
            raise TaskError(f"mnist: {split} labels must be 0..9, found {int(labels.max())}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise TaskError(
            f"mnist: train images are {arrays['train_images'].shape[1:]} but test images are "
            f"{arrays['test_images'].shape[1:]}; they must have the same size"
        )
    rows, cols = arrays["train_images"].shape[1:]
    return _Raw(
        name="mnist",
        kind="classification",
        input_shape=(1, rows, cols),
        output_size=10,
        x=arrays["train_images"].reshape(-1, 1, rows, cols),
        y=arrays["train_labels"].astype(np.int64),
        x_test=arrays["test_images"].reshape(-1, 1, rows, cols),
        y_test=arrays["test_labels"].astype(np.int64),
        x_scale=1.0 / 255.0,
        meta={"source": str(folder.resolve()), "pixel_scaling": "x / 255, then standardized"},
    )


# ----- CIFAR-10 (python pickle batches)

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


# A real batch is 31,035,704 bytes (10,000 images); a file well beyond that is refused before
# it is read, and everything unpickled from it is bounded by its size.
_CIFAR_BATCH_MAX_BYTES = 64 << 20


class _CraftedPickle(Exception):  # noqa: N818 - internal, becomes a TaskError with the path
    """A CIFAR batch asks for something a real batch never does."""


def _plain_dtype(*args: Any) -> np.dtype:
    """``np.dtype`` for a pickle, refusing object dtypes (arrays of arbitrary objects)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise _CraftedPickle(f"an array of Python objects (dtype {dt})")
    return dt


def _brief(value: Any) -> str:
    from inag.safe_io import brief

    return brief(value)


def _guarded(fn: Any, name: str) -> Any:
    """numpy's array rebuilders, refusing object dtypes and (``_reconstruct``) any shape but
    the empty placeholder real pickles use, so nothing is allocated beyond the data read."""

    def call(*args: Any) -> Any:
        if name == "_reconstruct":
            shape = args[1] if len(args) > 1 else ()
            dims = shape if isinstance(shape, tuple) else (shape,)
            if not all(isinstance(d, int) and 0 <= d <= 1 for d in dims):
                raise _CraftedPickle(f"a placeholder array of shape {_brief(shape)}")
        for a in args:
            if isinstance(a, np.dtype) and a.hasobject:
                raise _CraftedPickle(f"an array of Python objects (dtype {a})")
        return fn(*args)

    return call


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch may reference: numpy array/dtype rebuilding."""
    import _codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _guarded(
            multiarray._reconstruct, "_reconstruct"
        )
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{module}.numeric", "_frombuffer")] = _guarded(
                numeric._frombuffer, "_frombuffer"
            )
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except the numpy array constructors (a pickle can run code)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise TaskError(
                f"cifar10: {str(self._path)!r} references {module}.{name}, which a CIFAR-10 "
                "batch never does; refusing to unpickle it (only numpy arrays are allowed, "
                "since loading an arbitrary pickle can run arbitrary code)"
            )
        return found


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import io

    from inag.safe_io import InputError, read_bytes

    expected = "a dict with b'data' (uint8, N x 3072) and b'labels' (N ints in 0..9)"
    try:
        raw = read_bytes(path, "a CIFAR-10 python batch", _CIFAR_BATCH_MAX_BYTES)
    except InputError as exc:
        raise TaskError(f"cifar10: {exc}") from None
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except TaskError:
        raise
    except _CraftedPickle as exc:
        raise TaskError(
            f"cifar10: {str(path)!r} asks for {exc}, which a CIFAR-10 batch never does; "
            f"refusing it (expected {expected})"
        ) from None
    except Exception as exc:  # pickle raises many types on corrupt input
        raise TaskError(
            f"cifar10: {str(path)!r} is not a readable CIFAR-10 python batch "
            f"({type(exc).__name__}: {exc}); expected a pickle of {expected}"
        ) from None
    if not isinstance(batch, dict):
        raise TaskError(
            f"cifar10: {str(path)!r} holds a {type(batch).__name__}; expected {expected}"
        )

    def get(key: str) -> Any:
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise TaskError(
            f"cifar10: {str(path)!r} has no {key!r} entry (keys: {sorted(map(repr, batch))}); "
            f"expected {expected}"
        )

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise TaskError(f"cifar10: {str(path)!r} b'data' is {found}; expected {expected}")
    if data.shape[1] != 3 * 32 * 32:
        raise TaskError(
            f"cifar10: {str(path)!r} b'data' has {data.shape[1]} columns; expected {expected}"
        )
    try:
        label_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise TaskError(
            f"cifar10: {str(path)!r} b'labels' is not a list of integers; expected {expected}"
        ) from None
    if label_arr.shape != (data.shape[0],):
        raise TaskError(
            f"cifar10: {str(path)!r} has {data.shape[0]} images but labels shaped "
            f"{label_arr.shape}; expected {expected}"
        )
    if label_arr.size and (label_arr.min() < 0 or label_arr.max() > 9):
        raise TaskError(f"cifar10: {str(path)!r} has labels outside 0..9; expected {expected}")
    return data, label_arr


def _load_cifar10(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    names = ", ".join((*_CIFAR_TRAIN, _CIFAR_TEST))
    expected = f"the extracted 'cifar-10-batches-py' directory (or its parent) holding {names}"
    path = Path(arg).expanduser()
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        raise TaskError(
            f"cifar10: {str(path)!r} is the archive; extract it first (tar xzf) and pass "
            f"{expected}"
        )
    folder = _require_dir(arg, "cifar10", expected)
    if not (folder / _CIFAR_TEST).is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    missing = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (folder / n).is_file()]
    if missing:
        raise TaskError(
            f"cifar10: {str(folder)!r} lacks {', '.join(missing)}; expected {expected}"
        )
    train = [_read_cifar_batch(folder / n) for n in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_TEST)
    return _Raw(
        name="cifar10",
        kind="classification",
        input_shape=(3, 32, 32),
        output_size=10,
        x=np.concatenate([x for x, _ in train]).reshape(-1, 3, 32, 32),
        y=np.concatenate([y for _, y in train]),
        x_test=x_test.reshape(-1, 3, 32, 32),
        y_test=y_test,
        x_scale=1.0 / 255.0,
        meta={"source": str(folder.resolve()), "pixel_scaling": "x / 255, then standardized"},
    )


# ----- CSV tasks


def _read_csv(path_text: str, task: str, expected: str) -> tuple[Path, list[str], list[list[str]]]:
    """Header and rows (with 1-based line numbers checked for ragged rows)."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TaskError(f"{task}: the file {str(path)!r} does not exist; expected {expected}")
    if not path.is_file():
        raise TaskError(f"{task}: {str(path)!r} is not a file; expected {expected}")
    from inag.safe_io import InputError, read_text

    try:
        text = read_text(path, f"a UTF-8 CSV ({expected})", max_bytes=MAX_CSV_BYTES)
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except InputError as exc:
        raise TaskError(f"{task}: {exc}") from None
    except csv.Error as exc:
        raise TaskError(
            f"{task}: {str(path)!r} is not a readable CSV ({exc}); expected {expected}"
        ) from None
    nonblank = [(i + 1, row) for i, row in enumerate(lines) if any(c.strip() for c in row)]
    if not nonblank:
        raise TaskError(f"{task}: {str(path)!r} is empty; expected {expected}")
    header = [c.strip() for c in nonblank[0][1]]
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise TaskError(f"{task}: {str(path)!r} repeats header column(s) {duplicates}")
    rows = []
    for line, row in nonblank[1:]:
        if len(row) != len(header):
            raise TaskError(
                f"{task}: {str(path)!r} line {line} has {len(row)} cells but the header has "
                f"{len(header)} columns"
            )
        rows.append([c.strip() for c in row])
    return path, header, rows


def _is_missing(cell: str) -> bool:
    return cell.lower() in _MISSING_TOKENS


def _parse_numeric_column(
    rows: Sequence[Sequence[str]], col: int, column: str, path: Path, task: str, hint: str
) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            value = float(row[col])
        except ValueError:
            raise TaskError(
                f"{task}: column {column!r} of {str(path)!r} must be numeric but holds "
                f"{row[col]!r}; {hint}"
            ) from None
        if not math.isfinite(value):
            raise TaskError(
                f"{task}: column {column!r} of {str(path)!r} holds {row[col]!r}; {hint}"
            )
        out[i] = value
    return out


_CALIFORNIA_NUMERIC = (
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
)
_CALIFORNIA_TARGET = "median_house_value"
_CALIFORNIA_CATEGORICAL = "ocean_proximity"
CALIFORNIA_CATEGORIES = ("<1H OCEAN", "INLAND", "ISLAND", "NEAR BAY", "NEAR OCEAN")


def _load_california(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    columns = (*_CALIFORNIA_NUMERIC, _CALIFORNIA_TARGET, _CALIFORNIA_CATEGORICAL)
    expected = f"the California housing CSV with header {','.join(columns)}"
    path, header, rows = _read_csv(arg, "california", expected)
    missing_cols = [c for c in columns if c not in header]
    if missing_cols:
        raise TaskError(
            f"california: {str(path)!r} lacks column(s) {missing_cols} (found {header}); "
            f"expected {expected}"
        )
    idx = {c: header.index(c) for c in columns}
    used = [idx[c] for c in columns]
    kept = [row for row in rows if not any(_is_missing(row[i]) for i in used)]
    hint = "expected a number in every numeric column"
    x_num = (
        np.stack(
            [
                _parse_numeric_column(kept, idx[c], c, path, "california", hint)
                for c in _CALIFORNIA_NUMERIC
            ],
            axis=1,
        )
        if kept
        else np.zeros((0, len(_CALIFORNIA_NUMERIC)))
    )
    y = _parse_numeric_column(
        kept, idx[_CALIFORNIA_TARGET], _CALIFORNIA_TARGET, path, "california", hint
    )
    one_hot = np.zeros((len(kept), len(CALIFORNIA_CATEGORIES)))
    for i, row in enumerate(kept):
        value = row[idx[_CALIFORNIA_CATEGORICAL]]
        if value not in CALIFORNIA_CATEGORIES:
            raise TaskError(
                f"california: {_CALIFORNIA_CATEGORICAL} of {str(path)!r} holds {value!r}; "
                f"expected one of {list(CALIFORNIA_CATEGORIES)}"
            )
        one_hot[i, CALIFORNIA_CATEGORIES.index(value)] = 1.0
    names = [
        *_CALIFORNIA_NUMERIC,
        *(f"{_CALIFORNIA_CATEGORICAL}={c}" for c in CALIFORNIA_CATEGORIES),
    ]
    return _Raw(
        name="california",
        kind="regression",
        input_shape=(len(names),),
        output_size=1,
        x=np.concatenate([x_num, one_hot], axis=1),
        y=y,
        meta={
            "source": str(path.resolve()),
            "target": _CALIFORNIA_TARGET,
            "feature_names": names,
            "rows_read": len(rows),
            "rows_dropped_missing": len(rows) - len(kept),
        },
    )


def _split_query(arg: str) -> tuple[str, str]:
    path, sep, query = arg.rpartition("?")
    return (path, query) if sep else (arg, "")


def _load_csv(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    form = _TASK_FORMS["csv"]
    path_text, query = _split_query(arg)
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("target", "kind"):
            raise TaskError(
                f"csv: cannot read option {part!r} in {arg!r}; the spec form is {form!r}"
            )
        options[key.strip()] = value.strip()
    target = options.get("target")
    if not target:
        raise TaskError(f"csv: the spec {arg!r} names no target column; the spec form is {form!r}")
    kind_opt = options.get("kind")
    if kind_opt is not None and kind_opt not in ("regression", "classification"):
        raise TaskError(f"csv: kind must be regression or classification, found {kind_opt!r}")
    expected = "a CSV file with a header row and numeric feature columns"
    path, header, rows = _read_csv(path_text, "csv", expected)
    if target not in header:
        raise TaskError(f"csv: {str(path)!r} has no column {target!r}; its columns are {header}")
    if len(header) < 2:
        raise TaskError(
            f"csv: {str(path)!r} has only the target column; no features to learn from"
        )
    kept = [row for row in rows if not any(_is_missing(c) for c in row)]
    t_col = header.index(target)
    features = [c for c in header if c != target]
    hint = "only numeric feature columns are supported (encode categories as numbers first)"
    x = (
        np.stack(
            [_parse_numeric_column(kept, header.index(c), c, path, "csv", hint) for c in features],
            axis=1,
        )
        if kept
        else np.zeros((0, len(features)))
    )
    raw_target = [row[t_col] for row in kept]
    numeric: np.ndarray | None
    try:
        numeric = np.array([float(v) for v in raw_target], dtype=np.float64)
        if not np.isfinite(numeric).all():
            numeric = None
    except ValueError:
        numeric = None
    if kind_opt is None:
        integer = numeric is not None and bool(np.all(numeric == np.round(numeric)))
        n_distinct = len(set(raw_target)) if numeric is None else len(np.unique(numeric))
        kind: TaskKind = (
            "classification"
            if numeric is None or (integer and n_distinct <= MAX_INFERRED_CLASSES)
            else "regression"
        )
        if numeric is None and n_distinct > MAX_INFERRED_CLASSES:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} is not numeric and has {n_distinct} "
                f"distinct values (more than {MAX_INFERRED_CLASSES}); pass "
                "&kind=classification to use it as class labels anyway"
            )
    else:
        kind = kind_opt  # type: ignore[assignment]
    meta: dict[str, Any] = {
        "source": str(path.resolve()),
        "target": target,
        "feature_names": features,
        "kind_inferred": kind_opt is None,
        "rows_read": len(rows),
        "rows_dropped_missing": len(rows) - len(kept),
    }
    if kind == "regression":
        if numeric is None:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} must be numeric for regression"
            )
        y = numeric
        output_size = 1
    else:
        if numeric is not None:
            classes: list[Any] = sorted(np.unique(numeric).tolist())
            if all(float(c).is_integer() for c in classes):
                classes = [int(c) for c in classes]
            lookup = {float(c): i for i, c in enumerate(classes)}
            y = np.array([lookup[v] for v in numeric.tolist()], dtype=np.int64)
        else:
            classes = sorted(set(raw_target))
            lookup_s = {c: i for i, c in enumerate(classes)}
            y = np.array([lookup_s[v] for v in raw_target], dtype=np.int64)
        if len(classes) < 2:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} has {len(classes)} distinct value(s); "
                "classification needs at least 2"
            )
        output_size = len(classes)
        meta["classes"] = classes
    return _Raw(
        name="csv",
        kind=kind,
        input_shape=(len(features),),
        output_size=output_size,
        x=x,
        y=y,
        meta=meta,
    )


_LOADERS: dict[str, Callable[[str | None, int], _Raw]] = {
    "data_a": functools.partial(_load_polynomial, "data_a"),
    "data_b": functools.partial(_load_polynomial, "data_b"),
    "digits": _load_digits,
    "diabetes": _load_diabetes,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "california": _load_california,
    "csv": _load_csv,
}


# --------------------------------------------------------------------------- performance


def performance(kind: str, y_true: Any, y_pred: Any) -> float:
    """R^2 clipped to [0, 1] (regression) or accuracy (classification); 0.0 if y_pred diverged.

    Classification predictions are labels ``(n,)`` or scores/logits ``(n, K)`` (argmax taken);
    regression predictions are ``(n,)`` or ``(n, 1)``.
    """
    pred = np.asarray(y_pred)
    return float(performance_batch(kind, y_true, pred[None])[0])


def performance_batch(kind: str, y_true: Any, y_pred_batch: Any) -> np.ndarray:
    """:func:`performance` for B candidate nets at once: (B, n) or (B, n, K) -> (B,) float64."""
    if kind not in ("regression", "classification"):
        raise TaskError(f"kind must be regression or classification, found {kind!r}")
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred_batch)
    if truth.ndim != 1 or truth.shape[0] == 0:
        raise TaskError(f"y_true must be a non-empty 1-D array, found shape {truth.shape}")
    if not np.issubdtype(truth.dtype, np.number) or not np.isfinite(truth).all():
        raise TaskError("y_true must be finite numbers")
    if not np.issubdtype(pred.dtype, np.number) and pred.dtype != np.bool_:
        raise TaskError(f"predictions must be numeric, found dtype {pred.dtype}")
    n = truth.shape[0]
    if kind == "regression":
        if pred.ndim == 3 and pred.shape[2] == 1:
            pred = pred[..., 0]
        if pred.ndim != 2 or pred.shape[1] != n:
            raise TaskError(
                f"regression predictions must be shaped (B, {n}) or (B, {n}, 1), found "
                f"{pred.shape}"
            )
        return _r2_batch(truth.astype(np.float64), pred.astype(np.float64))
    if not np.all(truth == np.round(truth)):
        raise TaskError("classification y_true must hold integer class labels")
    if pred.ndim == 3 and pred.shape[1] == n:
        finite = np.isfinite(pred).all(axis=(1, 2))
        labels = np.argmax(pred, axis=2)
    elif pred.ndim == 2 and pred.shape[1] == n:
        finite = np.isfinite(pred).all(axis=1)
        labels = pred
    else:
        raise TaskError(
            f"classification predictions must be labels (B, {n}) or scores (B, {n}, K), found "
            f"{pred.shape}"
        )
    accuracy = np.mean(labels == truth[None, :], axis=1, dtype=np.float64)
    return np.where(finite, accuracy, 0.0)


def _r2_batch(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    finite = np.isfinite(pred).all(axis=1)
    safe = np.where(finite[:, None], pred, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        ss_res = np.sum((safe - truth[None, :]) ** 2, axis=1)
        ss_tot = float(np.sum((truth - truth.mean()) ** 2))
        # A constant target: only an exact prediction explains it.
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0.0 else np.where(ss_res == 0.0, 1.0, 0.0)
    r2 = np.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(finite, np.clip(r2, 0.0, 1.0), 0.0)
