"""``inag measure`` (run, ls, show, export) and ``inag calibrate``: closing the loop.

Measurements go into an SQLite store (:mod:`inag.measurements`); ``calibrate`` fits the
platform's latency model (:mod:`hwmodels.calibrate`) to them and writes an ordinary platform
YAML whose fitted numbers say ``kind: measured`` and where they came from.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inag.cli.common import console
from inag.cli.options import MAX_SEED, CliError, PlatformOption
from inag.safe_io import check_writable

if TYPE_CHECKING:
    from inag.arch import ArchSpec
    from inag.measurements import MeasurementRow
    from inag.platform import Platform

DEFAULT_DB = Path("runs/measurements.sqlite")
RUNTIME_OF = {"tvm_local": "tvm", "tvm_rpc": "tvm", "onnxruntime": "onnxruntime",
              "c_standalone": "qemu"}  # fmt: skip
ALL_RUNTIMES = ("tvm", "onnxruntime", "c", "qemu", "serial")
ROLE_UNITS = {"latency": (1e6, "us"), "flash": (1.0, "bytes")}  # what calibrate can fit

measure_app = typer.Typer(
    help="Measure latency on devices (TVM local/RPC/tracker, onnxruntime, C, QEMU, a board) "
    "into an SQLite store, and inspect the store.",
    no_args_is_help=True,
)


# ---------------------------------------------------------------------------- measure run
def _device_identity(runtime: str, device: str | None) -> str:
    if device and device != "local":
        return device
    if runtime == "qemu":
        return "qemu:mps2-an386"
    from inag import hostinfo

    llvm = (hostinfo.llvm_host_cpu() or {}).get("cpu") if runtime == "tvm" else None
    return f"host:{llvm or hostinfo.cpu_info().model_name}"


def _archs_to_measure(
    source: str | None,
    space: str | None,
    n: int,
    seed: int,
    input_shape: str | None,
    output_size: int | None,
) -> tuple[list[ArchSpec], str]:
    from inag.cli.export import read_arch

    if source is not None and space is not None:
        raise CliError("give either SOURCE (an export dir or SELECT.json#RANK) or --space")
    if source is not None:
        path = Path(source)
        if path.is_dir():
            manifest = path / "manifest.json"
            if not manifest.is_file():
                raise CliError(f"{path}: not an export directory (no manifest.json)")
            try:
                data = json.loads(manifest.read_text())
                from inag.arch import ArchSpec

                return [ArchSpec.from_dict(data["arch"])], f"export {path}"
            except (ValueError, KeyError, TypeError) as exc:
                raise CliError(f"{manifest}: not an export manifest ({exc})") from None
        return [read_arch(source)], source
    from inag.cli.common import load_space
    from inag.measurements import plan_archs

    s = load_space(space or "mlp", input_shape, output_size)
    return plan_archs(s, n, seed), f"plan {space or 'mlp'} n={n} seed={seed}"


@measure_app.command("run")
def measure_run(
    source: Annotated[
        str | None,
        typer.Argument(
            help="An export directory, SELECT.json#RANK, or arch JSON; or use --space."
        ),
    ] = None,
    platform: PlatformOption = "host_cpu",
    runtime: Annotated[
        str | None,
        typer.Option(help="tvm, onnxruntime, c, qemu or serial (default: the platform's)."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Where: local (default), rpc://HOST:PORT, tracker://HOST:PORT/KEY (TVM); "
            "socket://HOST:PORT or a serial port (serial runtime)."
        ),
    ] = None,
    space: Annotated[
        str | None, typer.Option(help="Measure a plan sampled from this space (mlp, cnn).")
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, max=10_000, help="Plan size.")] = 40,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Plan seed.")] = 0,
    input_shape: Annotated[
        str | None, typer.Option(help="Bind the plan's space to an input shape, e.g. 8.")
    ] = None,
    output_size: Annotated[int | None, typer.Option(help="Bind the output size.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Batch size.")] = 1,
    warmup: Annotated[int | None, typer.Option(min=0, help="Default: the platform's.")] = None,
    repeats: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="Default: the platform's.")
    ] = None,
    db: Annotated[Path, typer.Option(help="Measurement store (SQLite).")] = DEFAULT_DB,
    force: Annotated[bool, typer.Option(help="Measure again what the store has.")] = False,
    passes: Annotated[
        int,
        typer.Option(
            min=1,
            max=100,
            help="Time the plan this many times, interleaved: each net once per pass, built "
            "once. Drift of a shared machine then touches every net alike; each pass is a "
            "row, and `inag calibrate` uses each net's median over its rows.",
        ),
    ] = 1,
) -> None:
    """Measure batch latency of networks on a platform's device and store every sample.

    A plan (--space mlp -n 40) samples architectures spread over MACs and depth and gives each
    random integer weights (latency does not depend on their values). Resumable: what the
    store already holds for this platform, device, runtime and batch is skipped.
    """
    import numpy as np

    from export.qnet import QuantizedNet
    from hwmodels import PlatformCoster
    from inag.measurements import (
        MeasurementRow,
        MeasurementStore,
        descriptor_sha,
        iter_rows_to_measure,
        versions,
    )
    from inag.platform import load_platform

    plat = load_platform(platform)
    rt = runtime or RUNTIME_OF.get(plat.measure.runtime, "tvm")
    if rt not in ALL_RUNTIMES:
        raise CliError(f"--runtime: {rt!r} is not one of {', '.join(ALL_RUNTIMES)}")
    if rt == "tvm" and device is None and plat.measure.runtime == "tvm_rpc" and plat.measure.rpc:
        r = plat.measure.rpc
        device = f"tracker://{r.tracker}/{r.key}" if r.tracker else f"rpc://{r.host}:{r.port}"
    if rt == "serial" and not device:
        raise CliError("--runtime serial needs --device (a serial port or socket://HOST:PORT)")
    if plat.kind == "mcu" and rt in ("tvm", "onnxruntime", "c") and not device:
        # a local runtime times this host: stored under an MCU platform, a later calibrate
        # would fit the MCU's model to desktop timings
        raise CliError(
            f"--runtime {rt} without --device times this host, not the {plat.name} "
            f"microcontroller; use --runtime qemu (emulated) or --runtime serial --device PORT "
            f"(the board), or -p host_cpu to measure this host"
        )
    archs, what = _archs_to_measure(source, space, n, seed, input_shape, output_size)
    check_writable(db, "--db")
    warm = plat.measure.warmup if warmup is None else warmup
    reps = plat.measure.repeats if repeats is None else repeats
    dev_id = _device_identity(rt, device)
    con = console()
    with MeasurementStore(db) as store:
        todo = (
            list(archs)
            if force
            else list(iter_rows_to_measure(store, archs, plat.name, dev_id, rt, batch))
        )
        con.print(
            f"{what}: {len(archs)} nets, {len(archs) - len(todo)} already in {db}; measuring "
            f"{len(todo)} on {plat.name} via {rt} ({dev_id}), batch {batch}, warm-up {warm}, "
            f"repeats {reps}"
        )
        coster = PlatformCoster(plat)
        sha = descriptor_sha(plat)
        vers = versions()
        rng = np.random.default_rng(seed)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with (
            Progress(TextColumn("measure"), BarColumn(), MofNCompleteColumn(), console=con,
                     transient=True) as bar,
            tempfile.TemporaryDirectory(prefix="inag-measure-") as tmp,
        ):  # fmt: skip
            job = bar.add_task("measure", total=len(todo) * passes)
            nets = [QuantizedNet.random(arch, rng) for arch in todo]
            timers: dict[int, Any] | None = {} if passes > 1 else None
            for p, (i, arch) in itertools.product(range(passes), enumerate(todo)):
                net = nets[i]
                work = Path(tmp) / str(i)
                m = _measure_one(net, rt, work, plat, device, batch, warm, reps, timers, i)
                if passes > 1:
                    m["extra"] = {**m.get("extra", {}), "pass": p + 1, "passes": passes}
                predicted = float(coster.cost([arch]).totals["latency"][0])
                row = MeasurementRow(
                    platform=plat.name,
                    platform_sha=sha,
                    device=dev_id,
                    runtime=rt,
                    origin=m["origin"],
                    unit=m["unit"],
                    arch=arch,
                    batch=batch,
                    warmup=warm,
                    repeats=reps,
                    number=m["number"],
                    samples=tuple(m["samples"]),
                    median=m["median"],
                    predicted_s=predicted,
                    versions={**vers, **m.get("versions", {})},
                    extra=m.get("extra", {}),
                )
                store.add(row)
                bar.advance(job)
        rows = store.rows(plat.name, dev_id, rt, batch)
    con.print(f"stored; {len(rows)} measurements for {plat.name} / {dev_id} / {rt} in {db}")
    _print_rows(con, [r for r in rows if r.arch.arch_id in {a.arch_id for a in archs}], plat)


def _measure_one(
    net: Any,
    runtime: str,
    work: Path,
    plat: Platform,
    device: str | None,
    batch: int,
    warmup: int,
    repeats: int,
    timers: dict[int, Any] | None = None,
    key: int = 0,
) -> dict[str, Any]:
    """One measurement as a dict: samples and median in ``unit``, origin, number, extra.

    With ``timers`` (several passes), a net built once is timed again from ``timers[key]``.
    """
    if runtime in ("tvm", "onnxruntime", "c"):
        from export.measure import prepare_net
        from export.tools import tool_version

        timer = None if timers is None else timers.get(key)
        if timer is None:
            timer = prepare_net(
                net, runtime, work, platform=plat, device=device, batch=batch, warmup=warmup
            )
            if timers is not None:
                timers[key] = timer
        m = timer(repeats)
        return {
            "samples": list(m.results_s),
            "median": m.median_s,
            "unit": "s",
            "origin": m.origin,
            "number": m.number,
            "extra": {"where": m.where},
            "versions": {"gcc": tool_version("gcc")} if runtime == "c" else {},
        }
    from export import device as dev

    if batch != 1:
        raise CliError(f"--runtime {runtime} measures batch 1 only")
    if runtime == "qemu":
        # every emulated inference is timed: a budget of ~0.2 s of host time per 1M instructions
        r = dev.measure_qemu(net, warmup=warmup, repeats=repeats, work_dir=work, timeout=300.0)
    else:
        assert device is not None
        # the board runs the harness it was flashed with (its own warm-up and repeats)
        r = dev.measure_serial(device, net=net)
    keep = ("device", "counter", "instructions_per_count", "clock_hz", "crc32", "bit_exact",
            "sizes", "model_sizes")  # fmt: skip
    return {
        "samples": [float(v) for v in r["samples"]],
        "median": float(r["median"]),
        "unit": r["unit"],
        "origin": r["origin"],
        "number": 1,
        "extra": {k: r[k] for k in keep if k in r},
        "versions": {k: str(v) for k, v in (r.get("versions") or {}).items()},
    }


def group_by_arch(rows: list[MeasurementRow]) -> list[list[MeasurementRow]]:
    """The rows of each net, nets in order of first measurement, rows oldest first."""
    out: dict[str, list[MeasurementRow]] = {}
    for r in rows:
        out.setdefault(r.arch.arch_id, []).append(r)
    return list(out.values())


def _seconds(row: MeasurementRow, clock_hz: float) -> float:
    """A stored median as seconds: cycle and instruction counts at the platform's clock (one
    instruction per cycle for emulated counts)."""
    return row.median if row.unit == "s" else row.median / clock_hz


def _print_rows(con: Any, rows: list[MeasurementRow], plat: Platform | None) -> None:
    from rich.table import Table

    t = Table()
    for col in (
        "id",
        "arch",
        "MACs",
        "batch",
        "median",
        "unit",
        "origin",
        "predicted",
        "pred/meas",
    ):
        t.add_column(col)
    from inag.ir import layer_table_many

    macs = layer_table_many([r.arch for r in rows]).macs.sum(axis=1) if rows else []
    for r, mac in zip(rows, macs, strict=True):
        clock = plat.capability.clock_hz.value if plat is not None else None
        meas_s = _seconds(r, clock) if clock else (r.median if r.unit == "s" else None)
        ratio = f"{r.predicted_s / meas_s:.2f}" if r.predicted_s and meas_s else "-"
        med = f"{r.median * 1e6:.2f} us" if r.unit == "s" else f"{r.median:,.0f}"
        pred = f"{r.predicted_s * 1e6:.2f} us" if r.predicted_s else "-"
        t.add_row(str(r.id), r.arch.summary(), f"{int(mac):,}", str(r.batch), med, r.unit,
                  r.origin, pred, ratio)  # fmt: skip
    con.print(t)


@measure_app.command("ls")
def measure_ls(
    db: Annotated[Path, typer.Option(help="Measurement store (SQLite).")] = DEFAULT_DB,
) -> None:
    """What the store holds: one line per platform, device, runtime and batch."""
    from inag.measurements import MeasurementError, MeasurementStore

    try:
        store = MeasurementStore(db, create=False)
    except MeasurementError as exc:
        raise CliError(str(exc)) from None
    with store:
        groups = store.groups()
    if not groups:
        typer.echo(f"{db}: no measurements")
    for g in groups:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(g["last"]))
        typer.echo(
            f"{g['platform']:<14} {g['device']:<28} {g['runtime']:<12} {g['origin']:<9} "
            f"batch {g['batch']:<4} {g['n']:>5} nets  ({g['unit']}, last {when})"
        )


def _select_rows(
    db: Path, platform: str | None, device: str | None, runtime: str | None, batch: int | None
) -> list[MeasurementRow]:
    from inag.measurements import MeasurementError, MeasurementStore

    try:
        store = MeasurementStore(db, create=False)
    except MeasurementError as exc:
        raise CliError(str(exc)) from None
    with store:
        return store.rows(platform, device, runtime, batch)


@measure_app.command("show")
def measure_show(
    db: Annotated[Path, typer.Option(help="Measurement store (SQLite).")] = DEFAULT_DB,
    platform: Annotated[str | None, typer.Option("--platform", "-p")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    runtime: Annotated[str | None, typer.Option()] = None,
    id: Annotated[int | None, typer.Option("--id", help="One row, every field, as JSON.")] = None,
) -> None:
    """Measured nets with median, prediction at the time, and their ratio."""
    from inag.measurements import MeasurementError, MeasurementStore

    if id is not None:
        try:
            with MeasurementStore(db, create=False) as store:
                typer.echo(json.dumps(store.get(id).to_dict(), indent=2))
        except MeasurementError as exc:
            raise CliError(str(exc)) from None
        return
    rows = _select_rows(db, _platform_name(platform), device, runtime, None)
    if not rows:
        raise CliError(f"{db}: no measurements match")
    _print_rows(console(), rows, None)


def _platform_name(platform: str | None) -> str | None:
    if platform is None:
        return None
    from inag.platform import PlatformError, load_platform

    try:
        return load_platform(platform).name
    except PlatformError:
        return platform  # a name that is only in the store


@measure_app.command("export")
def measure_export(
    csv_out: Annotated[Path, typer.Option("--csv", help="CSV file to write.")],
    db: Annotated[Path, typer.Option(help="Measurement store (SQLite).")] = DEFAULT_DB,
    platform: Annotated[str | None, typer.Option("--platform", "-p")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    runtime: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Every matching row as CSV (samples and arch as JSON columns)."""
    from inag.measurements import MeasurementStore

    check_writable(csv_out, "--csv")
    rows = _select_rows(db, _platform_name(platform), device, runtime, None)
    with MeasurementStore(db, create=False) as store:
        if not rows and (platform or device or runtime):  # a typo'd filter is not "0 rows"
            have = sorted({(g["platform"], g["device"], g["runtime"]) for g in store.groups()})
            listed = "; ".join(f"{p} / {d} / {r}" for p, d, r in have) or "nothing"
            raise CliError(
                f"{db}: no measurements match platform={platform!r} device={device!r} "
                f"runtime={runtime!r}; the store holds (platform / device / runtime): {listed}"
            )
        text = store.to_csv(rows)
    from inag.safe_io import atomic_write_text

    atomic_write_text(csv_out, text)
    typer.echo(f"wrote {len(rows)} rows to {csv_out}")


