"""CSV tasks: California housing and any numeric CSV with a target column."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inag.tasks import TaskLoader, register_task
from inag.tasks.core import (
    _FLOAT32_MAX,
    _MISSING_TOKENS,
    MAX_CSV_BYTES,
    MAX_INFERRED_CLASSES,
    MIN_ROWS,
    TaskError,
    TaskKind,
    _Raw,
)

# ----- CSV tasks


def _read_csv(
    path_text: str, task: str, expected: str
) -> tuple[Path, list[str], list[list[str]], list[int]]:
    """Header, rows and each row's 1-based line number (for ragged rows and bad values)."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise TaskError(f"{task}: the file {str(path)!r} does not exist; expected {expected}")
    if not path.is_file():
        raise TaskError(f"{task}: {str(path)!r} is not a file; expected {expected}")
    from inag.safe_io import InputError, read_text

    try:
        text = read_text(path, f"a UTF-8 CSV ({expected})", max_bytes=MAX_CSV_BYTES)
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except InputError as exc:
        raise TaskError(f"{task}: {exc}") from None
    except csv.Error as exc:
        raise TaskError(
            f"{task}: {str(path)!r} is not a readable CSV ({exc}); expected {expected}"
        ) from None
    nonblank = [(i + 1, row) for i, row in enumerate(lines) if any(c.strip() for c in row)]
    if not nonblank:
        raise TaskError(f"{task}: {str(path)!r} is empty; expected {expected}")
    header = [c.strip() for c in nonblank[0][1]]
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise TaskError(f"{task}: {str(path)!r} repeats header column(s) {duplicates}")
    rows, row_lines = [], []
    for line, row in nonblank[1:]:
        if len(row) != len(header):
            raise TaskError(
                f"{task}: {str(path)!r} line {line} has {len(row)} cells but the header has "
                f"{len(header)} columns"
            )
        rows.append([c.strip() for c in row])
        row_lines.append(line)
    return path, header, rows, row_lines


def _is_missing(cell: str) -> bool:
    return cell.lower() in _MISSING_TOKENS


def _drop_missing(
    task: str,
    path: Path,
    header: Sequence[str],
    rows: list[list[str]],
    lines: list[int],
    used: Sequence[int],
) -> tuple[list[list[str]], list[int]]:
    """Rows with no missing cell in ``used``; refuses a file left with too few to split.

    Without this check a file whose every row has an empty cell would surface later as a
    misleading "0 distinct values" or "found 0 rows" error.
    """
    keep = [i for i, row in enumerate(rows) if not any(_is_missing(row[c]) for c in used)]
    if len(keep) >= MIN_ROWS:
        return [rows[i] for i in keep], [lines[i] for i in keep]
    dropped = len(rows) - len(keep)
    found = f"{str(path)!r} has {len(rows)} data row(s)"
    if dropped:
        kept = set(keep)
        first = next(i for i in range(len(rows)) if i not in kept)
        col = next(c for c in used if _is_missing(rows[first][c]))
        tokens = ", ".join(repr(t) for t in sorted(_MISSING_TOKENS))
        found += (
            f"; {dropped} of them were dropped for a missing or empty cell (one of {tokens}; "
            f"the first is column {header[col]!r} on line {lines[first]}), leaving "
            f"{len(keep) or 'none'}"
        )
    raise TaskError(
        f"{task}: {found}; need at least {MIN_ROWS} rows with every used cell filled in for "
        "train/val/test splits"
    )


def _check_float32(value: float, cell: str, column: str, line: int, path: Path, task: str) -> None:
    """Refuses a value float64 holds but the float32 the networks train in does not."""
    if abs(value) > _FLOAT32_MAX:
        raise TaskError(
            f"{task}: column {column!r} of {str(path)!r} holds {cell!r} on line {line}; "
            f"expected a magnitude of at most {_FLOAT32_MAX:.4g} (training runs in float32)"
        )


