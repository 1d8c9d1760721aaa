"""External tools an export or a measurement used, and their versions (for manifests and
measurement rows)."""

from __future__ import annotations

import shutil
import subprocess


def tool_version(tool: str) -> str | None:
    """First line of ``tool --version``; None when the tool is not installed or says nothing."""
    exe = shutil.which(tool)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.splitlines()
    return lines[0].strip() if lines else None
