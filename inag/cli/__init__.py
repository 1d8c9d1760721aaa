"""The ``inag`` command line. The only module that prints.

Heavy packages (torch, numpy-heavy stacks, TVM, onnxruntime) are imported inside the commands
that need them, so ``inag platforms list`` starts fast.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inag.cli.options import (
    CliError,
    MaxEnergy,
    MaxEnergyUj,
    MaxFlashKb,
    MaxLatencyMs,
    MaxSramKb,
    MaxStorage,
    MaxStorageKb,
    limit_options,
    read_arch_source,
)

if TYPE_CHECKING:
    from hwmodels.costing import CostResult
    from inag.arch import ArchSpec

app = typer.Typer(
    name="inag",
    help="INAG: conditional neural architecture search and integer-only edge deployment.\n\n"
    "One trained generator proposes quantized networks for a target performance; fast "
    "selectors keep the ones that fit each platform (a YAML file under platforms/).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
platforms_app = typer.Typer(
    help="List, show and validate platform descriptors.", no_args_is_help=True
)
space_app = typer.Typer(
    help="Search spaces: sample architectures, show sizes.", no_args_is_help=True
)
dataset_app = typer.Typer(
    help="Inspect and export dataset files made by `inag sample`.", no_args_is_help=True
)
app.add_typer(platforms_app, name="platforms")
app.add_typer(space_app, name="space")
app.add_typer(dataset_app, name="dataset")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con.width = max(con.width, 140)  # pipes and CI logs: don't squeeze tables
    return con


# ---------------------------------------------------------------------------- platforms
@platforms_app.command("list")
def platforms_list() -> None:
    """List the bundled platform descriptors (name, kind, description)."""
    import yaml

    from inag.platform import bundled_dir

    rows = []
    for path in sorted(bundled_dir().glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            data = {"description": "(malformed YAML: run `inag platforms validate`)"}
        rows.append((path.stem, str(data.get("kind", "?")), str(data.get("description", ""))))
    width = max((len(r[0]) for r in rows), default=4)
    for name, kind, desc in rows:
        typer.echo(f"{name:<{width}}  {kind:<11}  {desc}")


@platforms_app.command("show")
def platforms_show(
    name_or_path: Annotated[str, typer.Argument(help="Bundled name (cortex_m) or YAML path.")],
) -> None:
    """Show a validated platform: capability, cost models with sources, budgets, measurement."""
    from rich.table import Table

    from hwmodels import build_models
    from inag.platform import load_platform

    p = load_platform(name_or_path)
    build_models(p)  # validate model names and parameters too
    con = _console()
    cap = p.capability
    con.print(f"[bold]{p.name}[/bold] ({p.kind}) — {p.description}")
    con.print(f"file: {p.path}")
    table = Table(title="capability", show_lines=False)
    for col in ("quantity", "value", "kind", "source"):
        table.add_column(col)

    def add(label: str, s: Any) -> None:
        if s is not None:
            table.add_row(label, f"{s.value:g}", s.kind, s.source)

    add("clock_hz", cap.clock_hz)
    add("cores", cap.cores)
    for level, s in cap.caches.items():
        add(level, s)
    for field in ("flash_bytes", "sram_bytes", "reserved_flash_bytes", "reserved_sram_bytes"):
        add(field, getattr(cap.memories, field))
    if cap.cpu or cap.isa:
        where = " (detected on this machine)" if p.detected else ""
        llvm = f", LLVM CPU {cap.llvm_cpu}" if cap.llvm_cpu else ""
        feats = f", features {' '.join(cap.features)}" if cap.features else ""
        con.print(f"cpu: {cap.cpu or '?'}{where}; isa {cap.isa or '?'}{llvm}{feats}")
    con.print(table)
    n = cap.numerics
    con.print(
        f"bits: supported {n.supported_bits}, weight containers {n.weight_containers}, "
        f"activation containers {n.activation_containers}, accumulator {n.accumulator_bits}"
    )
    models = Table(title="cost models")
    for col in ("role", "model", "parameter", "value", "kind", "source"):
        models.add_column(col)
    for role, choice in p.cost_models.items():
        models.add_row(role, choice.model, "", "", "", "")
        for key, val in choice.params.items():
            for label, leaf in _leaves(key, val):
                if isinstance(leaf, dict) and "value" in leaf:
                    models.add_row(
                        "",
                        "",
                        label,
                        f"{leaf['value']:g}",
                        leaf.get("kind", ""),
                        leaf.get("source", ""),
                    )
                else:
                    models.add_row("", "", label, str(leaf), "", "")
    con.print(models)
    budgets = {"flash_bytes": p.flash_budget_bytes, "sram_bytes": p.sram_budget_bytes}
    budgets |= {k: v for k, v in p.constraints.model_dump().items() if v is not None}
    con.print("budgets: " + ", ".join(f"{k}={v:g}" for k, v in budgets.items()))
    m = p.measure
    con.print(
        f"measure: runtime={m.runtime}, target={json.dumps(m.tvm_target)}, "
        f"warmup={m.warmup}, repeats={m.repeats}"
        + (f", rpc={m.rpc.host}:{m.rpc.port} key={m.rpc.key}" if m.rpc else "")
    )
    cal = p.calibration
    con.print(
        f"calibration: fitted_on={cal.fitted_on}, source={cal.source}, "
        f"coefficients={cal.coefficients or '{}'}"
    )


def _leaves(key: str, val: Any) -> list[tuple[str, Any]]:
    if isinstance(val, dict) and "value" not in val:
        out = []
        for k, v in val.items():
            out += _leaves(f"{key}[{k}]", v)
        return out
    return [(key, val)]


@platforms_app.command("validate")
def platforms_validate(
    paths: Annotated[list[Path], typer.Argument(help="Platform YAML files to check.")],
    allow_unusual: Annotated[
        bool,
        typer.Option(
            "--allow-unusual",
            help="Accept numbers outside the plausible range of their unit (real outliers).",
        ),
    ] = False,
) -> None:
    """Validate platform files: schema, models and their parameters, the hardware-model
    conformance suite on the descriptor's own models, and plausible magnitudes per unit."""
    from hwmodels.validate import exemptions, validate_platform
    from inag.platform import load_platform

    bad = 0
    for path in paths:
        p = load_platform(path)
        findings = validate_platform(p, allow_unusual)
        if findings:
            bad += 1
            typer.echo(f"{path}: invalid platform descriptor:", err=True)
            for f in findings:
                typer.echo(f"  {f}", err=True)
            continue
        typer.echo(
            f"ok: {path} ({p.name}, {p.kind}, models: "
            + ", ".join(f"{r}={c.model}" for r, c in p.cost_models.items())
            + ")"
        )
        for note in exemptions(p):
            typer.echo(f"  note: {note}")
    if bad:
        raise typer.Exit(2)


