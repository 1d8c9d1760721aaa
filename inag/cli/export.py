"""CLI commands of the deployment path: ``inag train-net`` and ``inag export``.

Kept out of ``inag/cli/__init__.py`` (which registers its ``COMMANDS``) so the export
toolchain can evolve on its own. Heavy packages (torch, onnx, TVM) load inside the commands.
Known failures are raised as ``export.errors.ExportError``, which the CLI turns into one
paragraph on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inag.cli.options import MAX_SEED, PlatformOption, read_arch_source

if TYPE_CHECKING:
    from export.qnet import QuantizedNet
    from inag.arch import ArchSpec
    from inag.platform import Platform

_SELECT_RE = re.compile(r"^(?P<path>.+\.json)#(?P<rank>\d+)$")


def _err(msg: str) -> Exception:
    from export.errors import ExportError

    return ExportError(msg)


def read_arch(source: str) -> ArchSpec:
    """One architecture from a JSON file, inline JSON, '-' (stdin) or ``SELECT.json#RANK``.

    ``SELECT.json#RANK`` reads the JSON written by ``inag select --json``: a list under
    ``"selected"`` of records with an ``"arch"`` field; RANK is 1-based.
    """
    from inag.arch import ArchError, ArchSpec

    m = _SELECT_RE.match(source)
    if m and Path(m["path"]).is_file():
        path, rank = Path(m["path"]), int(m["rank"])
        from inag.safe_io import InputError, load_json, read_text

        try:
            data = load_json(read_text(path, "a selection JSON"), str(path))
        except InputError as exc:
            raise _err(str(exc)) from None
        sel = data.get("selected") if isinstance(data, dict) else None
        if not isinstance(sel, list):
            raise _err(f"{path}: expected a selection JSON with a list under 'selected'")
        if not 1 <= rank <= len(sel):
            raise _err(f"{path}: rank {rank} out of range (the selection has {len(sel)})")
        rec = sel[rank - 1]
        if not isinstance(rec, dict) or "arch" not in rec:
            raise _err(f"{path}: selected[{rank - 1}] has no 'arch' field")
        try:
            return ArchSpec.from_dict(rec["arch"])
        except ArchError as exc:
            raise _err(f"{path}#{rank}: not an architecture: {exc}") from None
    text, where, lines = read_arch_source(
        source, "a JSON file, inline JSON, '-' for stdin, or SELECT.json#RANK", _err
    )
    try:
        return ArchSpec.from_json(text)
    except ArchError as exc:
        if len(lines) > 1:
            raise _err(
                f"{where}: give exactly one architecture (found {len(lines)} lines; use "
                "SELECT.json#RANK to pick one of a selection)"
            ) from None
        raise _err(f"{where}: not an architecture: {exc}") from None


def _check_task_fits(arch: ArchSpec, task: Any) -> None:
    import math

    n_in = math.prod(arch.input_shape)
    if arch.kind == "mlp" and n_in != task.n_features:
        raise _err(
            f"{arch.summary()} takes {n_in} inputs but task {task.name!r} has "
            f"{task.n_features} features"
        )
    if arch.kind == "cnn" and tuple(arch.input_shape) != tuple(task.input_shape):
        raise _err(f"{arch.summary()} takes {arch.input_shape}, task has {task.input_shape}")
    if arch.output_size != task.output_size:
        raise _err(
            f"{arch.summary()} has {arch.output_size} outputs but task {task.name!r} needs "
            f"{task.output_size}"
        )


def train_net(
    arch: ArchSpec, task_spec: str, epochs: int, seed: int, lr: float, out: Path
) -> tuple[Path, dict[str, Any]]:
    """The final QAT training of one architecture, saved as a net file; returns a summary."""
    from export import reference
    from export.artifacts import prepare_out_dir
    from export.qnet import QuantizedNet, save_net_file
    from inag.tasks import load_task, performance
    from inag.train.trainer import TrainerConfig, check_size, train_final

    prepare_out_dir(Path(out).parent)  # fail before training, not after
    task = load_task(task_spec, seed)
    _check_task_fits(arch, task)
    if not math.isfinite(lr):
        raise _err(f"--lr must be a finite learning rate, found {lr}")
    config = TrainerConfig(epochs=epochs, seed=seed, lr=lr)
    try:
        check_size(arch, config.batch_size)
    except ValueError as exc:
        raise _err(str(exc)) from None

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            typer.echo(f"  epoch {done}/{total}", err=True)

    try:
        result, tensors, meta = train_final(arch, task, config, progress)
    except FloatingPointError as exc:
        raise _err(str(exc)) from None
    path = save_net_file(out, tensors, meta)
    net = QuantizedNet.load(path)
    pred = reference.forward(net, task.x_test)
    pred = pred[:, 0] if task.kind == "regression" else pred.argmax(axis=1)
    int_perf = float(performance(task.kind, task.y_test, pred))
    return path, {
        "arch_id": arch.arch_id,
        "summary": arch.summary(),
        "task": task.name,
        "qat_performance": result.performance,
        "integer_performance": int_perf,
        "seconds": result.seconds,
    }


def predicted_costs(arch: ArchSpec, platform: Platform) -> dict[str, Any]:
    """The platform's hardware-model figures for ``arch`` (totals, normalized, budgets)."""
    from hwmodels import PlatformCoster
    from inag.space import largest_for

    def reference(a: ArchSpec) -> ArchSpec:
        return largest_for(a)

    coster = PlatformCoster(platform, reference=reference)
    try:
        res = coster.cost([arch])
    except Exception:  # noqa: BLE001 - no normalization reference for odd shapes
        coster = PlatformCoster(platform)
        res = coster.cost([arch])
    out: dict[str, Any] = {}
    for role, model in coster.models.items():
        norm = float(res.normalized(role)[0])
        out[role] = {
            "model": model.name,
            "quantity": model.quantity,
            "value": float(res.totals[role][0]),
            "normalized": norm if norm == norm else None,
        }
    limits = coster.limits()
    out["limits"] = {
        name: {
            "limit": lim,
            "value": float(res.value(name)[0]),
            "ok": bool(res.value(name)[0] <= lim),
        }
        for name, lim in limits.items()
    }
    return out


