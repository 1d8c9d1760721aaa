"""Tests for the task registry: real files in the real formats, written to tmp_path."""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from inag import tasks
from inag.tasks import (
    CALIFORNIA_CATEGORIES,
    CALIFORNIA_COLUMNS,
    POLYNOMIAL_TASKS,
    TaskData,
    TaskError,
    available_tasks,
    load_task,
    performance,
    performance_batch,
)

# --------------------------------------------------------------------------- file writers


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> Path:
    """An IDX file exactly as LeCun's site ships it (big-endian header, uint8 payload)."""
    payload = struct.pack(">i", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_mnist(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Train files gzipped, test files plain: both spellings must load."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(
        folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), 2051, True
    )
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), 2049, True)
    write_idx(
        folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), 2051, False
    )
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), 2049, False)
    return folder


def cifar_batch(rng: np.random.Generator, n: int, label: bytes) -> dict[bytes, object]:
    """The dict layout of the real python batches (bytes keys under encoding='bytes')."""
    return {
        b"batch_label": label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def make_cifar(root: Path, n: int = 12, protocol: int = 2, seed: int = 0) -> Path:
    """Writes ``root/cifar-10-batches-py`` like the extracted archive."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        batch = cifar_batch(rng, n, f"training batch {i} of 5".encode())
        with (folder / f"data_batch_{i}").open("wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump(cifar_batch(rng, n, b"testing batch 1 of 1"), handle, protocol=protocol)
    return folder


CALIFORNIA_HEADER = list(CALIFORNIA_COLUMNS)


def make_california(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CALIFORNIA_HEADER)
        for i in range(n):
            income = rng.uniform(0.5, 15.0)
            rooms = rng.integers(100, 8000)
            bedrooms = "" if i == 7 else str(int(rooms // 5))  # the real file's missing cells
            writer.writerow(
                [
                    f"{rng.uniform(-124.3, -114.3):.2f}",
                    f"{rng.uniform(32.5, 42.0):.2f}",
                    f"{rng.integers(1, 52)}.0",
                    f"{rooms}.0",
                    bedrooms,
                    f"{rng.integers(50, 5000)}.0",
                    f"{rng.integers(20, 1500)}.0",
                    f"{income:.4f}",
                    f"{40000 * income + rng.normal(0, 20000):.1f}",
                    CALIFORNIA_CATEGORIES[i % len(CALIFORNIA_CATEGORIES)],
                ]
            )
    return path


def make_csv(path: Path, n: int = 200, target_values: np.ndarray | None = None) -> Path:
    """Columns id, a, b, label; ``id`` makes every row unique (to check split disjointness)."""
    rng = np.random.default_rng(1)
    labels = rng.choice([2, 5, 7], n) if target_values is None else target_values
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "a", "b", "label"])
        for i in range(n):
            writer.writerow([i, f"{rng.normal():.6f}", f"{rng.normal(3, 2):.6f}", labels[i]])
    return path


def assert_standardized(data: TaskData) -> None:
    axes = (0, 2, 3) if len(data.input_shape) == 3 else (0,)
    assert np.allclose(data.x_train.mean(axis=axes, dtype=np.float64), 0.0, atol=1e-4)
    std = data.x_train.std(axis=axes, dtype=np.float64)
    assert np.allclose(std, 1.0, atol=1e-3)
    if data.kind == "regression":
        assert abs(float(data.y_train.mean(dtype=np.float64))) < 1e-4
        assert abs(float(data.y_train.std(dtype=np.float64)) - 1.0) < 1e-3


def assert_well_formed(data: TaskData) -> None:
    y_dtype = np.float32 if data.kind == "regression" else np.int64
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.dtype == np.float32 and x.shape[1:] == data.input_shape
        assert y.dtype == y_dtype and y.shape == (x.shape[0],)
        assert not x.flags.writeable and not y.flags.writeable
        assert np.isfinite(x).all()
    if data.kind == "classification":
        all_y = np.concatenate([data.y_train, data.y_val, data.y_test])
        assert all_y.min() >= 0 and all_y.max() < data.output_size
    else:
        assert data.output_size == 1
    assert data.meta["n_train"] == data.x_train.shape[0]
    assert data.meta["n_val"] == data.x_val.shape[0]
    assert data.meta["n_test"] == data.x_test.shape[0]


def row_set(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(x.shape[0], -1)}


def all_arrays(data: TaskData) -> list[np.ndarray]:
    return [data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test]


# --------------------------------------------------------------------------- registry


def test_available_tasks_lists_every_form() -> None:
    forms = available_tasks()
    for name in ("data_a", "data_b", "digits", "diabetes", "mnist", "mnist:DIR", "cifar10:DIR"):
        assert name in forms
    assert "california:FILE.csv" in forms
    assert any(f.startswith("csv:FILE.csv?target=COL") for f in forms)


def test_unknown_task_lists_available_ones() -> None:
    with pytest.raises(TaskError) as info:
        load_task("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    for form in available_tasks():
        assert form in message


@pytest.mark.parametrize("spec", ["mnist:", "cifar10:", "cifar10", "california", "csv"])
def test_path_task_without_path_shows_the_form(spec: str) -> None:
    with pytest.raises(TaskError, match=r"reads local files: write it as .*:(DIR|FILE\.csv)"):
        load_task(spec)


def test_a_name_with_a_bare_and_a_path_form_lists_both() -> None:
    """``mnist`` is the bundled digits, ``mnist:DIR`` IDX files: one name, two loaders."""
    loaders = tasks.task_loaders()
    assert loaders["mnist"].name == loaders["mnist:DIR"].name == "mnist"
    assert not loaders["mnist"].takes_path and loaders["mnist:DIR"].takes_path
    with pytest.raises(TaskError, match="write it as 'mnist' or 'mnist:DIR'"):
        load_task("mnist:")


@pytest.mark.parametrize(
    ("form", "name", "expected"),
    [
        ("mnist:{}", "nowhere", "train-images-idx3-ubyte"),
        ("cifar10:{}", "absent", "test_batch"),
        ("california:{}", "housing.csv", "median_house_value"),
    ],
)
def test_a_missing_path_is_named_with_what_was_expected(
    tmp_path: Path, form: str, name: str, expected: str
) -> None:
    missing = tmp_path / name
    with pytest.raises(TaskError) as info:
        load_task(form.format(missing))
    assert str(missing) in str(info.value) and expected in str(info.value)


def test_embedded_task_refuses_an_argument() -> None:
    with pytest.raises(TaskError, match="takes no argument"):
        load_task("data_a:/tmp/x")


@pytest.mark.parametrize(
    "bad", [{"seed": -1}, {"max_train": 0}, {"seed": 1.5}, {"max_train": True}]
)
def test_bad_seed_or_max_train(bad: dict[str, object]) -> None:
    with pytest.raises(TaskError):
        load_task("data_a", **bad)  # type: ignore[arg-type]


def test_task_error_is_a_value_error() -> None:
    assert issubclass(TaskError, ValueError)


# --------------------------------------------------------------------------- synthetic tasks


@pytest.mark.parametrize("name", ["data_a", "data_b"])
def test_polynomial_task_shapes_and_meta(name: str) -> None:
    data = load_task(name, seed=3)
    assert data.kind == "regression" and data.input_shape == (1,) and data.output_size == 1
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (2000, 500, 1000)
    assert_well_formed(data)
    assert_standardized(data)
    meta = data.meta
    assert meta["noise_ceiling_r2"] == pytest.approx(0.97)
    task = POLYNOMIAL_TASKS[name]
    assert meta["x_range"] == [task.x_low, task.x_high]
    sigma, f_std = meta["noise_sigma"], meta["function_std"]
    assert f_std**2 / (f_std**2 + sigma**2) == pytest.approx(0.97)
    # The raw x values (undo the standardization) lie in the documented range.
    x_raw = data.x_train[:, 0] * meta["x_std"][0] + meta["x_mean"][0]
    assert x_raw.min() >= task.x_low - 1e-4 and x_raw.max() <= task.x_high + 1e-4
    assert x_raw.min() < task.x_low + 0.05 and x_raw.max() > task.x_high - 0.05


def test_polynomial_function_std_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    for task in POLYNOMIAL_TASKS.values():
        x = rng.uniform(task.x_low, task.x_high, 400_000)
        assert task.function_std == pytest.approx(task.f(x).std(), rel=0.01)
    assert POLYNOMIAL_TASKS["data_a"].noise_sigma == pytest.approx(8.788, abs=1e-3)
    assert POLYNOMIAL_TASKS["data_b"].noise_sigma == pytest.approx(1.605, abs=1e-3)


@pytest.mark.parametrize(("name", "degree"), [("data_a", 4), ("data_b", 7)])
def test_polynomial_fit_reaches_the_noise_ceiling(name: str, degree: int) -> None:
    """A fit of the right degree is the best possible model: its R^2 is the noise ceiling."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    data = load_task(name, seed=0)
    model = make_pipeline(PolynomialFeatures(degree), LinearRegression())
    model.fit(data.x_train, data.y_train)
    r2 = performance("regression", data.y_test, model.predict(data.x_test))
    assert r2 == pytest.approx(data.meta["noise_ceiling_r2"], abs=0.015)
    # A straight line is far below it: the task leaves room for architectures to spread.
    line = LinearRegression().fit(data.x_train, data.y_train)
    assert performance("regression", data.y_test, line.predict(data.x_test)) < 0.8


def test_synthetic_seed_determinism() -> None:
    first = load_task("data_b", seed=5)
    tasks._load_cached.cache_clear()
    again = load_task("data_b", seed=5)
    for a, b in zip(all_arrays(first), all_arrays(again), strict=True):
        assert a is not b and np.array_equal(a, b)
    other = load_task("data_b", seed=6)
    assert not np.array_equal(first.x_train, other.x_train)


def test_max_train_subsamples_and_restandardizes() -> None:
    full = load_task("data_a", seed=0)
    small = load_task("data_a", seed=0, max_train=300)
    assert small.x_train.shape == (300, 1) and small.meta["max_train"] == 300
    assert len(small.x_val) == len(full.x_val) and len(small.x_test) == len(full.x_test)
    assert_standardized(small)


def test_cached_result_is_read_only_and_meta_is_private() -> None:
    data = load_task("data_a", seed=1)
    with pytest.raises(ValueError):
        data.x_train[0, 0] = 1.0
    data.meta["n_train"] = -1
    assert load_task("data_a", seed=1).meta["n_train"] == 2000
    assert "x_train" not in repr(data)


# --------------------------------------------------------------------------- sklearn tasks


def test_digits() -> None:
    data = load_task("digits", seed=0)
    assert data.kind == "classification"
    assert data.input_shape == (1, 8, 8) and data.output_size == 10
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 1797
    assert_well_formed(data)
    assert_standardized(data)


def test_diabetes() -> None:
    data = load_task("diabetes", seed=0)
    assert data.kind == "regression" and data.input_shape == (10,)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 442
    assert_well_formed(data)
    assert_standardized(data)
    other = load_task("diabetes", seed=1)
    assert not np.array_equal(data.y_test, other.y_test)


# --------------------------------------------------------------------------- MNIST


def test_mnist_from_idx_files(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    data = load_task(f"mnist:{folder}", seed=0)
    assert data.kind == "classification" and data.input_shape == (1, 28, 28)
    assert data.output_size == 10
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (54, 6, 20)
    assert_well_formed(data)
    assert_standardized(data)
    assert len(data.meta["x_mean"]) == 1 and 0.0 < data.meta["x_mean"][0] < 1.0  # [0, 1] units
    # The official test set is the test split, in file order, standardized with train stats.
    raw_test = (folder / "t10k-labels-idx1-ubyte").read_bytes()
    assert np.array_equal(data.y_test, np.frombuffer(raw_test, np.uint8, offset=8))
    assert not row_set(data.x_train) & row_set(data.x_val)
    other = load_task(f"mnist:{folder}", seed=1)
    assert not np.array_equal(data.y_val, other.y_val) or not np.array_equal(
        data.x_val, other.x_val
    )


def test_mnist_dotted_names_and_max_train(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "m")
    for path in folder.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    data = load_task(f"mnist:{folder}", seed=0, max_train=10)
    assert data.x_train.shape == (10, 1, 28, 28)


def test_mnist_missing_file_is_named(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TaskError, match="t10k-labels-idx1-ubyte"):
        load_task(f"mnist:{folder}")


def test_mnist_bad_magic(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    # Labels written where images belong: magic 2049 instead of 2051.
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros(20), 2049, False)
    with pytest.raises(TaskError) as info:
        load_task(f"mnist:{folder}")
    assert "2051" in str(info.value) and "2049" in str(info.value)


def test_mnist_truncated_file(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TaskError, match="truncated"):
        load_task(f"mnist:{folder}")


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(19), 2049, False)
    with pytest.raises(TaskError, match="20 images but 19 labels"):
        load_task(f"mnist:{folder}")


def test_mnist_fake_gz(tmp_path: Path) -> None:
    folder = make_mnist(tmp_path / "mnist")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01 not gzip")
    with pytest.raises(TaskError, match="not gzip"):
        load_task(f"mnist:{folder}")


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches(tmp_path: Path, protocol: int) -> None:
    folder = make_cifar(tmp_path, n=12, protocol=protocol)
    for spec_dir in (folder, tmp_path):  # the batches folder itself or its parent
        data = load_task(f"cifar10:{spec_dir}", seed=0)
        assert data.kind == "classification" and data.input_shape == (3, 32, 32)
        assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (54, 6, 12)
        assert_well_formed(data)
        assert_standardized(data)
        assert len(data.meta["x_mean"]) == 3
    with (folder / "test_batch").open("rb") as handle:
        test_batch = pickle.load(handle, encoding="bytes")
    assert np.array_equal(data.y_test, np.array(test_batch[b"labels"]))
    # Channel-major layout: the first 1024 bytes of a row are the red plane.
    red = test_batch[b"data"][0, :1024].reshape(32, 32).astype(np.float64) / 255
    mean, std = data.meta["x_mean"][0], data.meta["x_std"][0]
    assert np.allclose(data.x_test[0, 0], (red - mean) / std, atol=1e-4)


class _RunsShellCommand:
    """A pickle payload that would create ``marker`` through os.system when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "inside"])
def test_cifar10_malicious_pickle_is_refused(tmp_path: Path, where: str) -> None:
    folder = make_cifar(tmp_path, n=4)
    marker = tmp_path / "pwned"
    payload = _RunsShellCommand(marker)
    evil: object = payload
    if where == "inside":
        evil = cifar_batch(np.random.default_rng(0), 4, b"training batch 1 of 5")
        evil[b"labels"] = payload  # type: ignore[index]
    with (folder / "data_batch_1").open("wb") as handle:
        pickle.dump(evil, handle, protocol=2)
    # The payload is real: the plain unpickler runs it (on a control marker).
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsShellCommand(control), protocol=2))
    assert control.exists() and not marker.exists()
    with pytest.raises(TaskError) as info:
        load_task(f"cifar10:{folder}")
    assert "system" in str(info.value) and "data_batch_1" in str(info.value)
    assert not marker.exists()


def test_cifar10_wrong_layout(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path, n=4)
    with (folder / "data_batch_2").open("wb") as handle:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, handle)
    with pytest.raises(TaskError, match="3072"):
        load_task(f"cifar10:{folder}")
    with (folder / "data_batch_2").open("wb") as handle:
        pickle.dump([1, 2, 3], handle)
    with pytest.raises(TaskError, match="holds a list"):
        load_task(f"cifar10:{folder}")
    with (folder / "data_batch_2").open("wb") as handle:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8)}, handle)
    with pytest.raises(TaskError, match="labels"):
        load_task(f"cifar10:{folder}")
    (folder / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(TaskError, match="not a readable"):
        load_task(f"cifar10:{folder}")


def test_cifar10_missing_files(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path, n=4)
    (folder / "data_batch_5").unlink()
    with pytest.raises(TaskError, match="data_batch_5"):
        load_task(f"cifar10:{folder}")


def _set_cifar_labels(folder: Path, labels: object, name: str = "data_batch_2") -> None:
    """Rewrites one batch of ``make_cifar(..., n=4)`` with other labels, images unchanged."""
    batch = cifar_batch(np.random.default_rng(1), 4, b"training batch 2 of 5")
    batch[b"labels"] = labels
    with (folder / name).open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        ([2**70] * 4, "holds 1180591620717411303424"),  # np.asarray raised OverflowError
        ([1.7] * 4, "holds 1.7 at index 0"),  # was truncated to class 1
        ([0, 1, True, 3], "holds True at index 2"),  # a bool is not a label
        ([0, 1, 2, 10], "holds 10 at index 3"),
        ([-1, 1, 2, 3], "holds -1 at index 0"),
        ([10**5000] * 4, "holds an integer of 16610 bits"),  # too long to print at all
        (np.full(4, 1.0), "is a float64 array"),
        ("0123", "is a str"),
    ],
)
def test_cifar10_labels_must_be_integers_0_to_9(
    tmp_path: Path, labels: object, found: str
) -> None:
    folder = make_cifar(tmp_path, n=4)
    _set_cifar_labels(folder, labels)
    with pytest.raises(TaskError) as info:
        load_task(f"cifar10:{folder}")
    message = str(info.value)
    assert "data_batch_2" in message and "b'labels'" in message and found in message
    assert "0..9" in message


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32])
def test_cifar10_integer_array_labels_still_load(tmp_path: Path, dtype: type) -> None:
    folder = make_cifar(tmp_path, n=4)
    labels = np.array([9, 0, 3, 7], dtype=dtype)
    _set_cifar_labels(folder, labels, name="test_batch")
    data = load_task(f"cifar10:{folder}", seed=0)
    assert data.y_test.dtype == np.int64 and data.y_test.tolist() == [9, 0, 3, 7]
    _set_cifar_labels(folder, np.array([1, 2, 3, 12], dtype=dtype), name="test_batch")
    with pytest.raises(TaskError, match=r"test_batch.*holds 12"):
        load_task(f"cifar10:{folder}")


# --------------------------------------------------------------------------- California


def test_california_csv(tmp_path: Path) -> None:
    path = make_california(tmp_path / "housing.csv")
    data = load_task(f"california:{path}", seed=0)
    assert data.kind == "regression" and data.input_shape == (13,)
    assert data.meta["rows_dropped_missing"] == 1 and data.meta["rows_read"] == 300
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 299
    assert (len(data.x_val), len(data.x_test)) == (60, 60)
    assert data.meta["feature_names"][-5:] == [
        f"ocean_proximity={c}" for c in CALIFORNIA_CATEGORIES
    ]
    assert_well_formed(data)
    assert_standardized(data)
    # The one-hot block has exactly one 'hot' (above-mean) entry per row.
    hot = data.x_train[:, 8:] > 0
    assert np.all(hot.sum(axis=1) == 1)
    # median_income predicts the target: a linear fit does well.
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(data.x_train, data.y_train)
    assert performance("regression", data.y_test, model.predict(data.x_test)) > 0.8


def test_california_wrong_columns(tmp_path: Path) -> None:
    path = tmp_path / "housing.csv"
    path.write_text("longitude,latitude,price\n1,2,3\n")
    with pytest.raises(TaskError) as info:
        load_task(f"california:{path}")
    assert "ocean_proximity" in str(info.value) and "median_house_value" in str(info.value)


def test_california_unknown_category_and_bad_number(tmp_path: Path) -> None:
    path = make_california(tmp_path / "housing.csv", n=20)
    text = path.read_text().replace("NEAR BAY", "MOON", 1)
    path.write_text(text)
    with pytest.raises(TaskError, match="MOON"):
        load_task(f"california:{path}")
    lines = make_california(tmp_path / "h2.csv", n=20).read_text().splitlines()
    cells = lines[3].split(",")
    cells[2] = "old"
    lines[3] = ",".join(cells)
    bad = tmp_path / "h3.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match="housing_median_age"):
        load_task(f"california:{bad}")


# --------------------------------------------------------------------------- generic CSV


def test_csv_classification_inferred(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "t.csv")
    data = load_task(f"csv:{path}?target=label", seed=0)
    assert data.kind == "classification" and data.output_size == 3
    assert data.meta["classes"] == [2, 5, 7] and data.meta["kind_inferred"] is True
    assert data.input_shape == (3,) and data.meta["feature_names"] == ["id", "a", "b"]
    assert_well_formed(data)
    assert_standardized(data)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (120, 40, 40)
    # Labels map in sorted order: 2 -> 0, 5 -> 1, 7 -> 2 (checked through the unique id column).
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    ids = np.rint(data.x_test[:, 0] * data.meta["x_std"][0] + data.meta["x_mean"][0]).astype(int)
    mapping = {2: 0, 5: 1, 7: 2}
    assert [mapping[int(rows[i]["label"])] for i in ids] == data.y_test.tolist()


def test_csv_splits_are_disjoint_and_seeded(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "t.csv")
    spec = f"csv:{path}?target=label"
    data = load_task(spec, seed=0)
    train, val, test = row_set(data.x_train), row_set(data.x_val), row_set(data.x_test)
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == 200
    tasks._load_cached.cache_clear()
    again = load_task(spec, seed=0)
    for a, b in zip(all_arrays(data), all_arrays(again), strict=True):
        assert np.array_equal(a, b)
    other = load_task(spec, seed=1)
    assert not np.array_equal(data.y_test, other.y_test) or not np.array_equal(
        data.x_test, other.x_test
    )


def test_csv_regression_inferred_and_forced(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = make_csv(tmp_path / "r.csv", target_values=np.round(rng.normal(size=200), 3))
    data = load_task(f"csv:{path}?target=label", seed=0)
    assert data.kind == "regression" and data.output_size == 1
    assert_standardized(data)
    # Many distinct integers: regression by inference too.
    path = make_csv(tmp_path / "many.csv", target_values=np.arange(200))
    assert load_task(f"csv:{path}?target=label").kind == "regression"
    # A few integers is classification unless the spec says otherwise.
    path = make_csv(tmp_path / "few.csv")
    forced = load_task(f"csv:{path}?target=label&kind=regression")
    assert forced.kind == "regression" and forced.meta["kind_inferred"] is False


def test_csv_string_target_is_classification(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "s.csv", target_values=np.array(["cat", "dog"] * 100))
    data = load_task(f"csv:{path}?target=label")
    assert data.kind == "classification" and data.meta["classes"] == ["cat", "dog"]
    with pytest.raises(TaskError, match="numeric for regression"):
        load_task(f"csv:{path}?target=label&kind=regression")


def test_csv_drops_rows_with_missing_cells(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    lines[5] = ",".join(lines[5].split(",")[:2] + ["", lines[5].split(",")[3]])
    lines[9] = ",".join(lines[9].split(",")[:3] + ["NA"])
    path.write_text("\n".join(lines) + "\n")
    data = load_task(f"csv:{path}?target=label")
    assert data.meta["rows_dropped_missing"] == 2
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 198


def test_csv_errors(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "t.csv")
    with pytest.raises(TaskError) as info:
        load_task(f"csv:{path}?target=price")
    assert "price" in str(info.value) and "label" in str(info.value)  # lists the columns
    with pytest.raises(TaskError, match="no target"):
        load_task(f"csv:{path}")
    with pytest.raises(TaskError, match="kind"):
        load_task(f"csv:{path}?target=label&kind=ranking")
    with pytest.raises(TaskError, match="colour"):
        load_task(f"csv:{path}?target=label&colour=red")
    missing = tmp_path / "nope.csv"
    with pytest.raises(TaskError, match=str(missing)):
        load_task(f"csv:{missing}?target=label")
    text = tmp_path / "text.csv"
    text.write_text("colour,x,y\n" + "".join(f"red,{i},{i % 2}\n" for i in range(30)))
    with pytest.raises(TaskError) as info:
        load_task(f"csv:{text}?target=y")
    assert "'colour'" in str(info.value) and "numeric" in str(info.value)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    with pytest.raises(TaskError, match="line 3"):
        load_task(f"csv:{ragged}?target=b")
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("a,b\n1,0\n2,1\n")
    with pytest.raises(TaskError, match="at least"):
        load_task(f"csv:{tiny}?target=b")


def test_csv_value_beyond_float32_is_refused(tmp_path: Path) -> None:
    """1e308 is finite in float64 but inf in float32: it used to train on NaN features."""
    path = make_csv(tmp_path / "t.csv", n=50)
    lines = path.read_text().splitlines()
    cells = lines[4].split(",")
    cells[1] = "1e308"
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way to the refusal
        with pytest.raises(TaskError) as info:
            load_task(f"csv:{path}?target=label")
    message = str(info.value)
    assert "'a'" in message and "line 5" in message and "1e308" in message
    assert "float32" in message
    # The target is checked the same way (regression uses its values).
    target = np.r_[np.linspace(0.0, 1.0, 49), -1e300]
    path = make_csv(tmp_path / "r.csv", n=50, target_values=target)
    with pytest.raises(TaskError) as info:
        load_task(f"csv:{path}?target=label")
    message = str(info.value)
    assert "'label'" in message and "line 51" in message and "-1e+300" in message


def test_california_value_beyond_float32_is_refused(tmp_path: Path) -> None:
    lines = make_california(tmp_path / "h.csv", n=20).read_text().splitlines()
    cells = lines[3].split(",")
    cells[8] = "-5e38"  # median_house_value, the target
    lines[3] = ",".join(cells)
    bad = tmp_path / "h2.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match=r"'median_house_value'.*'-5e38' on line 4"):
        load_task(f"california:{bad}")


def test_csv_non_finite_after_standardization_is_refused(tmp_path: Path) -> None:
    """Values within float32 whose standardized form is not (inf in float32) are refused."""
    path = tmp_path / "spread.csv"
    rows = "".join(f"{'-3e38' if i == 7 else '3e38'},{i},{i * 0.5}\n" for i in range(50))
    path.write_text("a,b,y\n" + rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(3):  # the outlier lands in a different split per seed
            with pytest.raises(TaskError) as info:
                load_task(f"csv:{path}?target=y", seed=seed)
            message = str(info.value)
            assert "column 'a'" in message and "line 9" in message and "-3e+38" in message
    # A regression target with a tiny training std and a huge held-out value.
    path = tmp_path / "target.csv"
    rows = "".join(f"{i},{1e30 if i == 3 else 1 + (i % 2) * 1e-10}\n" for i in range(50))
    path.write_text("a,y\n" + rows)
    refused = 0
    for seed in range(6):
        try:
            data = load_task(f"csv:{path}?target=y", seed=seed)
        except TaskError as exc:
            assert "target 'y'" in str(exc) and "line 5" in str(exc) and "1e+30" in str(exc)
            refused += 1
        else:
            assert_well_formed(data)
            assert all(np.isfinite(a).all() for a in all_arrays(data))
    assert refused  # the outlier is held out for some seed


@pytest.mark.parametrize("spec", ["csv:{}?target=y", "csv:{}?target=y&kind=regression"])
def test_csv_every_row_dropped_says_so(tmp_path: Path, spec: str) -> None:
    """It used to report the target's '0 distinct value(s)' instead of the dropped rows."""
    path = tmp_path / "holes.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(30)))
    with pytest.raises(TaskError) as info:
        load_task(spec.format(path))
    message = str(info.value)
    assert "30 of them were dropped for a missing or empty cell" in message
    assert "leaving none" in message and "column 'b' on line 2" in message
    assert "distinct" not in message
    # Too few left is named the same way.
    path.write_text(
        "a,b,y\n" + "".join(f"{i},{'NA' if i > 4 else i},{i % 2}\n" for i in range(30))
    )
    with pytest.raises(TaskError, match=r"25 of them were dropped.*line 7\), leaving 5"):
        load_task(spec.format(path))


def test_california_every_row_dropped_says_so(tmp_path: Path) -> None:
    lines = make_california(tmp_path / "h.csv", n=20).read_text().splitlines()
    emptied = [lines[0]] + [",".join(["", *line.split(",")[1:]]) for line in lines[1:]]
    bad = tmp_path / "h2.csv"
    bad.write_text("\n".join(emptied) + "\n")
    with pytest.raises(TaskError, match=r"20 of them were dropped.*'longitude' on line 2"):
        load_task(f"california:{bad}")


def test_csv_cache_sees_an_edited_file(tmp_path: Path) -> None:
    path = make_csv(tmp_path / "t.csv", n=50)
    first = load_task(f"csv:{path}?target=label")
    make_csv(path, n=80)
    second = load_task(f"csv:{path}?target=label")
    assert len(first.x_train) + len(first.x_val) + len(first.x_test) == 50
    assert len(second.x_train) + len(second.x_val) + len(second.x_test) == 80


# --------------------------------------------------------------------------- performance


def test_regression_performance_known_values() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert performance("regression", y, y) == 1.0
    assert performance("regression", y, np.full(4, y.mean())) == 0.0
    assert performance("regression", y, -y) == 0.0  # R^2 = -11, clipped
    assert performance("regression", y, y[:, None]) == 1.0  # (n, 1) net output
    assert performance("regression", y, y + np.array([0.5, -0.5, 0.5, -0.5])) == pytest.approx(0.8)
    assert performance("regression", y, np.array([1.0, np.nan, 3.0, 4.0])) == 0.0
    assert performance("regression", y, np.array([1.0, np.inf, 3.0, 4.0])) == 0.0
    assert performance("regression", y, np.array([1e308, -1e308, 0.0, 0.0])) == 0.0
    assert isinstance(performance("regression", y, y), float)


def test_regression_performance_matches_sklearn() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    pred = y + rng.normal(scale=0.5, size=50)
    assert performance("regression", y, pred) == pytest.approx(r2_score(y, pred))


def test_classification_performance_known_values() -> None:
    y = np.array([0, 1, 2, 1])
    assert performance("classification", y, np.array([0, 1, 2, 0])) == 0.75
    logits = np.array([[3.0, 0, 0], [0, 2, 1], [0, 5, 1], [-1, 4, 0]])
    assert performance("classification", y, logits) == 0.75
    logits[1, 0] = np.nan
    assert performance("classification", y, logits) == 0.0


def test_performance_batch_matches_single() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=30)
    preds = y[None] + rng.normal(scale=[[0.1], [1.0], [5.0], [0.0]], size=(4, 30))
    preds[3, 4] = np.nan
    batch = performance_batch("regression", y, preds)
    assert batch.dtype == np.float64 and batch.shape == (4,)
    assert batch.tolist() == [performance("regression", y, p) for p in preds]
    assert batch[3] == 0.0 and batch[0] > 0.95
    labels = rng.integers(0, 4, 30)
    scores = rng.normal(size=(5, 30, 4))
    batch = performance_batch("classification", labels, scores)
    assert batch.tolist() == [performance("classification", labels, s) for s in scores]
    assert performance_batch("classification", labels, scores.argmax(axis=2)).tolist() == (
        batch.tolist()
    )


