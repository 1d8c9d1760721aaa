"""The datasets behind the bundled generators: resolved by name like the generators, unpacked
once into the cache, and used only when their content is the one the generator learned."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import pytest
from nagan_fixtures import fixture_tiny_dataset, fixture_tiny_model  # noqa: F401

from inag import dataset as ds
from inag.cli import main
from inag.dataset import DatasetError, DatasetStore, model_dataset, resolve_dataset


@pytest.fixture()
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dataset: Any) -> Path:
    """The tiny dataset shipped as ``tiny.sqlite.gz`` in a stand-in package directory."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    gz = pkg / "tiny.sqlite.gz"
    with open(tiny_dataset.db, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    monkeypatch.setattr(ds, "bundled_datasets", lambda: {"tiny": gz})
    monkeypatch.setenv("INAG_CACHE_DIR", str(tmp_path / "cache"))
    return gz


def test_a_bundled_dataset_resolves_by_name_and_unpacks_once(shipped: Path, tmp_path: Path):
    first = resolve_dataset("tiny")
    assert first.parent == tmp_path / "cache" / "datasets" and first.suffix == ".sqlite"
    mtime = first.stat().st_mtime_ns
    assert resolve_dataset("tiny") == first and first.stat().st_mtime_ns == mtime
    with DatasetStore("tiny") as store:  # every reader takes the name
        assert store.meta()["task"] == "data_a"


def test_an_unknown_name_lists_the_bundled_ones(shipped: Path):
    with pytest.raises(DatasetError, match=r"no bundled dataset of that name \(bundled: tiny\)"):
        resolve_dataset("nope")


def test_paths_are_never_taken_for_names(shipped: Path, tmp_path: Path):
    assert resolve_dataset(tmp_path / "tiny") == tmp_path / "tiny"
    assert resolve_dataset("runs/tiny.sqlite") == Path("runs/tiny.sqlite")


def test_model_dataset_prefers_matching_content(
    shipped: Path, tiny_model: Any, tiny_dataset: Any, tmp_path: Path
):
    meta = {**tiny_model.meta, "dataset": str(tmp_path / "elsewhere" / "tiny.sqlite")}
    path, tried = model_dataset(meta)
    assert path is not None and path.parent == tmp_path / "cache" / "datasets"
    assert tried == [f"{meta['dataset']} (absent)"]
    # the recorded file exists but holds another build: refused, the bundled one is used
    other = Path(meta["dataset"])
    other.parent.mkdir()
    shutil.copy(tiny_dataset.db, other)
    with DatasetStore(other) as store:
        store.conn.execute("UPDATE runs SET performance = performance + 0.01")
        store.conn.commit()
    path, tried = model_dataset(meta)
    assert path is not None and path.parent == tmp_path / "cache" / "datasets"
    assert "other content" in tried[0]
    # neither matches: nothing, and both are named
    path, tried = model_dataset({**meta, "dataset_hash": "0" * 16})
    assert path is None and len(tried) == 2


def test_a_hostile_archive_is_refused(shipped: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ds, "MAX_BUNDLED_BYTES", 1000)
    with pytest.raises(DatasetError, match="expands beyond 1,000 bytes"):
        resolve_dataset("tiny")


@pytest.mark.parametrize("name", sorted(ds.bundled_datasets()))
def test_the_shipped_datasets_are_the_bundled_generators_own(name: str, capsys):
    from inag.nagan import load_model

    m = load_model(name)
    path, tried = model_dataset({**m.meta, "dataset": f"/nonexistent/{name}.sqlite"})
    assert path is not None, tried
    assert main(["dataset", "info", name]) == 0
    out = capsys.readouterr().out
    assert f"task {m.task}" in out and f"rows: {m.meta['dataset_size']}" in out


def test_every_bundled_generator_ships_its_dataset():
    from inag.nagan import bundled_models

    assert set(bundled_models()) <= set(ds.bundled_datasets())


def test_pack_dataset_is_reproducible_and_round_trips(tiny_dataset: Any, tmp_path: Path):
    a = ds.pack_dataset(tiny_dataset.db, tmp_path / "a.sqlite.gz")
    b = ds.pack_dataset(tiny_dataset.db, tmp_path / "b.sqlite.gz")
    assert a.read_bytes() == b.read_bytes()
    (tmp_path / "u.sqlite").write_bytes(gzip.decompress(a.read_bytes()))
    with DatasetStore(tmp_path / "u.sqlite") as store:
        archs, perf = store.archs_and_performance()
    assert ds.dataset_hash(archs, perf) == ds.dataset_hash(tiny_dataset.archs, tiny_dataset.perf)
