"""Artifact directories: one exported network for one target, with its ``manifest.json``.

``export_artifacts`` is what ``inag export`` runs. It refuses what the target or platform
cannot hold (bit-widths outside the platform's ``supported_bits``, TVM on a bare-metal
platform, a platform without a TVM target), writes the artifact under names derived from the
arch id only (never from user text, so no path traversal), verifies the artifact bit for bit
against the numpy reference on random inputs where it can run here, and writes a manifest:
architecture, bits, scales, M0/shift per layer, target, the platform's predicted costs, the
sha256 of every file, library versions and, for C on an MCU, flash/RAM read from the ELF.

Predicted costs come from the caller (the CLI uses ``hwmodels``): ``export`` may import only
``inag.arch`` and ``inag.ir``, so it takes the platform and the costs as plain values.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _pyplatform
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from export import reference
from export.errors import ExportError
from export.qnet import QuantizedNet
from export.tools import tool_version

MANIFEST_FORMAT = "inag-export-manifest-v1"
N_SELF_CHECK = 64


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of everything that shaped an artifact (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("inag", "numpy", "onnx", "onnxruntime", "apache-tvm", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` and prove it is writable, or raise a clear error."""
    p = Path(out_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".inag-write-test-"):
            pass
    except OSError as exc:
        raise ExportError(
            f"cannot write to output directory {str(p)!r}: {exc.strerror or exc}"
        ) from None
    return p


def check_platform_bits(net: QuantizedNet, platform: Any) -> None:
    """Every unit's bit-width must be one the platform supports."""
    supported = list(platform.capability.numerics.supported_bits)
    for u in net.units:
        if u.bits not in supported:
            raise ExportError(
                f"unit {u.index} of {net.arch.summary()} uses {u.bits}-bit weights, which "
                f"platform {platform.name!r} does not support (supported_bits: {supported})"
            )


def _self_check_codes(net: QuantizedNet, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-127, 128, (N_SELF_CHECK, *net.input_shape)).astype(np.int8)


def _verify(name: str, run: Callable[[np.ndarray], np.ndarray], net: QuantizedNet) -> dict:
    x = _self_check_codes(net)
    want = reference.run(net, x)
    got = np.asarray(run(x)).reshape(want.shape)
    if not np.array_equal(got, want):
        bad = int(np.sum(got != want))
        raise ExportError(
            f"self-check failed: the {name} artifact differs from the integer reference on "
            f"{bad} of {want.size} outputs (a bug in the exporter; please report it)"
        )
    return {"ran": True, "runtime": name, "inputs": len(x), "bit_exact": True}


def _platform_record(platform: Any) -> dict[str, Any]:
    m = platform.measure
    return {
        "name": platform.name,
        "kind": platform.kind,
        "runtime": m.runtime,
        "tvm_target": m.tvm_target,
        "path": platform.path,
    }


def export_artifacts(
    net: QuantizedNet,
    target: str,
    out_dir: str | os.PathLike[str],
    platform: Any,
    predicted_costs: Mapping[str, Any] | None = None,
    self_check: bool = True,
    extra_files: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Export ``net`` for ``target`` into ``out_dir``; returns the manifest (also written).

    Every target goes the same way (``export.targets``): its platform check before the disk
    is touched, its files, then the self-check of what was written against the integer
    reference, bit for bit (or the reason it cannot run here)."""
    from export.targets import get_target

    t = get_target(target)
    check_platform_bits(net, platform)
    ctx = t.prepare(net, platform)  # before touching the disk
    out = prepare_out_dir(out_dir)
    files: list[Path] = [Path(p) for p in (extra_files or {}).values()]
    info, written = t.write(net, out, f"inag_{net.arch_id}", platform, ctx)
    files.extend(written)
    check: dict[str, Any] = {"ran": False}
    if self_check:
        run, name = t.runner(net, out, info)
        check = _verify(name, run, net) if run is not None else {"ran": False, "reason": name}
    manifest = build_manifest(net, target, platform, out, files, predicted_costs, info, check)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def build_manifest(
    net: QuantizedNet,
    target: str,
    platform: Any,
    base: Path,
    files: list[Path],
    predicted_costs: Mapping[str, Any] | None,
    target_info: Mapping[str, Any],
    self_check: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest record (JSON-ready); file names are relative to ``base``."""
    file_rec = {}
    for f in files:
        try:
            rel = f.relative_to(base).as_posix()
        except ValueError:
            rel = f.name
        file_rec[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return {
        "format": MANIFEST_FORMAT,
        "target": target,
        "arch_id": net.arch_id,
        "summary": net.arch.summary(),
        "arch": net.arch.to_dict(),
        "bits": net.bits,
        "scheme": {
            "name": "jacob2017-symmetric-int-v1",
            "weights": "symmetric per tensor, codes in [-(2^(b-1)-1), 2^(b-1)-1], int8 container",
            "activations": "unsigned post-ReLU codes 0..2^b-1, zero point 0, uint8 container",
            "bias": "int32 at scale s_in*s_w",
            "requantization": "clamp((acc*M0 + 2^(r-1)) >> r, 0, 2^b-1), int64, round half up",
            "head": "int32 accumulator, dequantized as acc * output_scale",
        },
        "input": {
            "shape": list(net.input_shape),
            "dtype": "int8",
            "scale": net.input_scale,
            "zero_point": 0,
            "rule": "code = clamp(floor(x/scale + 0.5), -127, 127)",
        },
        "output": {
            "size": net.output_size,
            "dtype": "int32",
            "scale": net.output_scale,
            "rule": "y = code * scale",
        },
        "layers": net.records(),
        "platform": _platform_record(platform),
        "predicted_costs": dict(predicted_costs or {}),
        "target_info": dict(target_info),
        "self_check": dict(self_check),
        "source": dict(net.source),
        "files": file_rec,
        "versions": {
            **versions(),
            "gcc": tool_version("gcc"),
            "machine": _pyplatform.machine(),
        },
    }