@platforms_app.command("detect")
def platforms_detect(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the YAML.")],
    name: Annotated[str, typer.Option(help="The `name:` of the written descriptor.")] = "my_host",
    base: Annotated[
        str, typer.Option(help="Descriptor whose {detect: ...} fields to measure.")
    ] = "host_cpu",
) -> None:
    """Freeze this machine into a descriptor: every {detect: ...} field of BASE measured here.

    The file is an ordinary descriptor (detected numbers say `kind: detected` and where they
    came from); it describes this machine wherever it is loaded later, unlike host_cpu, which
    describes whichever machine loads it.
    """
    import yaml

    from inag.platform import freeze_detected, load_platform
    from inag.safe_io import atomic_write_text, check_writable

    check_writable(out, "the descriptor (--out)")
    data = freeze_detected(base, name)
    text = (
        "# Frozen by `inag platforms detect`: the numbers of one machine; re-run it on another.\n"
        + yaml.safe_dump(data, sort_keys=False, width=100)
    )
    atomic_write_text(out, text)
    p = load_platform(out)
    typer.echo(
        f"wrote {out} ({p.name}: {p.capability.cpu}, {p.capability.isa}, "
        f"target {json.dumps(p.measure.tvm_target)})"
    )


def _print_graph(coster: Any, arch: ArchSpec) -> None:
    """The lowered graph in execution order: op, shapes, counts, and the per-node costs the
    cost passes annotated (the same numbers as the batch table: tested)."""
    from inag.ir import lower, verify

    g = coster.cost_graph(lower(arch))
    verify(g)
    typer.echo(f"IR graph of {arch.summary()} ({arch.arch_id}); facts: {sorted(g.graph['facts'])}")
    keys = [k for k in sorted(g.graph["facts"]) if k.startswith("cost:")]
    for name in g.graph["order"]:
        n = g.nodes[name]
        line = f"  {name:<12} {n['op']:<8} unit {n['unit']:>2}  {str(n.get('in_shape')):<14} -> "
        line += f"{str(n.get('out_shape')):<14} bits {n['bits']:>2}"
        if n.get("macs"):
            line += f"  MACs {n['macs']:,}  W {n['weights']:,}  F {n['fmap']:,}"
            line += "".join(f"  {k[5:]}={n[k]:.4g}" for k in keys)
        typer.echo(line)


