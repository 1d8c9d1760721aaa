"""The contract every export target meets, built-in or plug-in (shipped, importable).

:func:`check_target` exports random MLPs and CNNs (bits 2..8, several shapes) through
``export.artifacts.export_artifacts`` and checks that

- the manifest is complete: format, arch, the files with their sha256, the target's record;
- the self-check ran and was bit-exact, or says why it could not run here;
- what was written, loaded again, gives exactly the integer reference's outputs on inputs the
  self-check never saw, including the int8 extremes (-128 is clamped to -127).

Plug-in authors subclass the ready test case::

    from export.testing import ExportTargetConformance

    class TestMyTarget(ExportTargetConformance):
        target = "my_target"
        platform = load_platform("host_cpu")
"""

from __future__ import annotations

import hashlib
import tempfile
import unittest
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from export import reference
from export.artifacts import MANIFEST_FORMAT, export_artifacts
from export.qnet import QuantizedNet
from export.targets import get_target
from inag.arch import ArchSpec, LayerSpec


class TargetConformanceError(AssertionError):
    """An export target breaks its contract; the message names what."""


def conformance_nets(seed: int = 0) -> list[QuantizedNet]:
    rng = np.random.default_rng(seed)
    archs = [
        ArchSpec("mlp", (5,), 3, (LayerSpec(16, 3), LayerSpec(8, 8)), output_bits=5),
        ArchSpec("mlp", (2, 4, 4), 4, (LayerSpec(12, 2), LayerSpec(7, 6), LayerSpec(9, 4))),
        ArchSpec.from_summary("c4k3p2@7-c6k1@4-12@5 | head@8", (1, 8, 8), 10),
        ArchSpec(
            "cnn", (3, 9, 7), 2, (LayerSpec(5, 2, "conv", kernel=5, stride=2),), output_bits=3
        ),
    ]
    return [QuantizedNet.random(a, rng) for a in archs]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise TargetConformanceError(what)


def check_target(
    target: str, platform: Any, out_dir: Path, nets: list[QuantizedNet] | None = None
) -> list[dict[str, Any]]:
    """Export ``nets`` (default: :func:`conformance_nets`) with ``target``; check the contract."""
    t = get_target(target)
    manifests = []
    rng = np.random.default_rng(123)
    for i, net in enumerate(nets if nets is not None else conformance_nets()):
        out = Path(out_dir) / f"{target}_{i}"
        m = export_artifacts(net, target, out, platform)
        _check(m["format"] == MANIFEST_FORMAT and m["target"] == target, "manifest format")
        _check(m["arch_id"] == net.arch_id and m["arch"] == net.arch.to_dict(), "manifest arch")
        _check(bool(m["files"]), "the manifest lists the files written")
        for name, rec in m["files"].items():
            data = (out / name).read_bytes()
            _check(hashlib.sha256(data).hexdigest() == rec["sha256"], f"sha256 of {name}")
        chk = m["self_check"]
        _check(
            (chk.get("ran") and chk.get("bit_exact"))
            or (not chk.get("ran") and chk.get("reason")),
            f"self-check must be bit-exact or say why it did not run: {chk}",
        )
        run, why = t.runner(net, out, m["target_info"])  # what is on disk, loaded again
        if run is not None:
            x = rng.integers(-128, 128, (40, *net.input_shape)).astype(np.int8)
            x[0] = -128
            x[1] = 127
            want = reference.run(net, x)
            got = np.asarray(run(x)).reshape(want.shape)
            bad = int(np.sum(got != want))
            _check(bad == 0, f"{target}: {bad} of {want.size} outputs differ from the reference "
                   f"for {net.arch.summary()}")  # fmt: skip
        else:
            _check(bool(why), "a target that cannot run here must say why")
        manifests.append(m)
    return manifests


class ExportTargetConformance(unittest.TestCase):
    """Subclass with ``target`` (and ``platform``) to run the export-target contract."""

    target: ClassVar[str | None] = None
    platform: ClassVar[Any] = None  # a loaded platform, e.g. load_platform("host_cpu")

    def test_conformance(self) -> None:
        if self.target is None or self.platform is None:
            self.skipTest("set target and platform on the subclass")
        with tempfile.TemporaryDirectory() as tmp:
            check_target(self.target, self.platform, Path(tmp))