def train_net_cmd(
    arch: Annotated[
        str,
        typer.Argument(
            help="Architecture: JSON file, inline JSON, '-' for stdin, or SELECT.json#RANK "
            "(a JSON of `inag select --json`, 1-based rank)."
        ),
    ],
    task: Annotated[str, typer.Option(help="Task spec, e.g. data_a, digits, mnist:DIR.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Net file to write.")],
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 100,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of data split and initialization.")
    ] = 0,
    lr: Annotated[float, typer.Option(min=1e-8, help="Adam learning rate.")] = 1e-2,
) -> None:
    """Final QAT training of one chosen network; writes a safetensors net file."""
    a = read_arch(arch)
    typer.echo(f"training {a.summary()} ({a.arch_id}) on {task}, {epochs} epochs", err=True)
    path, summary = train_net(a, task, epochs, seed, lr, out)
    typer.echo(
        f"wrote {path}\n  QAT performance {summary['qat_performance']:.4f}, integer model "
        f"{summary['integer_performance']:.4f} (gap "
        f"{summary['integer_performance'] - summary['qat_performance']:+.4f})"
    )


def export_cmd(
    target: Annotated[
        str,
        typer.Option(
            help="Artifact kind: onnx, tvm, c, or a plug-in target (entry-point group "
            "inag.export_targets)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    net: Annotated[
        str | None,
        typer.Option(help="Net file of `inag train-net` (or SELECT.json#RANK with --task)."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help="Train this architecture first (JSON or SELECT.json#RANK)."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task to train on (with --arch).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs when training first.")] = 100,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed when training first.")] = 0,
    platform: PlatformOption = "host_cpu",
    measure: Annotated[
        bool, typer.Option(help="TVM: measure latency where the platform says (local/RPC).")
    ] = False,
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Skip the bit-exact self-check.")
    ] = False,
) -> None:
    """Export a trained network as integer-only ONNX, a TVM library, or standalone C."""
    from export.artifacts import export_artifacts, prepare_out_dir
    from export.qnet import QuantizedNet
    from export.targets import available_targets, get_target
    from inag.platform import load_platform

    targets = available_targets()
    if target not in targets:
        raise _err(f"--target: {target!r} is not a target; choose one of {', '.join(targets)}")
    given = "--arch"
    if net is not None and _SELECT_RE.match(net) and arch is None:
        arch, net, given = net, None, f"--net {net} (a selection's architecture, trained first)"
    if (net is None) == (arch is None):
        raise _err("give exactly one of --net (a net file) and --arch (train first)")
    plat = load_platform(platform)
    if measure and not get_target(target).measurable:  # before anything is written
        raise _err(
            f"--measure applies to targets a device runtime can time (tvm), not {target!r}; "
            "time the others with `inag measure run --runtime ...`"
        )
    extra: dict[str, Path] = {}
    if arch is not None:
        if task is None:
            raise _err(f"{given} needs --task (the task to train it on)")
        a = read_arch(arch)
        from inag.tasks import load_task

        load_task(task, seed)  # a bad task spec fails before the output directory is made
        out_dir = prepare_out_dir(out)
        net_path = out_dir / f"inag_{a.arch_id}.safetensors"
        typer.echo(f"training {a.summary()} on {task} first ({epochs} epochs)", err=True)
        net_path, summary = train_net(a, task, epochs, seed, 1e-2, net_path)
        typer.echo(
            f"  QAT {summary['qat_performance']:.4f}, integer "
            f"{summary['integer_performance']:.4f}",
            err=True,
        )
        extra["net"] = net_path
    else:
        assert net is not None
        net_path = Path(net)
    qnet: QuantizedNet = QuantizedNet.load(net_path)
    costs = predicted_costs(qnet.arch, plat)
    manifest = export_artifacts(
        qnet, target, out, plat, costs, self_check=not no_check, extra_files=extra
    )
    if measure:
        _measure_into(manifest, Path(out), qnet, plat)
    _print_summary(manifest, Path(out))