def _parse_numeric_column(
    rows: Sequence[Sequence[str]],
    lines: Sequence[int],
    col: int,
    column: str,
    path: Path,
    task: str,
    hint: str,
) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            value = float(row[col])
        except ValueError:
            raise TaskError(
                f"{task}: column {column!r} of {str(path)!r} must be numeric but holds "
                f"{row[col]!r} on line {lines[i]}; {hint}"
            ) from None
        if not math.isfinite(value):
            raise TaskError(
                f"{task}: column {column!r} of {str(path)!r} holds {row[col]!r} on line "
                f"{lines[i]}; {hint}"
            )
        _check_float32(value, row[col], column, lines[i], path, task)
        out[i] = value
    return out


_CALIFORNIA_NUMERIC = (
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
)
_CALIFORNIA_TARGET = "median_house_value"
_CALIFORNIA_CATEGORICAL = "ocean_proximity"
CSV_FORM = "csv:FILE.csv?target=COL[&kind=regression|classification]"
CALIFORNIA_CATEGORIES = ("<1H OCEAN", "INLAND", "ISLAND", "NEAR BAY", "NEAR OCEAN")
# the columns the loader reads, in the real file's order
CALIFORNIA_COLUMNS = (*_CALIFORNIA_NUMERIC, _CALIFORNIA_TARGET, _CALIFORNIA_CATEGORICAL)


