"""CIFAR-10 python batches, read with a restricted unpickler and checked sizes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import (
    TaskError,
    _Raw,
    _require_dir,
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


def _cifar_labels(labels: Any, path: Path, expected: str) -> np.ndarray:
    """The labels as int64, refusing anything but integers 0..9 one by one.

    ``np.asarray(labels, dtype=np.int64)`` would truncate floats (1.7 -> 1), take bools as 0/1
    and raise OverflowError on huge ints, so each value is checked before conversion.
    """
    if isinstance(labels, np.ndarray):  # real batches hold a list; accept an integer array too
        if labels.dtype.kind not in "iu":
            raise TaskError(
                f"cifar10: {str(path)!r} b'labels' is a {labels.dtype} array, not integers; "
                f"expected {expected}"
            )
        bad = np.flatnonzero((labels < 0) | (labels > 9))
        if bad.size:
            first = labels.reshape(-1)[bad[0]]
            raise TaskError(
                f"cifar10: {str(path)!r} b'labels' holds {int(first)} (element {int(bad[0])}), "
                f"outside 0..9; expected {expected}"
            )
        return labels.astype(np.int64)
    if not isinstance(labels, list | tuple):
        raise TaskError(
            f"cifar10: {str(path)!r} b'labels' is a {type(labels).__name__}, not a list of "
            f"integers; expected {expected}"
        )
    for i, value in enumerate(labels):
        integer = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
        if not integer or not 0 <= value <= 9:
            what = "outside 0..9" if integer else f"a {type(value).__name__}, not an integer"
            # repr of a huge int is slow and refused past 4300 digits
            big = isinstance(value, int) and value.bit_length() > 1000
            shown = f"an integer of {value.bit_length()} bits" if big else _brief(value)
            raise TaskError(
                f"cifar10: {str(path)!r} b'labels' holds {shown} at index {i} ({what}); "
                f"expected {expected}"
            )
    return np.array(labels, dtype=np.int64)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:

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
    label_arr = _cifar_labels(labels, path, expected)
    if label_arr.shape != (data.shape[0],):
        raise TaskError(
            f"cifar10: {str(path)!r} has {data.shape[0]} images but labels shaped "
            f"{label_arr.shape}; expected {expected}"
        )
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


def _cifar_files(arg: str | None) -> list[Path]:
    if arg is None:
        return []
    path = Path(arg).expanduser()
    out: list[Path] = []
    for folder in (path, path / "cifar-10-batches-py"):
        if folder.is_dir():
            out.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    return out


register_task(
    TaskLoader(
        "cifar10",
        "cifar10:DIR",
        _load_cifar10,
        takes_path=True,
        files=_cifar_files,
        help="CIFAR-10 python batches in DIR",
    )
)
