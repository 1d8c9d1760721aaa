"""``inag train``, ``generate`` and ``evaluate``: the NAGAN generator and its surrogate encoder."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from inag.cli.common import (
    check_bag_size,
    console,
    human_bytes,
    load_model,
    plain_generator_note,
    stage_progress,
    target_condition,
)
from inag.cli.options import MAX_SEED, CliError, RefineOption, check_threshold


def train(
    db: Annotated[
        Path, typer.Option(help="Dataset file made by `inag sample`, or a bundled one: data_a.")
    ],
    out: Annotated[Path, typer.Option(help="Artifact to write (safetensors + metadata).")],
    seed: Annotated[
        int,
        typer.Option(min=0, max=MAX_SEED, help="Seed of splits, initialization and GAN noise."),
    ] = 0,
    gan_steps: Annotated[
        int | None, typer.Option(min=1, help="Generator/discriminator updates (default 4000).")
    ] = None,
    enc_epochs: Annotated[
        int | None, typer.Option(min=1, help="Encoder training epochs (default 150).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N rows (dataset-size studies).")
    ] = None,
    ensemble: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="Encoder ensemble members for the estimate's 90 % interval, which `select` "
            "ranks by (default 5; 0: none, selection ranks by Dist_f as the paper does).",
        ),
    ] = None,
) -> None:
    """Train the surrogate encoder, then NAGAN, on a dataset; save one verified artifact."""
    from dataclasses import replace

    from inag.dataset import DatasetStore
    from inag.nagan import NaganConfig, fit_nagan
    from inag.safe_io import check_writable

    if limit is not None and limit < 1:
        raise CliError(f"--limit must be at least 1, found {limit}")
    if ensemble == 1:
        raise CliError("--ensemble must be 0 (no intervals) or at least 2 members, found 1")
    check_writable(out, "the NAGAN artifact")
    with DatasetStore(db) as store:
        archs, perf = store.archs_and_performance()
        meta = store.meta()
    missing = [k for k in ("task", "task_kind", "space", "trainer", "data_seed") if k not in meta]
    if missing:
        raise CliError(
            f"{db}: the dataset records no {', '.join(missing)}; rebuild it with `inag sample`"
        )
    if limit is not None:
        archs, perf = archs[:limit], perf[:limit]
    space = _dataset_space(meta)
    cfg = NaganConfig(seed=seed)
    if gan_steps is not None:
        cfg = replace(cfg, gan_steps=gan_steps)
    if enc_epochs is not None:
        cfg = replace(cfg, enc_epochs=enc_epochs)
    if ensemble is not None:
        cfg = replace(cfg, ensemble=ensemble)
    con = console(stderr=True)
    bar, report = stage_progress(con)
    t0 = time.perf_counter()
    with bar:
        model, rep = fit_nagan(
            space,
            archs,
            perf,
            meta["task"],
            meta["task_kind"],
            cfg,
            report,
            info={"dataset": str(db), "trainer": meta["trainer"], "data_seed": meta["data_seed"]},
        )
    model.save(out)
    typer.echo(
        f"encoder: held-out R2 {rep.r2:.4f}, Kendall tau {rep.kendall_tau:.4f} "
        f"({rep.n_train} train / {rep.n_val} held-out rows, {rep.seconds:.1f} s); the epoch "
        f"kept is the one with the best held-out R2 (epoch {rep.best_epoch}/{rep.epochs}, "
        f"the bar's best_held_out_r2; the last epoch's was {rep.last_r2:.4f})"
    )
    if "interval" in model.meta:
        iv = model.meta["interval"]
        typer.echo(
            f"ensemble: {iv['members']} members, {iv['coverage']:.0%} interval = est ± "
            f"{iv['kappa']:.2f} x spread (median ± {iv['median_half_width']:.3f}; covers "
            f"{iv['held_out_covered']:.1%} of {iv['held_out']} held-out rows; spread-error "
            f"Kendall tau {iv['spread_error_tau']:.2f}; {iv['seconds']:.1f} s)"
        )
    typer.echo(
        f"NAGAN: {cfg.gan_steps} steps, {model.meta['gan_seconds']:.1f} s; total "
        f"{time.perf_counter() - t0:.1f} s; performance range p_min={model.p_min:.4f} "
        f"P_R={model.p_range:.4f}"
    )
    typer.echo(f"wrote {out}")


def _dataset_space(meta: dict[str, Any]) -> Any:
    """The space a dataset was sampled from: its stored definition, or (datasets made before
    session 8) the bundled space of its name."""
    from inag.space import SpaceError, load_space, space_from_dict

    sp = meta["space"]
    try:
        if "space_definition" in meta:
            return space_from_dict(meta["space_definition"], source="the dataset's space")
        return load_space(sp["name"]).bind(sp["input_shape"], sp["output_size"])
    except SpaceError as exc:
        hint = (
            ""
            if "space_definition" in meta
            else f" (this dataset was made before datasets stored their space: it names space "
            f"{sp['name']!r} only, which is neither bundled nor a file here)"
        )
        raise CliError(f"dataset space: {exc}{hint}") from None


def generate(
    model: Annotated[
        Path,
        typer.Option(help="NAGAN artifact from `inag train`, or a bundled name (data_a, digits)."),
    ],
    condition: Annotated[
        float | None, typer.Option(help="Normalized condition c in [0, 1].")
    ] = None,
    perf: Annotated[
        float | None,
        typer.Option(
            help="Raw target performance (R2 or accuracy), normalized with the model's range."
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Bag size.")] = 1000,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Noise seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="JSON-lines file (default: stdout).")] = None,
    refine: RefineOption = None,
) -> None:
    """Generate a bag of architectures for a target; JSON lines with estimate and Dist_f.

    Streamed: the bag is generated, estimated and written in chunks, so memory does not grow
    with -n (the lines are the same as a one-piece bag of the same seed).
    """
    import contextlib

    from inag.safe_io import atomic_open, check_writable

    if (condition is None) == (perf is None):
        raise CliError("give exactly one of --condition (normalized) or --perf (raw)")
    if out:
        check_writable(out, "the generated bag")
    m = load_model(model)
    _check_generate_size(n)
    c = target_condition(m, perf, condition)
    seen: set[str] = set()
    dist_sum = 0.0
    with contextlib.ExitStack() as stack:
        write = stack.enter_context(atomic_open(out)).write if out else None
        chunks = m.generate_chunks(c, n, seed=seed, chunk=GENERATE_CHUNK, refine=refine)
        for bag in chunks:
            est = m.estimate(bag)
            dist_sum += float(abs(est - c).sum())
            lines = bag_lines(m, bag, est, c)
            if write:
                write(lines)
            else:
                try:
                    sys.stdout.write(lines)
                    sys.stdout.flush()
                except BrokenPipeError:  # `| head`: the reader has all it wants; stop quietly
                    import os

                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                    raise typer.Exit(141) from None  # 128 + SIGPIPE, as `yes | head` gives
            if len(seen) < MAX_TRACKED_UNIQUE:
                seen.update(a.arch_id for a in bag)
    if len(seen) < MAX_TRACKED_UNIQUE:
        uniq = f"{len(seen)} unique ({len(seen) / n:.1%})"
    else:
        uniq = f"at least {MAX_TRACKED_UNIQUE:,} unique (counted up to there)"
    typer.echo(
        f"condition {c:.3f}: {n} generated, {uniq}; mean Dist_f {dist_sum / n:.4f}",
        err=True,
    )
    if refine is None and not m.default_refine:
        typer.echo(f"note: {plain_generator_note(m)}", err=True)


def evaluate(
    model: Annotated[
        Path,
        typer.Option(help="NAGAN artifact from `inag train`, or a bundled name (data_a, digits)."),
    ],
    real: Annotated[int, typer.Option("--real", min=1, help="Nets trained per condition.")] = 8,
    n: Annotated[int, typer.Option("-n", min=1, help="Bag size per condition.")] = 1000,
    threshold: Annotated[float, typer.Option(help="Confidence threshold on Dist_f.")] = 0.05,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("runs/report"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed.")] = 0,
    noise: Annotated[
        int,
        typer.Option(help="Dataset archs retrained with 5 seeds for the noise floor (0: skip)."),
    ] = 20,
    train_sizes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated dataset sizes to retrain on (Fig. 4a), e.g. 250,500,1000."
        ),
    ] = None,
    refine: RefineOption = None,
) -> None:
    """The paper's sweep c = 0.1..1.0: mDist_f, mDist_r, baselines, noise floor, report.md."""
    from dataclasses import replace

    import numpy as np

    from inag.dataset import DatasetStore, model_dataset
    from inag.nagan import fit_nagan
    from inag.nagan.evaluate import evaluate as run_eval
    from inag.nagan.evaluate import noise_floor, write_report
    from inag.safe_io import check_writable_dir
    from inag.train.trainer import TrainerConfig

    # every option is checked here, before the minutes of training below
    check_threshold(threshold)
    if noise < 0:
        raise CliError(f"--noise must be 0 (skip) or a positive count, found {noise}")
    if real > n:
        raise CliError(
            f"--real must be at most the bag size -n {n} (the --real nets per condition are "
            f"picked from the bag), found {real}"
        )
    check_writable_dir(out, "the evaluation report")
    sizes_list = _int_list_option(train_sizes, "--train-sizes") if train_sizes else []
    m = load_model(model)
    check_bag_size(n, m, "evaluate")
    db, tried = model_dataset(m.meta)
    if db is None:
        raise CliError(
            f"the model's dataset {m.meta.get('dataset')!r} is not available (needed for the "
            f"trainer budget, baselines and noise floor); looked at: {'; '.join(tried)}"
        )
    with DatasetStore(db) as store:
        archs, perf = store.archs_and_performance()
        meta = store.meta()
    _check_evaluate_counts(real, noise, sizes_list, len(archs))
    trainer = TrainerConfig.from_record(meta["trainer"])
    con = console(stderr=True)
    con.print(f"evaluating {model} on {m.task}: K={real}, bag {n}")
    bar, stage = stage_progress(con)

    def trains(prefix: str = "") -> Callable[[str, int, int], None]:
        return lambda name, i, total: stage(prefix + name, i, total, {})

    with bar:
        rep = run_eval(
            m,
            trainer,
            meta["data_seed"],
            k=real,
            n_bag=n,
            threshold=threshold,
            seed=seed,
            dataset=(archs, perf),
            progress=lambda s: con.print(s),
            train_progress=trains(),
            refine=refine,
        )
        extra: dict[str, Any] = {
            "encoder held-out R2": f"{m.meta['encoder']['r2']:.4f}",
            "encoder Kendall tau": f"{m.meta['encoder']['kendall_tau']:.4f}",
            "dataset rows": m.meta["dataset_size"],
            "performance range": f"p_min={m.p_min:.4f}, P_R={m.p_range:.4f}",
        }
        if noise:
            rng = np.random.default_rng(seed)
            chosen = rng.choice(len(archs), size=min(noise, len(archs)), replace=False)
            pick = [archs[i] for i in chosen]
            nf = noise_floor(
                pick, m.task, meta["data_seed"], trainer, m.p_range, train_progress=trains()
            )
            extra["noise floor (mean |p - mean p| / P_R, 5 seeds)"] = f"{nf * 100:.2f} %"
        sizes: list[tuple[int, float]] = []
        if train_sizes:
            for size in sizes_list:
                cfg = replace(m.config, seed=seed)
                sub, _ = fit_nagan(
                    m.space,
                    archs[:size],
                    perf[:size],
                    m.task,
                    m.task_kind,
                    cfg,
                    lambda name, i, total, stats, size=size: stage(
                        f"size {size}: {name}", i, total, stats
                    ),
                )
                r = run_eval(
                    sub,
                    trainer,
                    meta["data_seed"],
                    k=max(2, real // 2),
                    n_bag=n,
                    threshold=threshold,
                    seed=seed,
                    train_progress=trains(f"size {size}: "),
                    refine=refine,
                )
                sizes.append((size, r.m_dist("nagan", "r")))
                con.print(f"  size {size}: mDist_r {sizes[-1][1]:.2f} %")
    files = write_report(rep, m, out, extra, sizes)
    for meth in rep.results:
        typer.echo(
            f"{meth:<16} mDist_f {rep.m_dist(meth, 'f'):6.2f} % (trained "
            f"{rep.m_dist_trained_f(meth):5.2f} %)  mDist_r "
            f"{rep.m_dist(meth, 'r'):6.2f} %  diversity {rep.diversity(meth):.3f}"
        )
    for k, v in extra.items():
        typer.echo(f"{k}: {v}")
    typer.echo(f"wrote {', '.join(str(out / f) for f in files)} ({rep.seconds:.0f} s)")


# `generate` streams (GENERATE_CHUNK architectures at a time): its memory does not grow with
# -n, its output does: 424 bytes per JSON line, measured on the same generator.
GENERATE_CHUNK = 4096


MAX_GENERATE = 100_000_000


GENERATE_BYTES_PER_LINE = 424


MAX_TRACKED_UNIQUE = 250_000  # distinct arch ids counted for the summary line (~25 MB)


def bag_lines(m: Any, bag: list[Any], est: Any, c: float) -> str:
    """The JSON lines `generate` writes for a bag and its estimates (one record per arch)."""
    return "".join(
        json.dumps(
            {
                "arch_id": a.arch_id,
                "arch": a.to_dict(),
                "condition": c,
                "estimate_c": float(e),
                "estimate_perf": float(m.denormalize(e)),
                "dist_f": float(abs(e - c)),
            }
        )
        + "\n"
        for a, e in zip(bag, est, strict=True)
    )


def _check_generate_size(n: int) -> None:
    """`generate` streams, so only its output grows with -n: refuse absurd sizes."""
    if n > MAX_GENERATE:
        raise CliError(
            f"generate -n {n:,} would write about {human_bytes(n * GENERATE_BYTES_PER_LINE)} "
            f"of JSON lines (measured: ~{GENERATE_BYTES_PER_LINE} bytes per architecture; the "
            f"memory stays that of one chunk of {GENERATE_CHUNK:,}); at most {MAX_GENERATE:,} "
            "per run: use several runs with different --seed"
        )


def _check_evaluate_counts(real: int, noise: int, sizes: list[int], rows: int) -> None:
    """`evaluate`'s counts against the model's dataset of ``rows`` trained architectures."""
    from inag.nagan import MIN_TRAIN_ROWS

    if real > rows:
        raise CliError(
            f"--real must be at most the {rows} rows of the model's dataset (the "
            f"dataset-nearest baseline retrains the --real rows closest to each condition), "
            f"found {real}"
        )
    if noise > rows:
        raise CliError(
            f"--noise must be at most the {rows} rows of the model's dataset (it retrains that "
            f"many of its rows), found {noise}"
        )
    bad = [s for s in sizes if not MIN_TRAIN_ROWS <= s <= rows]
    if bad:
        raise CliError(
            f"--train-sizes must each be between {MIN_TRAIN_ROWS} (the fewest rows NAGAN trains "
            f"on) and the {rows} rows of the model's dataset, found "
            f"{', '.join(str(s) for s in bad)}"
        )


def _int_list_option(text: str, option: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise CliError(
            f"{option} expects positive integers separated by commas, found {text!r}"
        ) from None
    if any(v < 1 for v in vals):
        raise CliError(f"{option} expects positive integers, found {text!r}")
    return vals


COMMANDS = {"train": train, "generate": generate, "evaluate": evaluate}
