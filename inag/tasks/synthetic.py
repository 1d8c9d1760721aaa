"""The paper's synthetic regression tasks Data_a and Data_b (no download)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import (
    N_TEST_SYNTHETIC,
    N_TRAIN_SYNTHETIC,
    N_VAL_SYNTHETIC,
    NOISE_CEILING_R2,
    _Raw,
)

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


register_task(
    TaskLoader(
        "data_a",
        "data_a",
        functools.partial(_load_polynomial, "data_a"),
        help="the paper's Data_a (quartic + noise)",
    )
)
register_task(
    TaskLoader(
        "data_b",
        "data_b",
        functools.partial(_load_polynomial, "data_b"),
        help="the paper's Data_b (degree-7 polynomial + noise)",
    )
)