# ---------------------------------------------------------------------------- space
@space_app.command("sample")
def space_sample(
    space: Annotated[str, typer.Option(help="Bundled space (mlp, cnn) or YAML path.")] = "mlp",
    n: Annotated[int, typer.Option("-n", min=1, help="How many architectures.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    input_shape: Annotated[
        str | None, typer.Option(help="Bind the space to an input shape, e.g. 1 or 1,8,8.")
    ] = None,
    output_size: Annotated[int | None, typer.Option(help="Bind the output size.")] = None,
) -> None:
    """Print distinct random architectures of a space as JSON lines."""
    import numpy as np

    s = _load_space(space, input_shape, output_size)
    _check_space_sample_size(n, s)
    for arch in s.sample_many(np.random.default_rng(seed), n):
        typer.echo(arch.to_json())


@space_app.command("info")
def space_info(
    space: Annotated[str, typer.Option(help="Bundled space (mlp, cnn) or YAML path.")] = "mlp",
) -> None:
    """Show a space's choices, its exact size and its encoding length."""
    s = _load_space(space, None, None)
    typer.echo(f"{s.name} ({s.kind}): {s.description}")
    for b in s.blocks:
        extra = (
            f", kernels {list(b.kernels)}, strides {list(b.strides)}, pools {list(b.pools)}"
            if b.kind == "conv"
            else ""
        )
        typer.echo(
            f"  {b.kind}: depth {b.min_depth}..{b.max_depth}, widths {list(b.widths)}" + extra
        )
    typer.echo(f"  bits {list(s.bits)}; head bits {s.output_bits}")
    typer.echo(f"  input {s.input_shape} -> output {s.output_size}")
    size = s.size()
    typer.echo(f"  size {size:,} architectures ({_sci(size)}); encoding length {s.dim}")


# `space sample` keeps every architecture it draws (to return distinct ones). Measured: peak
# RSS grows ~340 bytes per architecture (20,000 -> 200,000 on the bundled mlp space), and
# each JSON line is ~240 bytes.
MAX_SPACE_SAMPLE = 1_000_000
SPACE_SAMPLE_BYTES_PER_ARCH = 340


def _check_space_sample_size(n: int, s: Any) -> None:
    """Refuse more distinct architectures than the space holds, or than a run should hold."""
    size = s.size()
    if n > size:
        raise CliError(
            f"space {s.name!r} holds only {size:,} distinct architectures; -n {n:,} of them "
            "cannot be drawn"
        )
    if n > MAX_SPACE_SAMPLE:
        raise CliError(
            f"space sample -n {n:,} would hold about "
            f"{_human_bytes(n * SPACE_SAMPLE_BYTES_PER_ARCH)} of memory (measured: "
            f"~{SPACE_SAMPLE_BYTES_PER_ARCH} bytes per architecture, kept to return distinct "
            f"ones); at most {MAX_SPACE_SAMPLE:,} per run: use several runs with different --seed"
        )


def _sci(n: int) -> str:
    """Scientific notation of an exact integer of any size (float() overflows past 1e308)."""
    digits = str(n)
    if len(digits) < 300:
        return f"{n:.2e}"
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"


def _load_space(name: str, input_shape: str | None, output_size: int | None) -> Any:
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


# ---------------------------------------------------------------------------- cost
def _read_archs(source: str) -> list[ArchSpec]:
    """Architectures from a JSON file, a JSON-lines file, stdin ('-'), or inline JSON."""
    from inag.arch import ArchError, ArchSpec

    text, where, lines = read_arch_source(
        source, "a JSON file, a JSON-lines file, '-' for stdin, or inline JSON", CliError
    )
    try:
        return [ArchSpec.from_json(text)]
    except ArchError:
        pass
    archs = []
    for i, line in enumerate(lines, 1):
        try:
            archs.append(ArchSpec.from_json(line))
        except ArchError as exc:
            raise CliError(f"{where}, line {i}: not an architecture: {exc}") from None
    return archs


@app.command()
def cost(
    arch: Annotated[
        str,
        typer.Argument(
            help="Architecture JSON: a file, JSON lines, '-' for stdin, or inline JSON."
        ),
    ],
    platform: Annotated[
        str, typer.Option("--platform", "-p", help="Platform YAML path or bundled name.")
    ] = "cortex_m",
    space: Annotated[
        str | None,
        typer.Option(
            help="Search space the arch must belong to (default: the bundled space of its kind, "
            "bound to its input/output shape); also the normalization reference."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    graph: Annotated[
        bool,
        typer.Option(
            "--graph", help="Also print the lowered IR graph, costed node by node (per-node path)."
        ),
    ] = False,
) -> None:
    """Cost architectures on a platform: per-layer table, totals, normalized values, budgets."""
    from hwmodels import PlatformCoster
    from inag.platform import load_platform
    from inag.space import load_space

    archs = _read_archs(arch)
    plat = load_platform(platform)
    spaces = {}
    for a in archs:
        key = (a.kind, a.input_shape, a.output_size)
        if key not in spaces:
            spaces[key] = load_space(space or a.kind).bind(a.input_shape, a.output_size)
        spaces[key].check(a)
    coster = PlatformCoster(
        plat, reference=lambda a: spaces[(a.kind, a.input_shape, a.output_size)].largest()
    )
    result = coster.cost(archs)
    limits = coster.limits()
    if graph and not as_json:
        for a in archs:
            _print_graph(coster, a)
    if as_json:
        for i in range(len(archs)):
            typer.echo(json.dumps(_cost_record(result, i, limits)))
        return
    con = _console()
    for i in range(len(archs)):
        _print_cost(con, result, i, limits)
    if any(
        not all(c["ok"] for c in _cost_record(result, i, limits)["checks"])
        for i in range(len(archs))
    ):
        raise typer.Exit(1)


def _cost_record(result: CostResult, i: int, limits: dict[str, float]) -> dict[str, Any]:
    from hwmodels.costing import LIMITS

    a = result.archs[i]
    n_units = int(result.table.mask[i].sum())
    layers = []
    for u in range(n_units):
        row = {
            k: int(getattr(result.table, k)[i, u])
            for k in ("macs", "weights", "biases", "fmap", "bits", "in_bits", "out_bits")
        }
        row |= {role: float(v[i, u]) for role, v in result.per_layer.items()}
        layers.append(row)
    checks = []
    for name, limit in limits.items():
        value = float(result.value(name)[i])
        checks.append(
            {
                "limit": name,
                "value": value,
                "max": limit,
                "ok": bool(value <= limit),
                "role": LIMITS[name][0],
            }
        )
    return {
        "arch_id": a.arch_id,
        "arch": a.to_dict(),
        "platform": result.platform,
        "layers": layers,
        "totals": {r: float(v[i]) for r, v in result.totals.items()},
        "normalized": {
            r: float(result.normalized(r)[i]) for r in ("storage", "energy") if r in result.totals
        },
        "checks": checks,
    }


def _print_cost(con: Any, result: CostResult, i: int, limits: dict[str, float]) -> None:
    from rich.table import Table

    rec = _cost_record(result, i, limits)
    a = result.archs[i]
    con.print(f"[bold]{a.summary()}[/bold]  arch_id {a.arch_id}  on {result.platform}")
    t = Table(show_edge=False)
    cols = [
        "unit",
        "MACs",
        "weights",
        "fmap",
        "bits",
        "storage b",
        "flash B",
        "SRAM B",
        "energy nJ",
        "latency us",
    ]
    for c in cols:
        t.add_column(c, justify="right")
    names = [f"L{u}" for u in range(len(rec["layers"]) - 1)] + ["head"]
    for name, row in zip(names, rec["layers"], strict=True):
        t.add_row(
            name,
            f"{row['macs']:,}",
            f"{row['weights'] + row['biases']:,}",
            f"{row['fmap']:,}",
            str(row["bits"]),
            f"{row.get('storage', 0):,.0f}",
            f"{row.get('flash', 0):,.0f}",
            f"{row.get('sram', 0):,.0f}",
            f"{row.get('energy', 0) * 1e9:,.3f}",
            f"{row.get('latency', 0) * 1e6:,.2f}",
        )
    tot = rec["totals"]
    t.add_row(
        "total",
        f"{sum(r['macs'] for r in rec['layers']):,}",
        f"{sum(r['weights'] + r['biases'] for r in rec['layers']):,}",
        "",
        "",
        f"{tot.get('storage', 0):,.0f}",
        f"{tot.get('flash', 0):,.0f}",
        f"{tot.get('sram', 0):,.0f}",
        f"{tot.get('energy', 0) * 1e9:,.3f}",
        f"{tot.get('latency', 0) * 1e6:,.2f}",
        style="bold",
    )
    con.print(t)
    norm = rec["normalized"]
    con.print(
        "normalized (vs the space's largest arch): "
        + ", ".join(f"{k} {v:.4f}" for k, v in norm.items())
        + "   (totals include per-inference overheads)"
    )
    for c in rec["checks"]:
        mark = "[green]ok  [/green]" if c["ok"] else "[red]FAIL[/red]"
        con.print(f"  {mark} {c['limit']:<17} {c['value']:.6g} <= {c['max']:.6g}")
    con.print("")


# ---------------------------------------------------------------------------- datasets
def _task_forms() -> list[str]:
    """The task spec forms of the registry (inag.tasks), for help texts."""
    from inag.tasks import available_tasks

    return available_tasks()


@app.command()
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
    seed: Annotated[int, typer.Option(help="Sampling and training seed.")] = 0,
    data_seed: Annotated[int, typer.Option(help="Seed of the task's data and splits.")] = 0,
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
        int,
        typer.Option(
            min=1,
            help="Initializations per architecture, each trained in full; --restart-score "
            "turns them into the label.",
        ),
    ] = 16,
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
        build_dataset,
    )
    from inag.space import load_space
    from inag.train.trainer import TrainerConfig

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
    if workers is not None and workers < 1:
        raise CliError(f"--workers must be at least 1, found {workers}")
    _check_db_out(db)
    if backend == "local":
        be: Any = LocalBackend(workers)
    elif backend == "ray":
        be = RayBackend(address)
    else:
        raise CliError(f"--backend must be 'local' or 'ray', found {backend!r}")
    con = _console(stderr=True)
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
    db: Annotated[Path, typer.Argument(help="Dataset file made by `inag sample`.")],
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
    shape = "x".join(str(d) for d in info["input_shape"] or []) or "?"
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
    db: Annotated[Path, typer.Argument(help="Dataset file made by `inag sample`.")],
    csv_out: Annotated[Path, typer.Option("--csv", help="CSV file to write.")],
) -> None:
    """Write every row (ok and failed) as CSV."""
    from inag.dataset import DatasetStore
    from inag.safe_io import check_writable

    check_writable(csv_out, "the CSV")
    with DatasetStore(db) as store:
        count = store.export_csv(csv_out)
    typer.echo(f"wrote {count} rows to {csv_out}")


