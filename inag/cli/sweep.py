"""``inag sweep``: the paper's Fig. 4b, a Pareto sweep over the condition.

Kept out of ``inag/cli/__init__.py``, which registers its ``COMMANDS``. The work is in
:mod:`inag.select.sweep` (no printing there); this module checks the input, shows the progress and
prints the summary. Bad input raises :class:`inag.cli.options.CliError`: one paragraph on
stderr, exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from inag.cli.options import (
    MAX_SEED,
    CliError,
    PlatformOption,
    RankOption,
    RefineOption,
    check_threshold,
    limit_overrides,
    with_limit_options,
)


@with_limit_options
def sweep(
    out: Annotated[
        Path, typer.Option(help="Output directory: sweep.csv, sweep.json, pareto_*.png.")
    ],
    model: Annotated[
        str,
        typer.Option(help="NAGAN artifact, or a bundled generator by name: data_a, digits."),
    ] = "data_a",
    platform: PlatformOption = "bitfusion",
    start: Annotated[float, typer.Option("--from", help="First condition c (in [0, 1]).")] = 0.0,
    stop: Annotated[float, typer.Option("--to", help="Last condition c (in [0, 1]).")] = 1.0,
    step: Annotated[float, typer.Option(help="Distance between conditions.")] = 0.05,
    n: Annotated[int, typer.Option("-n", help="Bag size per condition.")] = 1000,
    real: Annotated[
        int,
        typer.Option(
            "--real",
            help="QAT-train the top K survivors of each condition with the dataset's recipe "
            "(as `select --verify`) for measured performance. 0: estimates only.",
        ),
    ] = 0,
    threshold: Annotated[float, typer.Option(help="Confidence threshold on Dist_f.")] = 0.05,
    rank_by: RankOption = "dist_ub",  # inag.select.DEFAULT_RANK
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed (bags, random comparison).")
    ] = 0,
    refine: RefineOption = None,
    **limits: float | None,
) -> None:
    """Fig. 4b: a bag per condition through the platform's selecting stages; performance
    against normalized storage and energy with the Pareto frontier, against random sampling
    of the space at the same candidate count."""
    from inag.safe_io import check_writable_dir
    from inag.select import RANK_KEYS
    from inag.select.sweep import SweepError, conditions

    try:
        conds = conditions(start, stop, step)
    except SweepError as exc:
        raise CliError(str(exc)) from None
    if n < 1:
        raise CliError(f"-n must be >= 1 (the bag size per condition), found {n}")
    if real < 0:
        raise CliError(f"--real must be >= 0 (nets trained per condition), found {real}")
    check_threshold(threshold)
    if rank_by not in RANK_KEYS:
        raise CliError(f"--rank-by: {rank_by!r} is not one of {', '.join(RANK_KEYS)}")
    if seed < 0:
        raise CliError(f"--seed must be >= 0, found {seed}")
    check_writable_dir(out, "the sweep results")
    overrides = limit_overrides(limits)
    _run(
        out,
        model,
        platform,
        conds,
        n,
        real,
        threshold,
        rank_by,
        overrides,
        seed,
        step,
        refine,
    )


def _run(
    out: Path,
    model: str,
    platform: str,
    conds: tuple[float, ...],
    n: int,
    real: int,
    threshold: float,
    rank_by: str,
    overrides: dict[str, float],
    seed: int,
    step: float,
    refine: int | None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from inag.cli.common import BAG_BYTES_PER_ARCH, MAX_BAG, console, human_bytes, load_model
    from inag.platform import load_platform
    from inag.select import SelectionError
    from inag.select.sweep import SweepError, run_sweep, write_outputs

    if n * len(conds) > MAX_BAG:
        raise CliError(
            f"sweep keeps every condition's bag: {len(conds)} conditions x -n {n:,} = "
            f"{n * len(conds):,} architectures would need about "
            f"{human_bytes(n * len(conds) * BAG_BYTES_PER_ARCH)} of memory; at most "
            f"{MAX_BAG:,} in all: use a smaller -n or a larger --step"
        )
    plat = load_platform(platform)
    m = load_model(Path(model))
    config = {
        "model": model,
        "platform": platform,
        "from": conds[0],
        "to": conds[-1],
        "step": step,
        "conditions": list(conds),
        "bag": n,
        "real": real,
        "threshold": threshold,
        "rank_by": rank_by,
        "limit_overrides": overrides,
        "seed": seed,
        "refine": m.refine_steps(refine),
    }
    con = console(stderr=True)
    con.print(
        f"sweep {m.task} on {plat.name}: {len(conds)} conditions c = {conds[0]:g}..{conds[-1]:g}, "
        f"bag {n} each" + (f", top {real} trained per condition" if real else "")
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=con,
    ) as bar:
        job = bar.add_task("conditions", total=len(conds))
        train: dict[str, Any] = {}

        def on_condition(i: int, total: int, c: float) -> None:
            bar.update(job, completed=i, description=f"conditions (c={c:g})")

        def on_train(name: str, i: int, k: int) -> None:
            if name not in train:
                train[name] = bar.add_task(name, total=k)
            bar.update(train[name], completed=i, total=k)

        try:
            res = run_sweep(
                m,
                plat,
                conds,
                n=n,
                threshold=threshold,
                rank_by=rank_by,
                overrides=overrides,
                seed=seed,
                real=real,
                progress=on_condition,
                train_progress=on_train,
                config=config,
                refine=refine,
            )
        except (SweepError, SelectionError) as exc:
            raise CliError(str(exc)) from None
    files = write_outputs(res, out)
    fronts = res.fronts()
    distinct = len({a.arch_id for a in res.inag.archs})
    typer.echo(
        f"{len(res.inag)} candidates kept ({distinct} distinct) over {len(conds)} conditions; "
        f"random comparison: {len(res.random)} feasible of {res.random_draws} draws; "
        f"{res.seconds['total']:.1f} s"
    )
    empty = [f"{r.condition:g}" for r in res.per_condition if not r.survivors]
    if empty:
        typer.echo(f"nothing fits {plat.name} at c = {', '.join(empty)}")
    for role, f in fronts.items():
        for src in ("inag", "random", "inag_measured", "random_measured"):
            if src not in f:
                continue
            st = f[src]
            if not st["points"]:
                typer.echo(f"{role:<8} {src:<16} frontier: empty")
                continue
            reach = st["cost_to_reach"]["0.9"]
            typer.echo(
                f"{role:<8} {src:<16} frontier: {st['points']:3d} points, {role} "
                f"{st['cost_min']:.4f}..{st['cost_max']:.4f}, performance "
                f"{st['perf_min']:.3f}..{st['perf_max']:.3f}, mean best performance over "
                f"budgets {st['mean_best_perf']:.3f}, performance >= 0.9 from {role} "
                + (f"{reach:.4f}" if reach is not None else "never")
            )
        for x, y in (("inag", "random"), ("inag_measured", "random_measured")):
            if f"{x}_covers_{y}" in f:
                typer.echo(
                    f"{role:<8} {x}'s frontier dominates {f[f'{x}_covers_{y}']:.0%} of {y}'s, "
                    f"{y}'s dominates {f[f'{y}_covers_{x}']:.0%} of {x}'s"
                )
    typer.echo(f"wrote {', '.join(str(out / f) for f in files)}")


COMMANDS = {"sweep": sweep}
