"""Thread settings for PyTorch's tiny-op work: the NAGAN encoder and generator, the baselines'
searches, the dataset workers.

Measured on this project's 2-core machines: ``inag train --gan-steps 800 --enc-epochs 10`` took
371 s with torch's default two threads next to one other CPU-bound job and 12 s with one thread
(docs/nagan.md); training 16 candidates took 7 s with one torch thread and 520 s with two, and
a GP ask 1 s instead of up to 80 s. Spinning OpenMP/BLAS workers fight over the cores for ops
of microseconds, so these paths run single-threaded, which also makes their float results
independent of the machine's core count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch, OpenMP and BLAS on one thread each, then restore the caller's settings."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - scikit-learn pulls it in
            yield
        else:
            with threadpool_limits(limits=1):
                yield
    finally:
        torch.set_num_threads(threads)


def one_thread(func: F) -> F:
    """Decorator form of :func:`single_threaded` (not for generators: the setting would leak
    to the caller between yields)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
