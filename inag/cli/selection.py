"""``inag select``: a bag from the generator through each platform's selecting stages."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inag.cli.common import (
    check_bag_size,
    console,
    load_model,
    plain_generator_note,
    target_condition,
)
from inag.cli.options import (
    MAX_SEED,
    CliError,
    RankOption,
    RefineOption,
    check_threshold,
    limit_overrides,
    with_limit_options,
)


def default_model_path() -> Path:
    """The generator shipped with the package (data_a, MLP space)."""
    from inag.nagan import bundled_models

    return bundled_models()["data_a"]


@with_limit_options
def select(
    platform: Annotated[
        list[str],
        typer.Option(
            "--platform", "-p", help="Platform YAML or bundled name; repeat for several."
        ),
    ] = ["cortex_m"],  # noqa: B006 - typer needs a list default
    model: Annotated[
        Path | None,
        typer.Option(
            help="NAGAN artifact, or a bundled generator by name: data_a (default), digits."
        ),
    ] = None,
    perf: Annotated[
        float | None, typer.Option(help="Raw target performance (R2 or accuracy).")
    ] = None,
    condition: Annotated[
        float | None, typer.Option(help="Normalized target c in [0, 1] (default 0.9).")
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Bag size.")] = 5000,
    top: Annotated[int, typer.Option(min=1, help="Ranked nets to show and save.")] = 5,
    threshold: Annotated[float, typer.Option(help="Confidence threshold on Dist_f.")] = 0.05,
    rank_by: RankOption = "dist_ub",  # inag.select.DEFAULT_RANK
    floor: Annotated[float, typer.Option(help="Lowest condition re-conditioning may try.")] = 0.05,
    step: Annotated[float, typer.Option(help="Re-conditioning step.")] = 0.05,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Noise seed.")] = 0,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the selection (readable by `inag export`)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Pareto plot PNG of the whole bag.")] = None,
    verify: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="QAT-train the top K of each platform with the dataset's recipe and re-rank "
            "them by measured performance (the encoder's top estimates run high; about 0.1 s "
            "per net with the C trainer). Default: 8 where the model's task data is "
            "available (the embedded tasks), else 0. 0: rank by the estimate alone.",
        ),
    ] = None,
    refine: RefineOption = None,
    **limits: float | None,
) -> None:
    """Generate one bag for a target and keep, per platform, the nets that fit its budgets."""
    from inag.platform import load_platform
    from inag.safe_io import atomic_write_text, check_writable
    from inag.select import DISTANCE_RANKS, MIN_STEP, SelectionError
    from inag.select import select as run_select
    from inag.select import verify as verify_top

    t_load = time.perf_counter()
    if perf is not None and condition is not None:
        raise CliError("give at most one of --perf (raw) and --condition (normalized)")
    if not math.isfinite(step) or not MIN_STEP <= step <= 1:
        raise CliError(
            f"--step must be in [{MIN_STEP:g}, 1] (the re-conditioning step; conditions are "
            f"kept to 6 decimals), found {step:g}"
        )
    if not math.isfinite(floor) or not 0 <= floor <= 1:
        raise CliError(f"--floor must be in [0, 1], found {floor}")
    check_threshold(threshold)
    if json_out:
        check_writable(json_out, "the selection JSON")
    if plot:
        check_writable(plot, "the plot")
    plats = [load_platform(p) for p in platform]
    _check_unique_platforms(plats, platform)
    m = load_model(model or default_model_path())
    check_bag_size(n, m, "select")
    c = target_condition(m, perf, 0.9 if perf is None and condition is None else condition)
    overrides = limit_overrides(limits)
    t0 = time.perf_counter()
    try:
        sels, tries = run_select(
            m,
            plats,
            c,
            n=n,
            threshold=threshold,
            rank_by=rank_by,
            overrides=overrides,
            seed=seed,
            step=step,
            floor=floor,
            strict=len(plats) == 1,
            refine=refine,
        )
    except SelectionError as exc:
        raise CliError(str(exc)) from None
    dt = time.perf_counter() - t0
    t_verify = 0.0
    verify_note = ""
    if verify is None and rank_by not in DISTANCE_RANKS:
        verify = 0  # ranked by a cost the user chose: nothing to verify the order of
    if verify is None:
        from inag.select import DEFAULT_VERIFY, why_not_verifiable

        why = why_not_verifiable(m)
        verify = 0 if why else DEFAULT_VERIFY
        verify_note = (
            f"ranked by the encoder's estimate alone: {why}"
            if why
            else f"verified by default: the top {verify} are trained on {m.task} "
            "(--verify 0 ranks by the estimate alone)"
        )
    if verify:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        t1 = time.perf_counter()
        with Progress(
            TextColumn(f"verifying the top {verify} by QAT training"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console(stderr=True),
            transient=True,  # the summary line says what was verified
        ) as bar:
            job = bar.add_task("verify", total=None)
            try:
                sels = verify_top(
                    sels, m, verify, progress=lambda i, k: bar.update(job, completed=i, total=k)
                )
            except (SelectionError, ValueError) as exc:
                raise CliError(str(exc)) from None
        t_verify = time.perf_counter() - t1
    con = console()
    from rich.table import Table

    con.print(
        f"model {model or default_model_path()} ({m.task}); target c={c:.3f} "
        f"(perf {float(m.denormalize(c)):.4f}); bag {n}; loaded in "
        f"{t0 - t_load:.2f} s, selected in {dt:.2f} s"
        + (f", top {verify} verified by training in {t_verify:.1f} s" if verify else "")
    )
    if verify_note:
        con.print(f"note: {verify_note}")
    if refine is None and not m.default_refine:
        con.print(f"note: {plain_generator_note(m)}")
    if rank_by == "dist_ub" and not m.has_intervals:
        con.print(
            "note: this model has no encoder ensemble, so dist_ub ranks by Dist_f alone "
            "(retrain it with `inag train` for the estimate's intervals)"
        )
    records = []
    for sel in sels:
        tr = tries[sel.platform]
        if len(tr) > 1:
            con.print(
                f"[yellow]{sel.platform}: re-conditioned {len(tr) - 1} time(s):[/yellow] "
                + ", ".join(f"c={a.condition:.2f} -> {a.survivors} fit" for a in tr)
            )
        record = {
            "platform": sel.platform,
            "condition": sel.condition,
            "tries": [{"condition": a.condition, "survivors": a.survivors} for a in tr],
            "funnel": [{"stage": f.name, "kept": f.kept} for f in sel.funnel],
            "selected": [],
        }
        records.append(record)
        if sel.failure:
            con.print(f"[red]{sel.platform}: {sel.failure}[/red]")
            record["failure"] = sel.failure
            continue
        con.print(
            f"[bold]{sel.platform}[/bold] funnel: generated {sel.bag.generated} "
            f"({len(sel.bag.archs)} distinct) -> "
            + " -> ".join(f"{f.name} {f.kept}" for f in sel.funnel)
        )
        cal = next((p.calibration for p in plats if p.name == sel.platform), None)
        if cal is not None:
            con.print(f"  {cal.summary()}")
            record["calibration"] = cal.summary()
        recs = sel.records(m, top)
        t = Table(show_edge=False)
        cols = ["#", "architecture", "est. perf (90 %)", "Dist_f"]
        cols += ["real perf"] if verify else []
        cols += ["storage KB", "energy uJ", "latency ms", "storage n", "energy n"]
        for col in cols:
            t.add_column(col, justify="right" if col != "architecture" else "left")
        for r in recs:
            real = r["measured_perf"]
            t.add_row(
                str(r["rank"]),
                r["summary"],
                f"{r['estimate_perf']:.4f}"
                + (f" ± {r['interval_perf']:.4f}" if r["interval_perf"] is not None else ""),
                f"{r['dist_f']:.4f}",
                *([f"{real:.4f}" if real is not None else "-"] if verify else []),
                f"{r['storage_bits'] / 8192:.2f}",
                f"{r['energy_j'] * 1e6:.3f}",
                f"{r['latency_s'] * 1e3:.3f}",
                f"{r['storage_norm']:.4f}",
                f"{r['energy_norm']:.4f}",
            )
        con.print(t)
        record["selected"] = recs
    if json_out:
        atomic_write_text(
            json_out,
            json.dumps(
                {
                    "model": str(model or default_model_path()),
                    "task": m.task,
                    "task_kind": m.task_kind,
                    "condition": c,
                    "bag": n,
                    "select_seconds": dt,
                    "platforms": records,
                    "selected": next((r["selected"] for r in records if r["selected"]), []),
                },
                indent=2,
            ),
        )
        con.print(f"wrote {json_out}")
    if plot:
        _pareto_plot(sels, m, plot)
        con.print(f"wrote {plot}")
    failed = [sel.platform for sel in sels if sel.failure]
    if failed:
        raise CliError(
            f"nothing fits {', '.join(failed)}; the picks for the other platforms are above"
        )


def _pareto_plot(sels: Any, m: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.5))
    bag = sels[0].bag
    ax.scatter(
        bag.costs.normalized("storage"),
        m.denormalize(bag.estimate),
        s=4,
        c="0.7",
        label=f"bag ({len(bag.archs)})",
    )
    for sel, mk in zip(sels, "o^sDv", strict=False):
        idx = np.asarray(sel.chosen[:5])
        ax.scatter(
            sel.bag.costs.normalized("storage")[idx],
            m.denormalize(sel.bag.estimate[idx]),
            marker=mk,
            s=40,
            label=f"selected: {sel.platform}",
        )
    ax.set_xlabel("normalized storage (eq. 2)")
    ax.set_ylabel("estimated performance")
    ax.set_title(f"{m.task}: generated bag at c={bag.condition:.2f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from inag.safe_io import atomic_open

    with atomic_open(path, binary=True) as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def _check_unique_platforms(plats: list[Any], given: list[str]) -> None:
    """Picks are keyed by platform name: two files with one name would swap their results."""
    seen: dict[str, str] = {}
    for p, arg in zip(plats, given, strict=True):
        if p.name in seen:
            raise CliError(
                f"two platforms are named {p.name!r} ({seen[p.name]} and {arg}); selections "
                "are reported by name, so give each platform file its own `name:`"
            )
        seen[p.name] = arg


COMMANDS = {"select": select}