# ---------------------------------------------------------------------------- NAGAN
def _stage_progress(con: Any) -> tuple[Any, Callable[[str, int, int, dict[str, float]], None]]:
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


@app.command()
def train(
    db: Annotated[Path, typer.Option(help="Dataset file made by `inag sample`.")],
    out: Annotated[Path, typer.Option(help="Artifact to write (safetensors + metadata).")],
    seed: Annotated[int, typer.Option(help="Seed of splits, initialization and GAN noise.")] = 0,
    gan_steps: Annotated[
        int | None, typer.Option(min=1, help="Generator/discriminator updates (default 8000).")
    ] = None,
    enc_epochs: Annotated[
        int | None, typer.Option(min=1, help="Encoder training epochs (default 150).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N rows (dataset-size studies).")
    ] = None,
) -> None:
    """Train the surrogate encoder, then NAGAN, on a dataset; save one verified artifact."""
    from dataclasses import replace

    from inag.dataset import DatasetStore
    from inag.nagan import NaganConfig, fit_nagan
    from inag.safe_io import check_writable

    if limit is not None and limit < 1:
        raise CliError(f"--limit must be at least 1, found {limit}")
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
    con = _console(stderr=True)
    bar, report = _stage_progress(con)
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
    typer.echo(
        f"NAGAN: {cfg.gan_steps} steps, {model.meta['gan_seconds']:.1f} s; total "
        f"{time.perf_counter() - t0:.1f} s; performance range p_min={model.p_min:.4f} "
        f"P_R={model.p_range:.4f}"
    )
    typer.echo(f"wrote {out}")


