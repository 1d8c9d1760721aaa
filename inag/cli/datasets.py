"""``inag sample`` builds a dataset (sample, QAT-train, label); ``inag dataset info|export``
inspect one."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inag.cli.common import console
from inag.cli.options import MAX_SEED, CliError

dataset_app = typer.Typer(
    help="Inspect and export dataset files made by `inag sample`.", no_args_is_help=True
)


def _task_forms() -> list[str]:
    """The task spec forms of the registry (inag.tasks), for help texts."""
    from inag.tasks import available_tasks

    return available_tasks()


def sample(
    task: Annotated[
        str,
        typer.Option(help=f"Task: {', '.join(_task_forms())}."),
    ] = "data_a",
    space: Annotated[str, typer.Option(help="Search space (mlp or a YAML path).")] = "mlp",
    n: Annotated[
        int, typer.Option("--n", "-n", min=1, help="Architectures in the dataset.")
    ] = 2000,
    db: Annotated[Path, typer.Option(help="SQLite file; re-running resumes it.")] = Path(
        "runs/data_a.sqlite"
    ),
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Sampling and training seed.")
    ] = 0,
    data_seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the task's data and splits.")
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per candidate.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Minibatch size.")] = 256,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate (cosine decay).")] = 1e-2,
    quant_delay: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Fraction of steps trained in float before "
            "fake quantization starts (Jacob et al.'s delayed quantization).",
        ),
    ] = 0.5,
    restarts: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Initializations per architecture, each trained in full; --restart-score "
            "turns them into the label. Default: the file's when resuming, else 16 for MLP "
            "spaces and 4 for CNN spaces (as repeatable, at a quarter of the cost; "
            "docs/dataset.md).",
        ),
    ] = None,
    restart_score: Annotated[
        str,
        typer.Option(
            help="mean: the label is the mean test performance over the restarts (what one "
            "training run of the architecture gives, on average; a diverged run counts 0). "
            "best: the test performance of the restart best on validation.",
        ),
    ] = "mean",
    chunk: Annotated[
        int,
        typer.Option(
            min=1,
            help="Nets trained together (and committed "
            "together: at most this many are lost on a kill).",
        ),
    ] = 128,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray.")] = "local",
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes (default: CPU count).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="Trainer engine: c (fused C kernels, compiled on first use with the "
            "machine's C compiler), torch (batched PyTorch), or auto (c where a C compiler "
            "exists, else torch). Same training rules; the rows record which one ran.",
        ),
    ] = "auto",
) -> None:
    """Build (or resume) a dataset: sample distinct architectures, QAT-train each, store it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from inag.dataset import (
        DatasetError,
        LocalBackend,
        RayBackend,
        SamplingInterrupted,
        bind_to_task,
        build_dataset,
    )
    from inag.space import SpaceError, load_space
    from inag.train.trainer import DEFAULT_RESTARTS, TrainerConfig

    _check_db_out(db)
    if restarts is None:  # resuming keeps the file's restarts; a new file takes the space's
        restarts = _stored_restarts(db)
    if restarts is None:
        try:
            restarts = DEFAULT_RESTARTS.get(load_space(space).kind, DEFAULT_RESTARTS["mlp"])
        except SpaceError as exc:
            raise CliError(str(exc)) from None
    try:
        trainer = TrainerConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            quant_delay=quant_delay,
            restarts=restarts,
            restart_score=restart_score,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not math.isfinite(lr) or lr <= 0:
        raise CliError(f"--lr must be a finite number > 0, found {lr}")
    if workers is not None and workers < 1:
        raise CliError(f"--workers must be at least 1, found {workers}")
    try:  # a space that cannot take the task's input: refused before any work starts
        bind_to_task(task, load_space(space), data_seed)
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    if backend == "local":
        be: Any = LocalBackend(workers)
    elif backend == "ray":
        be = RayBackend(address)
    else:
        raise CliError(f"--backend must be 'local' or 'ray', found {backend!r}")
    con = console(stderr=True)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]training[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} nets/s, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
    ) as bar:
        job = bar.add_task("train", total=n, rate="-", failed=0)
        state = {"start": None, "first": 0}

        def report(p: Any) -> None:
            if state["start"] is None:
                state["start"], state["first"] = time.perf_counter(), p.done
            dt = time.perf_counter() - state["start"]
            rate = (p.done - state["first"]) / dt if dt > 0 and p.done > state["first"] else 0
            bar.update(job, completed=p.done, rate=f"{rate:.1f}" if rate else "-", failed=p.failed)

        try:
            out = build_dataset(
                db,
                task,
                load_space(space),
                n,
                seed,
                trainer,
                be,
                data_seed=data_seed,
                chunk=chunk,
                progress=report,
                engine=engine,
            )
        except DatasetError as exc:
            raise CliError(str(exc)) from None
        except SamplingInterrupted as exc:
            stopped = exc
        else:
            stopped = None
    if stopped is not None:  # one line, after the progress bar has been closed
        typer.echo(f"{db}: {stopped}", err=True)
        raise typer.Exit(130 if stopped.signal_name == "SIGINT" else 143)
    dt = time.perf_counter() - t0
    typer.echo(
        f"{db}: {out['done']}/{out['total']} nets ({out['trained']} trained now in "
        f"{dt:.1f} s, {out['failed_now']} failed)"
    )


