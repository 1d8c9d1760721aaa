"""Option types shared by several commands (the platform-limit overrides of `select` and
`baseline`), so a limit reads and validates the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

MaxStorage = Annotated[
    float | None,
    typer.Option(help="Normalized storage limit (eq. 2 / largest arch), e.g. 0.21."),
]
MaxEnergy = Annotated[
    float | None,
    typer.Option(help="Normalized energy limit (eq. 3 / largest arch), e.g. 0.21."),
]
MaxStorageKb = Annotated[float | None, typer.Option(help="Eq. 2 storage limit, KB.")]
MaxEnergyUj = Annotated[float | None, typer.Option(help="Energy limit, uJ.")]
MaxLatencyMs = Annotated[float | None, typer.Option(help="Latency limit, ms.")]
MaxFlashKb = Annotated[float | None, typer.Option(help="Flash limit, KB.")]
MaxSramKb = Annotated[float | None, typer.Option(help="SRAM limit, KB.")]
