"""Selection speed: a generated bag of 10k candidates through every stage, after model load.

Prints the median (and min/max) wall time of `select` for one platform and for all bundled
platforms at once, plus the bag's distinct count and the funnel, measured in one run.

    python benchmarks/bench_select.py [--model M] [--n 10000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from inag.nagan import load_model
from inag.platform import bundled_names, load_platform
from inag.select import select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="data_a", help="NAGAN artifact or bundled name")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--condition", type=float, default=0.8)
    args = ap.parse_args()
    t = time.perf_counter()
    model = load_model(args.model)
    print(f"model {args.model} loaded in {time.perf_counter() - t:.3f} s")
    runs = {
        "cortex_m": [load_platform("cortex_m")],
        "all bundled": [load_platform(n) for n in bundled_names()],
    }
    select(model, runs["cortex_m"], args.condition, n=1000)  # warm up
    print(
        f"{'platforms':<12} {'bag':>6} {'distinct':>9} {'median s':>9} {'min s':>7} "
        f"{'max s':>7}  funnel (first platform)"
    )
    for label, plats in runs.items():
        times = []
        for rep in range(args.repeats):
            t = time.perf_counter()
            sels, _ = select(model, plats, args.condition, n=args.n, seed=rep)
            times.append(time.perf_counter() - t)
        funnel = " -> ".join(f"{f.name} {f.kept}" for f in sels[0].funnel)
        print(
            f"{label:<12} {args.n:>6} {len(sels[0].bag.archs):>9} "
            f"{statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}  "
            f"{funnel}"
        )


if __name__ == "__main__":
    main()
