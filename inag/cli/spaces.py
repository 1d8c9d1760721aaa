"""``inag space sample|info``: search spaces."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from inag.cli.common import human_bytes, load_space
from inag.cli.options import MAX_SEED, CliError

space_app = typer.Typer(
    help="Search spaces: sample architectures, show sizes.", no_args_is_help=True
)


@space_app.command("sample")
def space_sample(
    space: Annotated[str, typer.Option(help="Bundled space (mlp, cnn) or YAML path.")] = "mlp",
    n: Annotated[int, typer.Option("-n", min=1, help="How many architectures.")] = 5,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed.")] = 0,
    input_shape: Annotated[
        str | None, typer.Option(help="Bind the space to an input shape, e.g. 1 or 1,8,8.")
    ] = None,
    output_size: Annotated[int | None, typer.Option(help="Bind the output size.")] = None,
) -> None:
    """Print distinct random architectures of a space as JSON lines."""
    import numpy as np

    s = load_space(space, input_shape, output_size)
    _check_space_sample_size(n, s)
    for arch in s.sample_many(np.random.default_rng(seed), n):
        typer.echo(arch.to_json())


@space_app.command("info")
def space_info(
    space: Annotated[str, typer.Option(help="Bundled space (mlp, cnn) or YAML path.")] = "mlp",
) -> None:
    """Show a space's choices, its exact size and its encoding length."""
    s = load_space(space, None, None)
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
            f"{human_bytes(n * SPACE_SAMPLE_BYTES_PER_ARCH)} of memory (measured: "
            f"~{SPACE_SAMPLE_BYTES_PER_ARCH} bytes per architecture, kept to return distinct "
            f"ones); at most {MAX_SPACE_SAMPLE:,} per run: use several runs with different --seed"
        )


def _sci(n: int) -> str:
    """Scientific notation of an exact integer of any size (float() overflows past 1e308)."""
    digits = str(n)
    if len(digits) < 300:
        return f"{n:.2e}"
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"


GROUPS = {"space": space_app}