# ---------------------------------------------------------------------------- calibrate
def calibrate(
    platform: Annotated[str, typer.Option("--platform", "-p", help="Platform YAML or name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Calibrated platform YAML to write.")],
    db: Annotated[Path, typer.Option(help="Measurement store (SQLite).")] = DEFAULT_DB,
    device: Annotated[str | None, typer.Option(help="Use this device's rows.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Use this runtime's rows.")] = None,
    fit_n: Annotated[
        int, typer.Option("--fit", min=1, max=1000, help="Nets to fit on (the rest: held out).")
    ] = 10,
    plot: Annotated[
        Path | None, typer.Option(help="Predicted-vs-measured PNG (default: next to --out).")
    ] = None,
    role: Annotated[
        str,
        typer.Option(
            help="latency (measured time) or flash (the linked model's size, from the ELF of "
            "a --runtime qemu measurement)."
        ),
    ] = "latency",
) -> None:
    """Fit the platform's latency (or flash) model to measured nets; write a calibrated YAML.

    Fits the parameters the latency model declares fittable (MACs/cycle by op kind and
    container, bytes/cycle, per-layer and per-inference overhead cycles) on at most --fit
    nets chosen to span the measurements, by robust least squares on relative error, and
    reports the error on every other net before and after.
    """
    import numpy as np

    from hwmodels import build_models
    from hwmodels.calibrate import calibrated_descriptor, fit
    from inag.platform import freeze_detected, load_platform, resolve_platform_path

    if role not in ROLE_UNITS:
        raise CliError(f"--role: {role!r} is not one of {', '.join(ROLE_UNITS)}")
    plat = load_platform(platform)
    check_writable(out, "--out")
    source = resolve_platform_path(platform)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise CliError(
            f"--out {out} is the platform file being calibrated ({platform}); the calibrated "
            "descriptor is frozen to this host's fit, so it would replace the original: write "
            "it to another path"
        )
    png = plot if plot is not None else out.with_suffix(".png")
    check_writable(png, "--plot")
    rows = _select_rows(db, plat.name, device, runtime, 1)
    if not rows:
        raise CliError(
            f"{db}: no batch-1 measurements for platform {plat.name!r}"
            + (f" on {device}" if device else "")
            + (f" via {runtime}" if runtime else "")
            + "; run `inag measure run --platform ...` first"
        )
    keys = sorted({(r.device, r.runtime) for r in rows})
    if len(keys) > 1:
        raise CliError(
            "the store mixes devices/runtimes for this platform; pick one with --device and "
            "--runtime: " + "; ".join(f"--device {d} --runtime {rt}" for d, rt in keys)
        )
    dev_id, rt = keys[0]
    groups = group_by_arch(rows)  # every row of a net: its passes and re-measurements
    rows = [g[-1] for g in groups]
    if len(rows) < 3:
        raise CliError(f"{len(rows)} measured nets: calibration needs at least 3 (10+ advised)")
    if role == "flash":
        rows = [r for r in rows if "flash_bytes" in r.extra.get("model_sizes", {})]
        if len(rows) < 3:
            raise CliError(
                f"{len(rows)} rows carry linked model sizes: measure with --runtime qemu (it "
                "links the model for the Cortex-M and records its ELF sizes)"
            )
        measured = [float(r.extra["model_sizes"]["flash_bytes"]) for r in rows]
    else:
        clock = plat.capability.clock_hz.value
        measured = [statistics.median(_seconds(r, clock) for r in g) for g in groups]
    model = build_models(plat)[role]
    result = fit(model, role, [r.arch for r in rows], measured, max_fit=fit_n, runtime=rt)
    k, n_held = result.within(0.10)
    k0, _ = result.within(0.10, after=False)
    origin = rows[0].origin
    date = time.strftime("%Y-%m-%d")
    kind_note = {
        "emulated": " (emulated: QEMU instruction counts at 1 instruction per cycle, not "
        "device time)",
        "model": " (model figures, not measurements)",
    }.get(origin, "")
    what = (
        f"linked model sizes (the ELF of the {rt} build, arm-none-eabi-gcc)"
        if role == "flash"
        else f"{origin} {dev_id} via {rt}{kind_note}"
    )
    source = (
        f"inag calibrate {date}: {what}; fitted on {len(result.fit_ids)} nets, held-out "
        f"within +-10 %: {k} of {n_held}"
    )
    err_after = result.rel_err()
    calibration = {
        "fitted_on": date,
        "device": dev_id,
        "source": source,
        "runtime": rt,
        "origin": origin,
        "measurements": str(db),
        "fit_arch_ids": [rows[i].arch.arch_id for i in result.fit_ids],
        "coefficients": {
            k_: float(f"{v:.6g}") for k_, v in result.after.items()
            if k_ not in result.undetermined
        },
        "residuals": {
            "held_out_nets": float(n_held),
            "within_10pct": float(k) / n_held if n_held else None,
            "median_abs_pct": 100 * float(np.median(np.abs(err_after))) if n_held else None,
            "within_10pct_before": float(k0) / n_held if n_held else None,
        },
    }  # fmt: skip
    raw = freeze_detected(platform, plat.name) if plat.detected else _raw(platform)
    if plat.detected:
        raw["description"] = plat.description
    before = raw.get("calibration") or {}
    if role == "flash":  # the latency calibration, if any, stays; flash gets its own record
        calibration = {**before, "flash": {k_: calibration[k_] for k_ in (
            "fitted_on", "device", "source", "coefficients", "residuals")}}  # fmt: skip
    elif "flash" in before:
        calibration["flash"] = before["flash"]
    data = calibrated_descriptor(raw, result, source, calibration)
    _write_platform_yaml(out, data, plat.name)
    _scatter(png, result, plat.name, dev_id, rt, origin, role)
    _print_fit(result, dev_id, rt, origin, out, png)


