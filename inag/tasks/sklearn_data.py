"""Datasets scikit-learn ships inside its wheel: digits (8x8 images) and diabetes."""

from __future__ import annotations

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import (
    _Raw,
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


register_task(TaskLoader("digits", "digits", _load_digits, help="scikit-learn 8x8 digits"))
register_task(TaskLoader("diabetes", "diabetes", _load_diabetes, help="scikit-learn diabetes"))
