"""The base install runs the CLI: every third-party module the code imports is declared.

CI installs ``.[all]``, where one extra can pull in a package the base install lacks (``ray``
brings ``click``), so a green suite once hid a README first command that died with
``ModuleNotFoundError``. These tests read the installed distribution's own metadata.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("inag", "hwmodels", "export")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> dict[str | None, set[str]]:
    """Declared requirements of the ``inag`` distribution: base (key None) and per extra."""
    out: dict[str | None, set[str]] = {None: set()}
    for line in metadata.requires("inag") or []:
        req = Requirement(line)
        extra = None
        if req.marker is not None:
            m = re.search(r'extra\s*==\s*"([^"]+)"', str(req.marker))
            extra = m.group(1) if m else None
        out.setdefault(extra, set()).add(_norm(req.name))
    return out


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (extras of dependencies not followed)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and "extra" in str(req.marker):
                continue
            if req.marker is None or req.marker.evaluate():
                todo.append(_norm(req.name))
    return seen


def _distributions(module: str) -> set[str]:
    return {_norm(d) for d in metadata.packages_distributions().get(module, [])}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level third-party module names imported by ``path``: (at import time, anywhere)."""
    tree = ast.parse(path.read_text())

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name.split(".")[0] for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return [node.module.split(".")[0]]
        return []

    def module_level(body: list[ast.stmt]) -> list[ast.AST]:
        found: list[ast.AST] = []
        for stmt in body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                found.append(stmt)
            elif isinstance(stmt, ast.If):
                found += module_level(stmt.body) + module_level(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                found += module_level(stmt.body + stmt.orelse + stmt.finalbody)
        return found

    local = set(PACKAGES) | set(sys.stdlib_module_names) | {"__future__"}
    at_import = {n for s in module_level(tree.body) for n in names(s)} - local
    anywhere = {n for s in ast.walk(tree) for n in names(s)} - local
    return at_import, anywhere


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_is_a_declared_requirement() -> None:
    reqs = _requirements()
    base = reqs[None]
    extras = set().union(*(v for k, v in reqs.items() if k is not None))
    problems = []
    for path in _sources():
        at_import, anywhere = _imports(path)
        for mod in sorted(anywhere):
            dists = _distributions(mod)
            where = path.relative_to(ROOT)
            if not dists:
                problems.append(
                    f"{where}: imports {mod!r}, which no installed distribution provides"
                )
            elif mod in at_import and not dists & base:
                problems.append(
                    f"{where}: imports {mod!r} at module import time, but its distribution "
                    f"{sorted(dists)} is not a base requirement of inag"
                )
            elif not dists & (base | extras):
                problems.append(
                    f"{where}: imports {mod!r} ({sorted(dists)}), declared neither in the base "
                    "requirements nor in an extra"
                )
    assert not problems, "\n".join(problems)


def test_cli_start_up_needs_only_the_base_install() -> None:
    """What ``inag --help`` really loads, transitively, is installed by ``pip install -e .``."""
    code = (
        "import json, sys\n"
        "import inag.cli\n"
        "from inag.cli import main\n"
        "main(['platforms', 'list'])\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.strip().splitlines()[-1]))
    allowed = _closure(_requirements()[None] | {"inag"})
    missing = []
    for mod in sorted(loaded - set(sys.stdlib_module_names) - {"__main__", "_distutils_hack"}):
        dists = _distributions(mod)
        if dists and not dists & allowed:
            missing.append(f"{mod} (from {sorted(dists)})")
    assert not missing, "the CLI imports modules that only an extra installs: " + ", ".join(
        missing
    )
    for heavy in ("torch", "tvm", "onnxruntime", "ray", "optuna"):
        assert heavy not in loaded, f"`inag platforms list` imported {heavy}"


@pytest.mark.parametrize("extra", ["onnx", "tvm", "ray", "search", "device", "data", "dev", "all"])
def test_extras_are_declared(extra: str) -> None:
    assert extra in _requirements()
