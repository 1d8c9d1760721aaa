"""Calibration of a platform's latency model on real measurements: before vs after, held out.

Measures a plan of ``--n`` networks (sampled over MACs and depth, random integer weights) on
the platform's device through ``--runtime`` into a measurement store, fits the latency model
on ``--fit`` of them (``inag calibrate``'s fit), and prints the error of the uncalibrated and
the calibrated model on every other net. The last line is exactly
``held-out within ±10 %: K of N (P %)``.

    python benchmarks/bench_calibration.py --platform host_cpu --runtime tvm
    python benchmarks/bench_calibration.py --platform host_cpu --runtime onnxruntime
    python benchmarks/bench_calibration.py --platform host_cpu --runtime c
    python benchmarks/bench_calibration.py --platform cortex_m --runtime qemu

Measurements are kept in ``--db`` (default ``runs/bench_calibration.sqlite``): a re-run
measures only what is missing. Emulated (QEMU) figures are instruction counts, not device
time, and are labelled so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from hwmodels import build_models
from hwmodels.calibrate import fit
from inag.cli import main as inag
from inag.measurements import MeasurementStore
from inag.platform import load_platform


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--platform", default="host_cpu")
    ap.add_argument("--runtime", default="tvm", help="tvm, onnxruntime, c, qemu")
    ap.add_argument("--space", default="mlp")
    ap.add_argument("--input-shape", default="8")
    ap.add_argument("--output-size", default="1")
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--fit", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--passes",
        type=int,
        default=1,
        help="time the plan this many times, interleaved; each net's median over its rows",
    )
    ap.add_argument("--db", type=Path, default=Path("runs/bench_calibration.sqlite"))
    args = ap.parse_args()

    argv = ["measure", "run", "-p", args.platform, "--runtime", args.runtime,
            "--space", args.space, "-n", str(args.n), "--seed", str(args.seed),
            "--db", str(args.db)]  # fmt: skip
    if args.space == "mlp":
        argv += ["--input-shape", args.input_shape, "--output-size", args.output_size]
    if args.repeats:
        argv += ["--repeats", str(args.repeats)]
    if args.passes > 1:
        argv += ["--passes", str(args.passes)]
    code = inag(argv)
    if code:
        sys.exit(code)
    plat = load_platform(args.platform)
    from inag.cli.measure import _archs_to_measure, _device_identity, _seconds, group_by_arch

    plan, _ = _archs_to_measure(
        None, args.space, args.n, args.seed,
        args.input_shape if args.space == "mlp" else None,
        int(args.output_size) if args.space == "mlp" else None,
    )  # fmt: skip
    ids = {a.arch_id for a in plan}
    dev = _device_identity(args.runtime, None)
    with MeasurementStore(args.db, create=False) as store:
        rows = [r for r in store.rows(plat.name, dev, args.runtime, 1) if r.arch.arch_id in ids]
    groups = {g[0].arch.arch_id: g for g in group_by_arch(rows)}
    groups_in_plan = [groups[a.arch_id] for a in plan if a.arch_id in groups]
    rows = [g[-1] for g in groups_in_plan]
    clock = plat.capability.clock_hz.value
    y = [statistics.median(_seconds(r, clock) for r in g) for g in groups_in_plan]
    res = fit(
        build_models(plat)["latency"], "latency", [r.arch for r in rows], y, args.fit,
        runtime=args.runtime,
    )  # fmt: skip
    origin = rows[0].origin
    print(f"\n{plat.name} via {args.runtime} on {dev} ({origin}; {len(rows)} nets, "
          f"fitted on {len(res.fit_ids)}, held out {len(res.held_out)})")  # fmt: skip
    print(f"{'parameter':<32} {'before':>12} {'after':>12}")
    for name, before in res.before.items():
        note = "  (not determined: kept)" if name in res.undetermined else ""
        print(f"{name:<32} {before:>12.4g} {res.after[name]:>12.4g}{note}")
    print(f"{'':<10} {'median |err|':>14} {'p90 |err|':>10} {'max |err|':>10} {'±10 %':>8}")
    for label, after in (("before", False), ("after", True)):
        e = np.abs(res.rel_err(after=after))
        k, n = res.within(0.10, after=after)
        print(f"{label:<10} {np.median(e) * 100:>13.1f}% {np.quantile(e, 0.9) * 100:>9.1f}% "
              f"{e.max() * 100:>9.1f}% {k:>4}/{n}")  # fmt: skip
    meas = [y[i] for i in res.held_out]
    print(f"held-out latency range: {min(meas) * 1e6:.2f} .. {max(meas) * 1e6:.2f} us "
          f"(median {statistics.median(meas) * 1e6:.2f} us)")  # fmt: skip
    k, n = res.within(0.10)
    print(f"held-out within ±10 %: {k} of {n} ({100 * k / n:.0f} %)")


if __name__ == "__main__":
    main()