def test_performance_bad_inputs() -> None:
    with pytest.raises(TaskError, match="kind"):
        performance("ranking", [1.0], [1.0])
    with pytest.raises(TaskError, match="shaped"):
        performance("regression", np.zeros(4), np.zeros(3))
    with pytest.raises(TaskError, match="shaped|scores"):
        performance("classification", np.zeros(4, int), np.zeros((3, 2)))
    with pytest.raises(TaskError, match="integer"):
        performance("classification", np.array([0.5, 1.0]), np.array([0, 1]))


# --------------------------------------------------------------------------- the registry
def test_a_new_task_loader_is_one_registration(tmp_path):
    """docs/extending.md, recipe 2: a loader registered from a test is listed, parsed, loaded,
    split, standardized and cached like the built-ins."""
    import numpy as np

    from inag.tasks import TaskLoader, register_task, unregister_task
    from inag.tasks.core import _Raw

    def load(arg, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, 3))
        return _Raw("sum3", "regression", (3,), 1, x, x.sum(axis=1), {"source": "test"})

    register_task(TaskLoader("sum3", "sum3", load, help="a test task"))
    try:
        assert "sum3" in available_tasks()
        data = load_task("sum3", seed=1)
        assert data.kind == "regression" and data.input_shape == (3,)
        assert load_task("sum3", seed=1) is not data  # a copy of the cached arrays' record
        with pytest.raises(TaskError, match="takes no argument"):
            load_task("sum3:x")
    finally:
        unregister_task("sum3")
    with pytest.raises(TaskError, match="unknown task 'sum3'"):
        load_task("sum3")


def test_one_r2_definition_for_scores_and_the_encoder():
    import numpy as np

    from inag.nagan import r2_score
    from inag.tasks import r2

    y = np.array([1.0, 2.0, 3.0, 4.0])
    bad = np.array([4.0, 3.0, 2.0, 1.0])
    assert r2(y, bad) == 0.0 and r2_score(y, bad) == pytest.approx(-3.0)
    const = np.ones(4)
    assert r2(const, const) == 1.0 == r2_score(const, const)  # exact fit of a constant
    assert r2(const, const + 1) == 0.0 == r2_score(const, const + 1)
    assert r2(y, np.array([1.0, np.nan, 3.0, 4.0])) == 0.0
    assert performance("regression", y, y) == r2(y, y) == 1.0
