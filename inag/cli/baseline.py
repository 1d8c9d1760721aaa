"""``inag baseline``: the paper's GA / Bayesian-optimization baselines (section 5.2, Table 3).

Kept out of ``inag/cli/__init__.py``, which registers its ``COMMANDS``. Heavy packages
(torch, Optuna) load inside the command. Bad input and a search that finds nothing within the
limits raise :class:`inag.cli.options.CliError`: one paragraph on stderr, exit code 2. (No
``click`` import: typer >= 0.29 vendors its own click and no longer installs the real one.)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inag.cli.options import (
    MAX_SEED,
    CliError,
    PlatformOption,
    limit_overrides,
    with_limit_options,
)

if TYPE_CHECKING:
    from inag.select.baselines import BaselineResult, Evaluator


@with_limit_options
def baseline(
    method: Annotated[
        str, typer.Option(help="ga (NSGA-II), bo (Gaussian-process BO) or tpe (Optuna TPE).")
    ] = "ga",
    task: Annotated[
        str | None,
        typer.Option(help="Task spec (data_a, digits, ...); default: the --db's or --model's."),
    ] = None,
    platform: PlatformOption = "bitfusion",
    budget_evals: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many evaluated architectures.")
    ] = None,
    budget_minutes: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many minutes of search.")
    ] = None,
    evaluator: Annotated[
        str,
        typer.Option(help="train (real QAT training) or encoder (the --model's surrogate)."),
    ] = "train",
    model: Annotated[
        Path | None, typer.Option(help="NAGAN artifact (needed for --evaluator encoder).")
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(help="Dataset whose task, data seed and trainer settings to train with."),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            help="Search space (mlp or a YAML path); default: mlp, or with --evaluator encoder "
            "the --model's space (the only one its encoder scores)."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the trainer's epochs (not comparable).")
    ] = None,
    restarts: Annotated[
        int | None, typer.Option(min=1, help="Override the trainer's restarts per net.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampler seed.")] = 0,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Feasible new architectures trained together.")
    ] = 16,
    population: Annotated[int, typer.Option(min=2, help="NSGA-II population size.")] = 20,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the result (and history); `inag export` reads it."),
    ] = None,
    **limits: float | None,
) -> None:
    """Constrained GA / BO search (Optuna) over the MLP space: the paper's Table 3 baselines.

    Every trial is costed by the platform's hardware models; only feasible ones are evaluated
    (trained, or estimated by the encoder). Prints the best feasible net and the search time.
    """
    from inag.platform import load_platform
    from inag.safe_io import atomic_write_text, check_writable
    from inag.select.baselines import EVALUATORS, METHODS, BaselineError, search

    if json_out is not None:
        check_writable(json_out, "the baseline JSON")
    if method not in METHODS:
        raise CliError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if evaluator not in EVALUATORS:
        raise CliError(f"--evaluator: {evaluator!r} is not one of {', '.join(EVALUATORS)}")
    if budget_evals is None and budget_minutes is None:
        raise CliError("give a budget: --budget-evals N and/or --budget-minutes M")
    if budget_minutes is not None and not (math.isfinite(budget_minutes) and budget_minutes > 0):
        raise CliError(f"--budget-minutes: must be a finite number > 0, found {budget_minutes}")
    plat = load_platform(platform)
    overrides = limit_overrides(limits)  # each limit finite and > 0 (check_limit_option)
    ev, search_space, task_name = _evaluator(evaluator, task, model, db, space, epochs, restarts)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    con = _console()
    total = budget_evals if budget_evals is not None else int(budget_minutes * 60)  # type: ignore[operator]
    unit = "evals" if budget_evals is not None else "s"
    bar = Progress(
        TextColumn(f"[bold]{method}[/bold] ({evaluator})"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit + " {task.fields[stats]}"),
        console=_console(stderr=True),
        transient=False,
    )
    job = bar.add_task("search", total=total, stats="")

    def report(p: Any) -> None:
        done = p.evals if budget_evals is not None else min(int(p.seconds), total)
        best = "-" if p.best_performance is None else f"{p.best_performance:.4f}"
        bar.update(
            job,
            completed=done,
            stats=f"trials={p.trials} infeasible={p.infeasible} best={best} {p.seconds:.0f}s",
        )

    try:
        with bar:
            res = search(
                search_space,
                plat,
                ev,
                method=method,
                overrides=overrides,
                budget_evals=budget_evals,
                budget_minutes=budget_minutes,
                seed=seed,
                batch_size=batch_size,
                population_size=population,
                progress=report,
            )
            report_final = res
            bar.update(job, completed=res.evals if budget_evals is not None else total)
    except BaselineError as exc:
        raise CliError(str(exc)) from None
    _print_result(con, report_final, task_name)
    if json_out is not None:
        data = {
            "kind": "baseline",
            "task": task_name,
            **report_final.to_dict(),
            # the shape `inag select --json` writes, so `inag export OUT.json#1` works
            "selected": [{"rank": 1, **report_final.to_dict(history=False)["best"]}],
            "created": time.time(),
        }
        atomic_write_text(json_out, json.dumps(data, indent=2))
        con.print(f"wrote {json_out}")


def _evaluator(
    kind: str,
    task: str | None,
    model_path: Path | None,
    db: Path | None,
    space: str | None,
    epochs: int | None,
    restarts: int | None,
) -> tuple[Evaluator, Any, str]:
    """The evaluator, the search space it scores, and the task name; checks they agree."""
    import dataclasses

    from inag.select.baselines import (
        EncoderEvaluator,
        dataset_meta,
        space_for_task,
        train_evaluator,
    )
    from inag.space import SpaceError, load_space
    from inag.train.trainer import TrainerConfig

    try:  # a bad --space is refused before anything is loaded or trained
        given_space = None if space is None else load_space(space)
    except SpaceError as exc:
        raise CliError(f"--space: {exc}") from None
    meta = dataset_meta(str(db)) if db is not None else None
    model = None
    if model_path is not None:
        from inag.nagan import load_model

        model = load_model(model_path)
    sources = {
        "--task": task,
        "--db": None if meta is None else meta.get("task"),
        "--model": None if model is None else model.task,
    }
    given = {k: v for k, v in sources.items() if v is not None}
    if len(set(given.values())) > 1:
        raise CliError(
            "the task differs between "
            + ", ".join(f"{k} ({v})" for k, v in given.items())
            + "; give matching ones"
        )
    if not given:
        raise CliError("give --task (or a --db / --model that names it)")
    task_name = next(iter(given.values()))

    if kind == "encoder":
        if model is None:
            raise CliError(
                "--evaluator encoder scores nets with a NAGAN artifact's encoder; give --model"
            )
        if epochs is not None or restarts is not None:
            raise CliError("--epochs/--restarts apply to --evaluator train only")
        if given_space is not None:
            ms = model.space
            try:
                same = given_space.bind(ms.input_shape, ms.output_size) == ms
            except SpaceError:
                same = False
            if not same:
                raise CliError(
                    f"--space {space!r} (the {given_space.kind} space {given_space.name!r}) "
                    f"differs from the --model's search space (the {ms.kind} space "
                    f"{ms.name!r}); --evaluator encoder scores only the space its encoder was "
                    "trained on: omit --space, or use --evaluator train"
                )
        return EncoderEvaluator(model), model.space, task_name

    trainer_fields: dict[str, Any] | None = None
    data_seed = 0
    if meta is not None:
        trainer_fields, data_seed = meta["trainer"], int(meta.get("data_seed", 0))
    elif model is not None and "trainer" in model.meta:
        # the artifact records the trainer of the dataset it learned from
        trainer_fields, data_seed = model.meta["trainer"], int(model.meta.get("data_seed", 0))
    config = TrainerConfig.from_record(trainer_fields) if trainer_fields else TrainerConfig()
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    if restarts is not None:
        config = dataclasses.replace(config, restarts=restarts)
    ev = train_evaluator(task_name, config, data_seed=data_seed)
    return ev, space_for_task(ev.task, space or "mlp"), task_name


def _print_result(con: Any, r: BaselineResult, task: str) -> None:
    from rich.table import Table

    limits = ", ".join(f"{k}={v:g}" for k, v in r.limits.items())
    con.print(
        f"[bold]{r.method}[/bold] ({r.sampler}, seed {r.seed}) on [bold]{r.platform}[/bold], "
        f"task {task}, evaluator {r.evaluator}; limits: {limits}"
    )
    t = Table(show_edge=False)
    cols = (
        "architecture",
        "perf",
        "storage n",
        "energy n",
        "storage KB",
        "flash B",
        "SRAM B",
        "energy uJ",
        "latency ms",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "architecture" else "right")
    c = r.costs
    t.add_row(
        r.best.summary(),
        f"{r.performance:.4f}",
        f"{r.storage_norm:.4f}",
        f"{r.energy_norm:.4f}",
        _fmt(c.get("storage_bits"), 1 / 8192, ".2f"),
        _fmt(c.get("flash_bytes"), 1, ".0f"),
        _fmt(c.get("sram_bytes"), 1, ".0f"),
        _fmt(c.get("energy_j"), 1e6, ".4g"),
        _fmt(c.get("latency_s"), 1e3, ".4g"),
    )
    con.print(t)
    con.print(
        f"search: {r.evals} evaluations, {r.trials} trials ({r.infeasible} infeasible, "
        f"{r.cached} repeats from cache); {r.seconds:.1f} s (best found at "
        f"{r.seconds_to_best:.1f} s); stopped by the {r.stopped_by} budget"
    )


def _fmt(v: float | None, scale: float, spec: str) -> str:
    return "-" if v is None else format(v * scale, spec)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con.width = max(con.width, 140)
    return con


COMMANDS = {"baseline": baseline}
