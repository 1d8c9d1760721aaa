"""Pieces shared by several commands: the platform-limit options of `select` and `baseline`,
and reading architecture JSON from a file, stdin or the argument, so both read and fail the
same way everywhere."""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

# numpy's legacy RandomState (some baselines) takes seeds in [0, 2^32)
MAX_SEED = 2**32 - 1


class CliError(Exception):
    """A user-facing error: printed as one paragraph, exit code 2."""


def _limit_option(option: str) -> Any:
    """The typer annotation of a limit option, its help from ``hwmodels.quantities``."""
    from hwmodels.quantities import QUANTITIES

    for q in QUANTITIES:
        if option == q.option:
            return Annotated[float | None, typer.Option(help=q.help)]
        if option == q.norm_option:
            return Annotated[float | None, typer.Option(help=q.norm_help)]
    raise KeyError(option)


# `--platform/-p` of every command that costs on one platform (select takes several)
PlatformOption = Annotated[
    str, typer.Option("--platform", "-p", help="Platform YAML path or bundled name.")
]


# `--rank-by` of select and sweep (their default: inag.select.DEFAULT_RANK)
RankOption = Annotated[
    str,
    typer.Option(
        help="dist_ub (Dist_f + the estimate's 90 % interval half-width: prefers nets the "
        "encoder is sure of), dist_f (the paper's), storage, energy or latency."
    ),
]

# `--refine` of every command that generates a bag (None: the model's default, INAG's refined
# generator; docs/nagan.md)
RefineOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=10_000,
        help="Encoder-guided refinement steps per generated code (INAG's extension, "
        "docs/nagan.md; default: 50 where the model's encoder has held-out R2 >= 0.8, else "
        "0); 0: the paper's plain generator.",
    ),
]


def with_limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command that takes ``**limits`` one option per budget quantity.

    The options, their help and their order come from ``hwmodels.quantities`` (the one table),
    so `select`, `baseline` and `sweep` offer the same limits without listing them: typer reads
    the signature set here. In the command, ``limit_overrides(limits)`` turns them into limits.
    """
    from hwmodels.quantities import OPTIONS

    sig = inspect.signature(command, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_limit_option(name)
        )  # fmt: skip
        for name in OPTIONS
    ]
    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return command


def limit_overrides(limits: Mapping[str, float | None]) -> dict[str, float]:
    """The limits a command's limit options (see :func:`with_limit_options`) ask for, each
    scaled to its limit by ``hwmodels.quantities``; options not given are left out."""
    from hwmodels.quantities import OPTIONS, overrides

    unknown = sorted(set(limits) - set(OPTIONS))
    if unknown:
        raise TypeError(f"not limit options: {unknown}; known: {list(OPTIONS)}")
    for name, value in limits.items():
        if value is not None:
            check_limit_option(name, value)
    return overrides(**limits)


def check_threshold(threshold: float) -> None:
    """The Dist_f confidence threshold of `select`, `sweep` and `evaluate`: NaN would keep
    nothing and a negative one nothing either, silently."""
    if not math.isfinite(threshold) or threshold < 0:
        raise CliError(f"--threshold must be a non-negative number, found {threshold}")


def check_limit_option(name: str, value: float) -> None:
    """Raise :class:`CliError` unless a limit option's value is a usable budget.

    A limit of 0 or less admits nothing (and the miss report would divide by it), NaN fails
    every comparison silently and inf is no limit, so each must be finite and > 0, and stay so
    once scaled to the limit's unit (``--max-storage-kb 1e306`` overflows to inf in bits).
    """
    from hwmodels.quantities import OPTIONS, QUANTITIES

    flag = "--" + name.replace("_", "-")
    unit = next(
        (q.option_unit for q in QUANTITIES if q.option == name),
        "a fraction of the search space's largest architecture",
    )
    if not (math.isfinite(value) and value > 0):
        raise CliError(f"{flag}: expected a finite number > 0 ({unit}), found {value:g}")
    limit, scale = OPTIONS[name]
    scaled = value * scale
    if not (math.isfinite(scaled) and scaled > 0):
        raise CliError(
            f"{flag}: expected a finite number > 0 ({unit}) that stays finite and > 0 in "
            f"{limit} (x {scale:g}), found {value:g} -> {scaled:g}"
        )


def read_arch_source(
    source: str, accepted: str, fail: Callable[[str], Exception]
) -> tuple[str, str, list[str]]:
    """(text, where it came from, its non-empty lines) of '-' (stdin), inline JSON or a file.

    ``accepted`` completes the error for a missing file ("expected ..."); ``fail`` builds the
    command's own error type from a message.
    """
    from inag.safe_io import MAX_TEXT_BYTES, InputError, decode_text, read_text

    what = "architecture JSON"
    try:
        if source == "-":
            raw = getattr(sys.stdin, "buffer", None)  # absent on a test's StringIO stdin
            data = (raw or sys.stdin).read(MAX_TEXT_BYTES + 1)
            if len(data) > MAX_TEXT_BYTES:
                raise fail(f"stdin: more than the {MAX_TEXT_BYTES:,} bytes accepted for {what}")
            text = data if isinstance(data, str) else decode_text(data, "stdin", what)
            where = "stdin"
        elif source.lstrip().startswith("{"):
            text, where = source, "the argument"
        elif not source.strip():
            raise fail(f"the architecture argument is empty (expected {accepted})")
        elif not Path(source).exists() and (
            source.lstrip()[:1] in '["' or source.strip() in ("null", "true", "false")
        ):
            raise fail(
                f"the argument {source[:60]!r} is JSON but not an object; an inline "
                f'architecture is a JSON object ({{"kind": ...}}); expected {accepted}'
            )
        else:
            path = Path(source)
            if not path.exists():
                raise fail(f"no architecture file {source!r} (expected {accepted})")
            text, where = read_text(path, f"{what} ({accepted})"), str(path)
    except InputError as exc:
        raise fail(str(exc)) from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise fail(f"{where}: no architecture found (empty input)")
    return text, where, lines
