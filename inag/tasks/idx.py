"""MNIST in its IDX files (plain or gzip), sizes checked against the header first."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import (
    TaskError,
    _Raw,
    _require_dir,
)

# ----- MNIST (IDX)

_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051),
    "train_labels": ("train-labels-idx1-ubyte", 2049),
    "test_images": ("t10k-images-idx3-ubyte", 2051),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049),
}


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


register_task(
    TaskLoader(
        "mnist",
        "mnist:DIR",
        _load_mnist,
        takes_path=True,
        help="MNIST IDX files (plain or .gz) in DIR",
    )
)
