"""``inag cost``: per-layer and total costs of architectures on platforms, or the lowered graph."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inag.cli.common import console
from inag.cli.options import CliError, PlatformOption, read_arch_source

if TYPE_CHECKING:
    from hwmodels.costing import CostResult
    from inag.arch import ArchSpec


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


def cost(
    arch: Annotated[
        str,
        typer.Argument(
            help="Architecture JSON: a file, JSON lines, '-' for stdin, or inline JSON."
        ),
    ],
    platform: PlatformOption = "cortex_m",
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
    con = console()
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


COMMANDS = {"cost": cost}