def _dataset_space(meta: dict[str, Any]) -> Any:
    from inag.space import load_space

    sp = meta["space"]
    return load_space(sp["name"]).bind(sp["input_shape"], sp["output_size"])


def _load_model(path: Path) -> Any:
    """A NAGAN artifact by path or a bundled generator by name (torch loads only here)."""
    from inag.nagan import load_model

    return load_model(path)


@app.command()
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
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="JSON-lines file (default: stdout).")] = None,
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
    m = _load_model(model)
    _check_generate_size(n)
    c = _target_condition(m, perf, condition)
    seen: set[str] = set()
    dist_sum = 0.0
    with contextlib.ExitStack() as stack:
        write = stack.enter_context(atomic_open(out)).write if out else None
        for bag in m.generate_chunks(c, n, seed=seed, chunk=GENERATE_CHUNK):
            est = m.estimate(bag)
            dist_sum += float(abs(est - c).sum())
            lines = "".join(
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


@app.command()
def evaluate(
    model: Annotated[
        Path,
        typer.Option(help="NAGAN artifact from `inag train`, or a bundled name (data_a, digits)."),
    ],
    real: Annotated[int, typer.Option("--real", min=1, help="Nets trained per condition.")] = 8,
    n: Annotated[int, typer.Option("-n", min=1, help="Bag size per condition.")] = 1000,
    threshold: Annotated[float, typer.Option(help="Confidence threshold on Dist_f.")] = 0.05,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("runs/report"),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
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
) -> None:
    """The paper's sweep c = 0.1..1.0: mDist_f, mDist_r, baselines, noise floor, report.md."""
    from dataclasses import replace

    import numpy as np

    from inag.dataset import DatasetStore
    from inag.nagan import fit_nagan
    from inag.nagan.evaluate import evaluate as run_eval
    from inag.nagan.evaluate import noise_floor, write_report
    from inag.safe_io import check_writable_dir
    from inag.train.trainer import TrainerConfig

    check_writable_dir(out, "the evaluation report")
    sizes_list = _int_list_option(train_sizes, "--train-sizes") if train_sizes else []
    m = _load_model(model)
    _check_bag_size(n, m, "evaluate")
    db = m.meta.get("dataset")
    if not db or not Path(db).is_file():
        raise CliError(
            f"the model's dataset {db!r} is not available (needed for the trainer "
            "budget, baselines and noise floor)"
        )
    with DatasetStore(db) as store:
        archs, perf = store.archs_and_performance()
        meta = store.meta()
    trainer = TrainerConfig.from_record(meta["trainer"])
    con = _console(stderr=True)
    con.print(f"evaluating {model} on {m.task}: K={real}, bag {n}")
    bar, stage = _stage_progress(con)

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


# ---------------------------------------------------------------------------- select
def default_model_path() -> Path:
    """The generator shipped with the package (data_a, MLP space)."""
    from inag.nagan import bundled_models

    return bundled_models()["data_a"]


@app.command()
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
    rank_by: Annotated[str, typer.Option(help="dist_f, storage, energy or latency.")] = "dist_f",
    max_storage: MaxStorage = None,
    max_energy: MaxEnergy = None,
    max_storage_kb: MaxStorageKb = None,
    max_energy_uj: MaxEnergyUj = None,
    max_latency_ms: MaxLatencyMs = None,
    max_flash_kb: MaxFlashKb = None,
    max_sram_kb: MaxSramKb = None,
    floor: Annotated[float, typer.Option(help="Lowest condition re-conditioning may try.")] = 0.05,
    step: Annotated[float, typer.Option(help="Re-conditioning step.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
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
) -> None:
    """Generate one bag for a target and keep, per platform, the nets that fit its budgets."""
    from inag.platform import load_platform
    from inag.safe_io import atomic_write_text, check_writable
    from inag.select import SelectionError
    from inag.select import select as run_select
    from inag.select import verify as verify_top

    t_load = time.perf_counter()
    if perf is not None and condition is not None:
        raise CliError("give at most one of --perf (raw) and --condition (normalized)")
    if not math.isfinite(step) or step <= 0:
        raise CliError(
            f"--step must be a positive number (the re-conditioning step), found {step}"
        )
    if not math.isfinite(floor) or not 0 <= floor <= 1:
        raise CliError(f"--floor must be in [0, 1], found {floor}")
    if not math.isfinite(threshold) or threshold < 0:
        raise CliError(f"--threshold must be a non-negative number, found {threshold}")
    if json_out:
        check_writable(json_out, "the selection JSON")
    if plot:
        check_writable(plot, "the plot")
    plats = [load_platform(p) for p in platform]
    _check_unique_platforms(plats, platform)
    m = _load_model(model or default_model_path())
    _check_bag_size(n, m, "select")
    c = _target_condition(m, perf, 0.9 if perf is None and condition is None else condition)
    overrides = limit_options(locals())
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
        )
    except SelectionError as exc:
        raise CliError(str(exc)) from None
    dt = time.perf_counter() - t0
    t_verify = 0.0
    verify_note = ""
    if verify is None and rank_by != "dist_f":
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
            console=_console(stderr=True),
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
    con = _console()
    from rich.table import Table

    con.print(
        f"model {model or default_model_path()} ({m.task}); target c={c:.3f} "
        f"(perf {float(m.denormalize(c)):.4f}); bag {n}; loaded in "
        f"{t0 - t_load:.2f} s, selected in {dt:.2f} s"
        + (f", top {verify} verified by training in {t_verify:.1f} s" if verify else "")
    )
    if verify_note:
        con.print(f"note: {verify_note}")
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
        cols = ["#", "architecture", "est. perf", "Dist_f"]
        cols += ["real perf"] if verify else []
        cols += ["storage KB", "energy uJ", "latency ms", "storage n", "energy n"]
        for col in cols:
            t.add_column(col, justify="right" if col != "architecture" else "left")
        for r in recs:
            real = r["measured_perf"]
            t.add_row(
                str(r["rank"]),
                r["summary"],
                f"{r['estimate_perf']:.4f}",
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


# ---------------------------------------------------------------------------- argument checks
# `select` holds the whole bag (encodings, the decoded architectures, their cost table).
# Measured: peak RSS of `inag select -n N` for N = 20,000 and 300,000 at conditions 0.1, 0.5,
# 0.9 and 1.0 with the bundled data_a generator grows by 1.0-1.16 KB per generated
# architecture (benchmarks/bench_bag_memory.py); 1.2 KB is the figure the message uses.
MAX_BAG = 1_000_000
BAG_BYTES_PER_ARCH = 1200
# `generate` streams (GENERATE_CHUNK architectures at a time): its memory does not grow with
# -n, its output does: 424 bytes per JSON line, measured on the same generator.
GENERATE_CHUNK = 4096
MAX_GENERATE = 100_000_000
GENERATE_BYTES_PER_LINE = 424
MAX_TRACKED_UNIQUE = 250_000  # distinct arch ids counted for the summary line (~25 MB)


def _check_bag_size(n: int, m: Any, command: str) -> None:
    """Refuse a bag so large the process would be killed for memory, saying what it needs."""
    if n > MAX_BAG:
        raise CliError(
            f"{command} -n {n:,} would need about {_human_bytes(n * BAG_BYTES_PER_ARCH)} of "
            f"memory for the bag (measured: ~{_human_bytes(BAG_BYTES_PER_ARCH)} per generated "
            f"architecture); at most {MAX_BAG:,} per run: use several runs with different "
            "--seed"
        )


def _check_generate_size(n: int) -> None:
    """`generate` streams, so only its output grows with -n: refuse absurd sizes."""
    if n > MAX_GENERATE:
        raise CliError(
            f"generate -n {n:,} would write about {_human_bytes(n * GENERATE_BYTES_PER_LINE)} "
            f"of JSON lines (measured: ~{GENERATE_BYTES_PER_LINE} bytes per architecture; the "
            f"memory stays that of one chunk of {GENERATE_CHUNK:,}); at most {MAX_GENERATE:,} "
            "per run: use several runs with different --seed"
        )


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def _target_condition(m: Any, perf: float | None, condition: float | None) -> float:
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


# ---------------------------------------------------------------------------- entry point
def _known_errors() -> tuple[type[BaseException], ...]:
    from hwmodels.base import HardwareModelError
    from inag.arch import ArchError
    from inag.ir import IRError
    from inag.platform import PlatformError
    from inag.safe_io import InputError
    from inag.space import SpaceError

    errors: list[type[BaseException]] = [
        CliError,
        InputError,
        ArchError,
        SpaceError,
        PlatformError,
        HardwareModelError,
        IRError,
    ]
    for mod, name in (
        ("inag.tasks", "TaskError"),
        ("inag.dataset", "DatasetError"),
        ("inag.nagan", "ModelError"),
        ("export.errors", "ExportError"),
        ("inag.select.baselines", "BaselineError"),
        ("inag.select", "SelectionError"),
    ):
        module = sys.modules.get(mod)
        if module is not None and hasattr(module, name):
            errors.append(getattr(module, name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; known errors become one paragraph on stderr and exit code 2."""
    try:
        # without standalone mode click *returns* the code of a typer.Exit instead of raising
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - classify below
        # typer >= 0.29 raises usage errors from its vendored click (TyperException); an
        # older typer raised the real click's, which only exist if click was imported
        click_errors: tuple[type[BaseException], ...] = (typer.TyperException,)
        if "click" in sys.modules:
            click_errors += (sys.modules["click"].ClickException,)
        if isinstance(exc, click_errors):
            exc.show()
            return exc.exit_code
        if isinstance(exc, _known_errors()):
            typer.echo(f"error: {exc}", err=True)
            return 2
        raise


def _register_extensions() -> None:
    """Command groups that live in their own CLI modules (still CLI code: they may print)."""
    import importlib

    for name in ("inag.cli.export", "inag.cli.baseline", "inag.cli.measure", "inag.cli.sweep"):
        try:
            importlib.import_module(name).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


_register_extensions()

if __name__ == "__main__":
    sys.exit(main())
