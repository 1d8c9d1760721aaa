"""Memory of a bag: what `select -n` needs per generated architecture, and what `generate -n`
needs (constant: it streams) and writes per architecture.

Runs each command in a child process at two bag sizes and prints the growth of its peak RSS
per architecture between them (so imports and the model cancel out), for several conditions.
These are the figures behind `inag.cli.common.BAG_BYTES_PER_ARCH` and
`inag.cli.nagan.GENERATE_BYTES_PER_LINE`.

    python benchmarks/bench_bag_memory.py [--model data_a] [--small 20000] [--large 300000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

RUN = (
    "import resource, sys; from inag.cli import main; rc = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def peak_kb(argv: list[str]) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return int(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="data_a")
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=300_000)
    ap.add_argument("--conditions", default="0.1,0.5,0.9,1.0")
    args = ap.parse_args()
    span = args.large - args.small
    for c in args.conditions.split(","):
        kb = [
            peak_kb(["select", "--model", args.model, "--condition", c, "-n", str(n)])
            for n in (args.small, args.large)
        ]
        print(f"select   c={c}: peak RSS {kb[0] / 1024:.0f} -> {kb[1] / 1024:.0f} MB, "
              f"{(kb[1] - kb[0]) * 1024 / span:.0f} bytes per generated architecture")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bag.jsonl")
        kb = []
        for n in (args.small, args.large):
            kb.append(peak_kb(["generate", "--model", args.model, "--condition", "0.5",
                               "-n", str(n), "--out", out]))  # fmt: skip
            size = os.path.getsize(out)
        print(f"generate c=0.5: peak RSS {kb[0] / 1024:.0f} -> {kb[1] / 1024:.0f} MB "
              f"({(kb[1] - kb[0]) * 1024 / span:.0f} bytes per architecture: the distinct-id "
              f"count); output {size / args.large:.0f} bytes per architecture")  # fmt: skip


if __name__ == "__main__":
    main()
