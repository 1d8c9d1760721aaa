"""Session-scoped fixtures for the NAGAN / select / CLI tests: one tiny real dataset, one model.

Import the fixture functions into a test module
(``from nagan_fixtures import fixture_tiny_model``); pytest discovers them there under their
fixture names (``tiny_model`` ...). The dataset and the model are cached per process, so every
module of the session shares one build. Everything is real: the dataset is QAT-trained on
``data_a`` (120 nets, 3 epochs), the model is a real encoder + NAGAN, only small.

Torch runs on one thread inside these fixtures and the tests that use ``one_thread``: on a
loaded 2-core machine two OpenMP threads made the GAN steps 20-30x slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inag.arch import ArchSpec

# Small networks and a few hundred steps: ~5-10 s, and the generator already follows c.
TINY_CONFIG: dict[str, Any] = dict(
    seed=0,
    enc_hidden=64,
    d_hidden=64,
    g_hidden=64,
    gan_batch=64,
    enc_epochs=100,
    gan_steps=400,
)


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(name="one_thread")
def fixture_one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@dataclass(frozen=True)
class TinyDataset:
    db: Path
    archs: list[ArchSpec]
    perf: np.ndarray
    meta: dict[str, Any]
    space: Any  # the mlp space bound to the task


_CACHE: dict[str, Any] = {}


@pytest.fixture(scope="session", name="tiny_dataset")
def fixture_tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    if "dataset" not in _CACHE:
        _CACHE["dataset"] = _build_dataset(tmp_path_factory)
    return _CACHE["dataset"]


def _build_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    from inag.dataset import DatasetStore, LocalBackend, build_dataset
    from inag.space import load_space
    from inag.tasks import load_task
    from inag.train.trainer import TrainerConfig

    db = tmp_path_factory.mktemp("nagan_data") / "data_a.sqlite"
    with torch_threads(1):
        build_dataset(
            db,
            "data_a",
            load_space("mlp"),
            n=120,
            seed=0,
            trainer=TrainerConfig(epochs=3, restarts=1),
            backend=LocalBackend(1),
            chunk=64,
        )
    with DatasetStore(db) as store:
        archs, perf = store.archs_and_performance()
        meta = store.meta()
    task = load_task("data_a")
    space = load_space("mlp").bind(task.input_shape, task.output_size)
    return TinyDataset(db, archs, perf, meta, space)


def fit_tiny(ds: TinyDataset, **overrides: Any) -> Any:
    """A real encoder + NAGAN on the tiny dataset (``overrides`` go to NaganConfig)."""
    from inag.nagan import NaganConfig, fit_nagan

    cfg = NaganConfig(**{**TINY_CONFIG, **overrides})
    with torch_threads(1):
        model, _ = fit_nagan(
            ds.space,
            ds.archs,
            ds.perf,
            ds.meta["task"],
            ds.meta["task_kind"],
            cfg,
            info={
                "dataset": str(ds.db),
                "trainer": ds.meta["trainer"],
                "data_seed": ds.meta["data_seed"],
            },
        )
    return model


@pytest.fixture(scope="session", name="tiny_model")
def fixture_tiny_model(tiny_dataset: TinyDataset) -> Any:
    if "model" not in _CACHE:
        _CACHE["model"] = fit_tiny(tiny_dataset)
    return _CACHE["model"]


@pytest.fixture(scope="session", name="tiny_model_path")
def fixture_tiny_model_path(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "path" not in _CACHE:
        _CACHE["path"] = tiny_model.save(tmp_path_factory.mktemp("nagan_model") / "tiny.nagan")
    return _CACHE["path"]