def _load_california(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    columns = CALIFORNIA_COLUMNS
    expected = f"the California housing CSV with header {','.join(columns)}"
    path, header, rows, lines = _read_csv(arg, "california", expected)
    missing_cols = [c for c in columns if c not in header]
    if missing_cols:
        raise TaskError(
            f"california: {str(path)!r} lacks column(s) {missing_cols} (found {header}); "
            f"expected {expected}"
        )
    idx = {c: header.index(c) for c in columns}
    used = [idx[c] for c in columns]
    kept, kept_lines = _drop_missing("california", path, header, rows, lines, used)
    hint = "expected a number in every numeric column"
    x_num = (
        np.stack(
            [
                _parse_numeric_column(kept, kept_lines, idx[c], c, path, "california", hint)
                for c in _CALIFORNIA_NUMERIC
            ],
            axis=1,
        )
        if kept
        else np.zeros((0, len(_CALIFORNIA_NUMERIC)))
    )
    y = _parse_numeric_column(
        kept, kept_lines, idx[_CALIFORNIA_TARGET], _CALIFORNIA_TARGET, path, "california", hint
    )
    one_hot = np.zeros((len(kept), len(CALIFORNIA_CATEGORIES)))
    for i, row in enumerate(kept):
        value = row[idx[_CALIFORNIA_CATEGORICAL]]
        if value not in CALIFORNIA_CATEGORIES:
            raise TaskError(
                f"california: {_CALIFORNIA_CATEGORICAL} of {str(path)!r} holds {value!r}; "
                f"expected one of {list(CALIFORNIA_CATEGORIES)}"
            )
        one_hot[i, CALIFORNIA_CATEGORIES.index(value)] = 1.0
    names = [
        *_CALIFORNIA_NUMERIC,
        *(f"{_CALIFORNIA_CATEGORICAL}={c}" for c in CALIFORNIA_CATEGORIES),
    ]
    return _Raw(
        name="california",
        kind="regression",
        input_shape=(len(names),),
        output_size=1,
        x=np.concatenate([x_num, one_hot], axis=1),
        y=y,
        meta={
            "source": str(path.resolve()),
            "target": _CALIFORNIA_TARGET,
            "feature_names": names,
            "rows_read": len(rows),
            "rows_dropped_missing": len(rows) - len(kept),
        },
        row_lines=tuple(kept_lines),
    )


def _split_query(arg: str) -> tuple[str, str]:
    path, sep, query = arg.rpartition("?")
    return (path, query) if sep else (arg, "")


def _load_csv(arg: str | None, seed: int) -> _Raw:
    assert arg is not None
    form = CSV_FORM
    path_text, query = _split_query(arg)
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("target", "kind"):
            raise TaskError(
                f"csv: cannot read option {part!r} in {arg!r}; the spec form is {form!r}"
            )
        options[key.strip()] = value.strip()
    target = options.get("target")
    if not target:
        raise TaskError(f"csv: the spec {arg!r} names no target column; the spec form is {form!r}")
    kind_opt = options.get("kind")
    if kind_opt is not None and kind_opt not in ("regression", "classification"):
        raise TaskError(f"csv: kind must be regression or classification, found {kind_opt!r}")
    expected = "a CSV file with a header row and numeric feature columns"
    path, header, rows, lines = _read_csv(path_text, "csv", expected)
    if target not in header:
        raise TaskError(f"csv: {str(path)!r} has no column {target!r}; its columns are {header}")
    if len(header) < 2:
        raise TaskError(
            f"csv: {str(path)!r} has only the target column; no features to learn from"
        )
    kept, kept_lines = _drop_missing("csv", path, header, rows, lines, range(len(header)))
    t_col = header.index(target)
    features = [c for c in header if c != target]
    hint = "only numeric feature columns are supported (encode categories as numbers first)"
    x = (
        np.stack(
            [
                _parse_numeric_column(kept, kept_lines, header.index(c), c, path, "csv", hint)
                for c in features
            ],
            axis=1,
        )
        if kept
        else np.zeros((0, len(features)))
    )
    raw_target = [row[t_col] for row in kept]
    numeric: np.ndarray | None
    try:
        numeric = np.array([float(v) for v in raw_target], dtype=np.float64)
        if not np.isfinite(numeric).all():
            numeric = None
    except ValueError:
        numeric = None
    if kind_opt is None:
        integer = numeric is not None and bool(np.all(numeric == np.round(numeric)))
        n_distinct = len(set(raw_target)) if numeric is None else len(np.unique(numeric))
        kind: TaskKind = (
            "classification"
            if numeric is None or (integer and n_distinct <= MAX_INFERRED_CLASSES)
            else "regression"
        )
        if numeric is None and n_distinct > MAX_INFERRED_CLASSES:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} is not numeric and has {n_distinct} "
                f"distinct values (more than {MAX_INFERRED_CLASSES}); pass "
                "&kind=classification to use it as class labels anyway"
            )
    else:
        kind = kind_opt  # type: ignore[assignment]
    meta: dict[str, Any] = {
        "source": str(path.resolve()),
        "target": target,
        "feature_names": features,
        "kind_inferred": kind_opt is None,
        "rows_read": len(rows),
        "rows_dropped_missing": len(rows) - len(kept),
    }
    if kind == "regression":
        if numeric is None:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} must be numeric for regression"
            )
        for value, cell, line in zip(numeric.tolist(), raw_target, kept_lines, strict=True):
            _check_float32(value, cell, target, line, path, "csv")
        y = numeric
        output_size = 1
    else:
        if numeric is not None:
            classes: list[Any] = sorted(np.unique(numeric).tolist())
            if all(float(c).is_integer() for c in classes):
                classes = [int(c) for c in classes]
            lookup = {float(c): i for i, c in enumerate(classes)}
            y = np.array([lookup[v] for v in numeric.tolist()], dtype=np.int64)
        else:
            classes = sorted(set(raw_target))
            lookup_s = {c: i for i, c in enumerate(classes)}
            y = np.array([lookup_s[v] for v in raw_target], dtype=np.int64)
        if len(classes) < 2:
            raise TaskError(
                f"csv: target {target!r} of {str(path)!r} has {len(classes)} distinct value(s); "
                "classification needs at least 2"
            )
        output_size = len(classes)
        meta["classes"] = classes
    return _Raw(
        name="csv",
        kind=kind,
        input_shape=(len(features),),
        output_size=output_size,
        x=x,
        y=y,
        meta=meta,
        row_lines=tuple(kept_lines),
    )


def _csv_files(arg: str | None) -> list[Path]:
    if arg is None:
        return []
    path = Path(_split_query(arg)[0]).expanduser()
    return [path] if path.is_file() else []


register_task(
    TaskLoader(
        "california",
        "california:FILE.csv",
        _load_california,
        takes_path=True,
        help="the California housing CSV",
    )
)
register_task(
    TaskLoader(
        "csv",
        CSV_FORM,
        _load_csv,
        takes_path=True,
        files=_csv_files,
        help="any numeric CSV with a target column",
    )
)
