"""The ``inag`` command line: the app, its entry point, and the command modules it registers.

Each command group lives in its own module (``platforms``, ``spaces``, ``cost``, ``datasets``,
``nagan``, ``selection``, ``export``, ``baseline``, ``measure``, ``sweep``) that names its
``COMMANDS`` (name: function) and ``GROUPS`` (name: sub-app); they are registered here in that
order. The CLI is the only package that prints. Heavy packages (torch, TVM, onnxruntime) are
imported inside the commands that need them, so ``inag platforms list`` starts fast.
"""

from __future__ import annotations

import errno
import importlib
import sys

import typer

from inag.cli.options import CliError

app = typer.Typer(
    name="inag",
    help="INAG: conditional neural architecture search and integer-only edge deployment.\n\n"
    "One trained generator proposes quantized networks for a target performance; fast "
    "selectors keep the ones that fit each platform (a YAML file under platforms/).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# registration order is the order of `inag --help`
COMMAND_MODULES = (
    "platforms",
    "spaces",
    "datasets",
    "cost",
    "nagan",
    "selection",
    "export",
    "baseline",
    "measure",
    "sweep",
)


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
        ("inag.measurements", "MeasurementError"),
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
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            # Path.exists() raises this on Python 3.11 wherever a path option is checked
            name = str(exc.filename or "")
            shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
            typer.echo(
                f"error: a path given is too long for this file system: {shown!r} (a file "
                "name may have at most 255 bytes)",
                err=True,
            )
            return 2
        raise


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"inag.cli.{_name}")
    for _group, _sub in getattr(_module, "GROUPS", {}).items():
        app.add_typer(_sub, name=_group)
    for _command, _func in getattr(_module, "COMMANDS", {}).items():
        app.command(_command)(_func)

if __name__ == "__main__":
    sys.exit(main())
