"""Real TVM RPC servers and trackers on 127.0.0.1 for tests, started and stopped safely.

`python -m tvm.exec.rpc_server` and `rpc_tracker` serve from a TVM worker child process that
outlives a terminated parent, so each runs in its own session and is stopped by signalling
the whole process group (otherwise every run leaves ~400 MB orphans behind).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(module: str, port: int, log: Path, *extra: str) -> subprocess.Popen:
    """Start ``python -m tvm.exec.<module>`` on 127.0.0.1:port; wait until it listens."""
    args = [sys.executable, "-m", f"tvm.exec.{module}", "--host", "127.0.0.1", "--port",
            str(port), "--port-end", str(port + 1), *extra]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120  # importing TVM takes seconds on a busy machine
    while "bind to" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"{module} did not start: {log.read_text()}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and its worker: SIGTERM to the group, then SIGKILL to what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.2)
