"""Time of `inag train` (encoder + NAGAN) at its defaults, alone and next to two busy jobs.

Trains on a dataset (default: the bundled ``data_a``, 2000 rows) in a child process, once on
an otherwise idle machine (as far as this benchmark can tell: it prints the load average) and
once beside two CPU-bound busy loops in other processes (the "shared machine" case of issue
17), and prints both wall times, the encoder's and the GAN's share, their ratio and the
quality figures of each run (encoder held-out R2; whole-bag mean Dist_f and distinct share at
c = 0.5 and 0.9). The last line is a one-line summary.

    python benchmarks/bench_train_nagan.py [--db data_a] [--gan-steps N] [--enc-epochs N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _busy(stop: float) -> None:
    x = 0
    while time.time() < stop:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def _train(db: str, out: Path, extra: list[str]) -> tuple[float, str]:
    argv = [sys.executable, "-m", "inag.cli", "train", "--db", db, "--out", str(out), *extra]
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"inag train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return dt, proc.stdout + proc.stderr


def _quality(path: Path) -> str:
    from inag.nagan import load_model

    m = load_model(path)
    parts = [f"encoder R2 {m.meta['encoder']['r2']:.4f}"]
    for c in (0.5, 0.9):
        bag = m.generate(c, 2000, seed=1)
        d = m.dist_f(bag, c)
        distinct = len({a.arch_id for a in bag}) / len(bag)
        parts.append(f"c={c}: mDist_f {100 * d.mean():.1f} %, distinct {distinct:.2f}")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--db", default="data_a", help="dataset file or bundled name")
    ap.add_argument("--gan-steps", type=int, default=None)
    ap.add_argument("--enc-epochs", type=int, default=None)
    args = ap.parse_args()
    extra = []
    if args.gan_steps:
        extra += ["--gan-steps", str(args.gan_steps)]
    if args.enc_epochs:
        extra += ["--enc-epochs", str(args.enc_epochs)]
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("alone", "beside two busy jobs"):
            busy = []
            if case != "alone":
                stop = time.time() + 3600
                busy = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(2)]
                for p in busy:
                    p.start()
            out = Path(tmp) / f"{len(times)}.nagan"
            try:
                dt, log = _train(args.db, out, extra)
            finally:
                for p in busy:
                    p.terminate()
                    p.join()
            enc = re.search(r"held-out rows, ([\d.]+) s\)", log)
            gan = re.search(r"NAGAN: \d+ steps, ([\d.]+) s", log)
            times[case] = dt
            print(f"{case:<22} {dt:7.1f} s  (encoder {enc[1] if enc else '?'} s, "
                  f"GAN {gan[1] if gan else '?'} s)  {_quality(out)}")  # fmt: skip
    ratio = times["beside two busy jobs"] / times["alone"]
    print(
        f"inag train on {args.db}: {times['alone']:.1f} s alone, "
        f"{times['beside two busy jobs']:.1f} s beside two busy jobs ({ratio:.2f}x)"
    )


if __name__ == "__main__":
    main()
