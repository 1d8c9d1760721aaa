"""Costing throughput: the batch path (LayerTable) vs the per-node path (IR graph + passes).

Prints archs/s of both paths on every bundled platform, medians of repeated runs measured side
by side, and their ratio. The selector costs whole generated bags with the batch path.

    python benchmarks/bench_cost.py [--n 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hwmodels import PlatformCoster
from inag.ir import lower
from inag.platform import bundled_names, load_platform
from inag.space import largest_for, load_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000, help="architectures in the batch")
    ap.add_argument("--n-graph", type=int, default=500, help="architectures for per-node path")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--space", default="mlp")
    args = ap.parse_args()
    space = load_space(args.space)
    archs = space.sample_many(np.random.default_rng(0), args.n)
    print(
        f"space {space.name}: {args.n} archs (batch), {args.n_graph} archs (per node), "
        f"median of {args.repeats}"
    )
    print(
        f"{'platform':<10} {'batch archs/s':>14} {'10k batch s':>12} {'per-node archs/s':>17} "
        f"{'ratio':>7}"
    )
    for name in bundled_names():
        coster = PlatformCoster(load_platform(name), reference=largest_for)
        coster.cost(archs[:10])  # warm caches (normalization reference)
        batch, node = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            coster.cost(archs)
            batch.append(args.n / (time.perf_counter() - t))
            t = time.perf_counter()
            for a in archs[: args.n_graph]:
                coster.cost_graph(lower(a))
            node.append(args.n_graph / (time.perf_counter() - t))
        b, g = statistics.median(batch), statistics.median(node)
        print(f"{name:<10} {b:>14,.0f} {10_000 / b:>12.3f} {g:>17,.0f} {b / g:>6.0f}x")


if __name__ == "__main__":
    main()