def _measure_into(manifest: dict[str, Any], out: Path, qnet: QuantizedNet, plat: Any) -> None:
    import numpy as np

    from export.measure import measure_platform
    from export.targets import get_target

    if not get_target(manifest["target"]).measurable:
        raise _err(
            f"--measure applies to targets a device runtime can time (tvm), not "
            f"{manifest['target']!r}; time the others with `inag measure run --runtime ...`"
        )
    lib = out / manifest["target_info"]["library"]
    x = np.zeros((1, *qnet.input_shape), dtype=np.int8)
    m = measure_platform(lib, plat, x)
    manifest["measured"] = m.to_dict()
    from inag.safe_io import atomic_write_text

    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def _print_summary(manifest: dict[str, Any], out: Path) -> None:
    typer.echo(f"exported {manifest['summary']} ({manifest['arch_id']}) as {manifest['target']}")
    for name, rec in manifest["files"].items():
        typer.echo(f"  {out / name}  {rec['bytes']} bytes  sha256 {rec['sha256'][:16]}…")
    typer.echo(f"  manifest {out / 'manifest.json'}")
    chk = manifest["self_check"]
    if chk.get("ran"):
        typer.echo(f"  self-check: bit-exact vs the integer reference on {chk['inputs']} inputs")
    elif "reason" in chk:
        typer.echo(f"  self-check skipped: {chk['reason']}")
    info = manifest["target_info"]
    if "note" in info:
        typer.echo(f"  note: {info['note']}")
    cm = info.get("cortex_m")
    cpu = (cm or {}).get("cpu") or "Cortex-M4"
    if cm and "firmware_elf" in cm:
        fw, mo = cm["firmware_elf"], cm["model_object"]
        typer.echo(
            f"  {cpu} firmware: flash {fw['flash_bytes']} B, RAM {fw['ram_bytes']} B "
            f"(model alone: flash {mo['flash_bytes']} B, RAM {mo['ram_bytes']} B)"
        )
    elif cm:
        typer.echo(f"  {cpu} sizes skipped: {cm['skipped']}")
    elif "firmware" in info:
        typer.echo(f"  firmware sizes skipped: {info['firmware']['skipped']}")
    if "measured" in manifest:
        m = manifest["measured"]
        typer.echo(
            f"  measured ({m['where']}): median {m['median_s'] * 1e6:.1f} us per batch-1 run"
        )


COMMANDS = {"train-net": train_net_cmd, "export": export_cmd}