@dataset_app.command("info")
def dataset_info(
    db: Annotated[
        Path,
        typer.Argument(
            help="Dataset file made by `inag sample`, or a bundled one by name (data_a)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts, performance quantiles and bit-width / width coverage of a dataset."""
    from inag.dataset import DatasetStore

    with DatasetStore(db) as store:
        info = store.info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    c = info["counts"]
    task_shape = info.get("task_input_shape") or info["input_shape"]
    shape = "x".join(str(d) for d in task_shape or []) or "?"
    if info["input_shape"] and list(task_shape) != list(info["input_shape"]):
        shape += f", {info['space']} space input " + "x".join(str(d) for d in info["input_shape"])
    typer.echo(
        f"{info['path']}: task {info['task']} ({info['task_kind'] or 'unknown kind'}, input "
        f"shape {shape}, {info['output_size']} output(s)), space {info['space']}"
    )
    typer.echo(
        f"  rows: {c['ok'] + c['failed']} ({c['ok']} ok, {c['failed']} failed); "
        f"mean train time {info['train_seconds_per_net'] or 0:.3f} s/net (batched)"
    )
    if info["performance_quantiles"]:
        typer.echo(
            "  performance quantiles: "
            + ", ".join(
                f"q{float(q) * 100:g}={v:.3f}" for q, v in info["performance_quantiles"].items()
            )
        )
    for key in ("depth_coverage", "width_coverage", "bits_coverage"):
        typer.echo(
            f"  {key.replace('_', ' ')}: " + ", ".join(f"{k}:{v}" for k, v in info[key].items())
        )
    typer.echo(f"  trainer: {json.dumps(info['trainer'])}")


@dataset_app.command("export")
def dataset_export(
    db: Annotated[
        Path,
        typer.Argument(
            help="Dataset file made by `inag sample`, or a bundled one by name (data_a)."
        ),
    ],
    csv_out: Annotated[Path, typer.Option("--csv", help="CSV file to write.")],
) -> None:
    """Write every row (ok and failed) as CSV."""
    from inag.dataset import DatasetStore
    from inag.safe_io import check_writable

    check_writable(csv_out, "the CSV")
    with DatasetStore(db) as store:
        count = store.export_csv(csv_out)
    typer.echo(f"wrote {count} rows to {csv_out}")


def _check_db_out(db: Path) -> None:
    """The dataset path of `inag sample`: writable, and a dataset if it exists (checked before
    any training, without modifying a foreign file)."""
    from inag.dataset import DatasetError, check_dataset_file
    from inag.safe_io import check_writable

    check_writable(db, "the dataset")
    if db.is_file():
        try:
            check_dataset_file(db, allow_empty=True)
        except DatasetError as exc:
            raise CliError(str(exc)) from None


def _stored_restarts(db: Path) -> int | None:
    """The restarts an existing dataset was built with, or None (no file, none recorded, or a
    file build_dataset will refuse with its own message)."""
    from inag.dataset import DatasetError, DatasetStore

    if not db.is_file():
        return None
    try:
        with DatasetStore(db) as store:
            trainer = store.meta().get("trainer")
    except DatasetError:
        return None
    value = trainer.get("restarts") if isinstance(trainer, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


GROUPS = {"dataset": dataset_app}
COMMANDS = {"sample": sample}
