"""Helpers several command modules share: the console, sizes, loading a space or a generator,
the bag-size guard, stage progress and the target condition."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inag.cli.options import CliError


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con.width = max(con.width, 140)  # pipes and CI logs: don't squeeze tables
    return con


# `select` holds the whole bag (encodings, the decoded architectures, their cost table).
# Measured: peak RSS of `inag select -n N` for N = 20,000 and 300,000 at conditions 0.1, 0.5,
# 0.9 and 1.0 with the bundled data_a generator grows by 1.0-1.16 KB per generated
# architecture (benchmarks/bench_bag_memory.py); 1.2 KB is the figure the message uses.
MAX_BAG = 1_000_000


BAG_BYTES_PER_ARCH = 1200


def check_bag_size(n: int, m: Any, command: str) -> None:
    """Refuse a bag so large the process would be killed for memory, saying what it needs."""
    if n > MAX_BAG:
        raise CliError(
            f"{command} -n {n:,} would need about {human_bytes(n * BAG_BYTES_PER_ARCH)} of "
            f"memory for the bag (measured: ~{human_bytes(BAG_BYTES_PER_ARCH)} per generated "
            f"architecture); at most {MAX_BAG:,} per run: use several runs with different "
            "--seed"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def load_space(name: str, input_shape: str | None, output_size: int | None) -> Any:
    from inag.space import load_space

    s = load_space(name)
    if input_shape is not None or output_size is not None:
        shape = s.input_shape
        if input_shape is not None:
            try:
                shape = tuple(int(x) for x in input_shape.split(","))
            except ValueError:
                raise CliError(
                    f"--input-shape expects integers separated by commas, e.g. "
                    f"1,8,8; found {input_shape!r}"
                ) from None
        s = s.bind(shape, output_size if output_size is not None else s.output_size)
    return s


def load_model(path: Path) -> Any:
    """A NAGAN artifact by path or a bundled generator by name (torch loads only here)."""
    from inag.nagan import load_model

    return load_model(path)


def stage_progress(con: Any) -> tuple[Any, Callable[[str, int, int, dict[str, float]], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        console=con,
    )
    jobs: dict[str, Any] = {}

    def report(stage: str, i: int, n: int, stats: dict[str, float]) -> None:
        if stage not in jobs:
            jobs[stage] = bar.add_task(stage, total=n, stats="")
        bar.update(
            jobs[stage], completed=i, stats=" ".join(f"{k}={v:.4f}" for k, v in stats.items())
        )

    return bar, report


def target_condition(m: Any, perf: float | None, condition: float | None) -> float:
    """The normalized target of --perf or --condition, refused outside the model's range.

    The generator has only seen conditions in [0, 1] (its dataset's worst to best); far
    outside them it returns nonsense, and select would re-condition thousands of times.
    """
    lo, hi = m.p_min, m.p_min + m.p_range
    if perf is not None:
        c = float(m.normalize(perf))
        if not math.isfinite(c) or not -1e-9 <= c <= 1 + 1e-9:
            raise CliError(
                f"--perf {perf:g} is outside the model's observed range: its dataset's "
                f"performance spans {lo:.4f}..{hi:.4f} "
                f"(p_min={m.p_min:.4f}, P_R={m.p_range:.4f}); "
                "ask for a value in that range"
            )
        return min(max(c, 0.0), 1.0)
    assert condition is not None
    if not math.isfinite(condition) or not 0 <= condition <= 1:
        raise CliError(
            f"--condition {condition:g} is far outside the model's range [0, 1] (c = 0 is its "
            f"dataset's lowest performance {lo:.4f}, c = 1 its highest {hi:.4f})"
        )
    return float(condition)


def plain_generator_note(model: Any) -> str:
    """Why a model generates with the paper's plain generator by default."""
    from inag.nagan import REFINE_MIN_R2, REFINE_STEPS

    r2 = model.encoder_r2
    shown = "unknown" if r2 is None else f"{r2:.2f}"
    return (
        f"the paper's plain generator: the encoder's held-out R2 is {shown} (< {REFINE_MIN_R2}), "
        f"so refining codes by it would follow its errors; --refine {REFINE_STEPS} forces it"
    )
