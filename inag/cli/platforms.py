"""``inag platforms list|show|validate|detect``: the platform descriptors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from inag.cli.common import console

platforms_app = typer.Typer(
    help="List, show and validate platform descriptors.", no_args_is_help=True
)


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
    con = console()
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


GROUPS = {"platforms": platforms_app}