def _raw(platform: str) -> dict[str, Any]:
    from inag.platform import read_descriptor

    _, data = read_descriptor(platform)
    return data


def _write_platform_yaml(out: Path, data: dict[str, Any], name: str) -> None:
    import yaml

    from inag.platform import PlatformError

    text = (
        f"# Calibrated by `inag calibrate` from measurements of {name}; fitted numbers say\n"
        "# `kind: measured` and their source names the device, date, nets and held-out error.\n"
        + yaml.safe_dump(data, sort_keys=False, width=100)
    )
    from inag.safe_io import atomic_write_text

    try:  # what we write must validate
        from inag.platform import platform_from_dict

        platform_from_dict(yaml.safe_load(text), str(out))
    except PlatformError as exc:
        raise CliError(f"the calibrated descriptor does not validate (a bug): {exc}") from None
    atomic_write_text(out, text)


def _scatter(
    png: Path, result: Any, name: str, dev: str, rt: str, origin: str, role: str = "latency"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scale, unit = ROLE_UNITS[role]
    y = result.measured * scale
    fig, ax = plt.subplots(figsize=(6, 5))
    held = result.held_out
    fitted = np.array(result.fit_ids)
    ax.scatter(y[held], result.predicted_before[held] * scale, s=14, c="tab:gray",
               label="before (held out)")  # fmt: skip
    ax.scatter(y[held], result.predicted_after[held] * scale, s=14, c="tab:blue",
               label="after (held out)")  # fmt: skip
    ax.scatter(y[fitted], result.predicted_after[fitted] * scale, s=30, marker="x", c="tab:red",
               label="after (fitted on)")  # fmt: skip
    lo = float(min(y.min(), result.predicted_after.min() * scale)) * 0.8
    hi = float(max(y.max(), result.predicted_before.max() * scale, y.max())) * 1.25
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="k", alpha=0.08, label="±10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured {role} ({unit}, {origin})")
    ax.set_ylabel(f"predicted {role} ({unit})")
    k, n = result.within(0.10)
    k0, _ = result.within(0.10, after=False)
    ax.set_title(
        f"{name} on {dev} via {rt}\nheld-out within ±10 %: {k0}/{n} before, {k}/{n} after",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


def _print_fit(result: Any, dev: str, rt: str, origin: str, out: Path, png: Path) -> None:
    import numpy as np
    from rich.table import Table

    con = console()
    t = Table(title=f"{result.role} model parameters ({dev} via {rt}, {origin})")
    for col in ("parameter", "before", "after", ""):
        t.add_column(col)
    for name, before in result.before.items():
        note = "not determined by these nets: kept" if name in result.undetermined else ""
        t.add_row(name, f"{before:.4g}", f"{result.after[name]:.4g}", note)
    con.print(t)
    e0, e1 = result.rel_err(after=False), result.rel_err()
    k0, n = result.within(0.10, after=False)
    k, _ = result.within(0.10)
    s = Table(title=f"held-out nets ({n}; fitted on {len(result.fit_ids)})")
    for col in ("", "median |error|", "max |error|", "within ±10 %"):
        s.add_column(col)
    for label, e, kk in (("before", e0, k0), ("after", e1, k)):
        if n:
            s.add_row(label, f"{np.median(np.abs(e)) * 100:.1f} %",
                      f"{np.max(np.abs(e)) * 100:.1f} %", f"{kk} of {n}")  # fmt: skip
    con.print(s)
    con.print(f"wrote {out} and {png}")
    if n:
        con.print(f"held-out within ±10 %: {k} of {n} ({100 * k / n:.0f} %)")


GROUPS = {"measure": measure_app}
COMMANDS = {"calibrate": calibrate}
