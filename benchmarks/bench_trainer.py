"""QAT training throughput: the batched trainer vs the plain one-net-at-a-time loop (issue 3).

On the same sampled ``data_a`` architectures (space ``mlp``, sampling seed 0 -- the first rows
``inag sample --task data_a --seed 0`` would train) and the same ``TrainerConfig`` (defaults
unless overridden), measured in ONE run:

- nets/s of ``BatchedMLPTrainer`` (in-process, torch's default thread count), median of
  ``--repeats`` runs over all archs in one chunk;
- nets/s of the plain loop (``train_single``: ordinary autograd + ``torch.optim.Adam``, one net
  at a time) timed on an evenly spaced subset of the archs and scaled per net;
- their ratio; both counted in *trained networks* (the batched trainer trains ``restarts``
  initializations per arch, ``train_single`` one, so a training run is the common unit);
- useful GFLOP/s of the batched trainer (true widths only: 6 flops per MAC -- forward 2,
  backward 4 -- x training samples per epoch x epochs x sum of layer in*out), its padded
  GFLOP/s and the padding waste, against a 1024^3 float32 ``torch.mm`` measured in the same
  run (median of several, interleaved with the training runs);
- the same batched runs and plain nets with ONE torch thread (the dataset builder's
  per-worker setting), interleaved with the default-thread runs;
- the ceiling: GFLOP/s of only the matmuls a step issues for the same chunk (same shapes and
  batch counts), which the trainer's elementwise work pulls it below;
- optionally nets/s of the full local ``build_dataset`` path (worker processes, one torch
  thread each, process start-up included) on the same archs.

    python benchmarks/bench_trainer.py [--n 64] [--plain 16] [--repeats 3] [--epochs 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from inag.dataset import LocalBackend, build_dataset
from inag.space import load_space
from inag.tasks import load_task
from inag.trainer import BatchedMLPTrainer, TrainerConfig, _widths, train_single


def sgemm_gflops(repeats: int = 7, size: int = 1024) -> list[float]:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(2):
        torch.mm(a, b, out=out)
    res = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        res.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return res


def bmm_ceiling_gflops(plan, bsz: int, steps: int = 20) -> tuple[float, float]:
    """GFLOP/s (useful, padded) of only the matmuls one training step issues for ``plan``:
    per class a forward baddbmm and the two backward bmm calls, same shapes and batch counts,
    nothing else. The batched trainer cannot beat this; it is the ceiling its elementwise work
    (fake quantization, masks, Adam) pulls it below."""
    calls = []
    for classes in plan.layers:
        for c in classes:
            a = torch.randn(c.k, bsz, c.w_in)
            w = torch.randn(c.k, c.w_in, c.w_out)
            b = torch.randn(c.k, 1, c.w_out)
            dz = torch.randn(c.k, bsz, c.w_out)
            out, gw, da = torch.empty_like(dz), torch.empty_like(w), torch.empty_like(a)
            calls.append((a, w, b, dz, out, gw, da))

    def step() -> None:
        for a, w, b, dz, out, gw, da in calls:
            torch.baddbmm(b, a, w, out=out)
            torch.bmm(a.transpose(1, 2), dz, out=gw)
            torch.bmm(dz, w.transpose(1, 2), out=da)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    per_step = 6 * bsz
    return per_step * plan.useful_macs / dt / 1e9, per_step * plan.padded_macs / dt / 1e9


def log(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def true_macs(arch) -> int:
    ws = _widths(arch)
    return sum(a * b for a, b in zip(ws, ws[1:], strict=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=64, help="sampled data_a architectures")
    ap.add_argument("--plain", type=int, default=16, help="archs timed with the plain loop")
    ap.add_argument("--repeats", type=int, default=3, help="batched runs (median)")
    ap.add_argument("--epochs", type=int, default=None, help="override TrainerConfig.epochs")
    ap.add_argument("--restarts", type=int, default=None, help="override TrainerConfig.restarts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-one-thread", action="store_true", help="skip the 1-thread batched runs")
    ap.add_argument("--no-build", action="store_true", help="skip the build_dataset run")
    ap.add_argument("--build-workers", type=int, default=2)
    ap.add_argument("--build-chunk", type=int, default=32)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainerConfig()
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.restarts is not None:
        cfg = replace(cfg, restarts=args.restarts)
    task = load_task("data_a", seed=0)
    space = load_space("mlp").bind(task.input_shape, task.output_size)
    archs = space.sample_many(np.random.default_rng(0), args.n)
    n_train = len(task.x_train)
    load0 = os.getloadavg()
    print(
        f"data_a: {args.n} archs (space mlp, seed 0), {n_train} training samples; "
        f"TrainerConfig epochs={cfg.epochs} restarts={cfg.restarts} batch={cfg.batch_size} "
        f"lr={cfg.lr} quant_delay={cfg.quant_delay}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, load average at start {load0[0]:.2f}"
    )

    # ---------------------------------------------------------------- batched (+ sgemm)
    sgemm = sgemm_gflops()
    batched_s: list[float] = []
    one_thread_s: list[float] = []
    plan = None
    threads = torch.get_num_threads()
    for _ in range(args.repeats):
        tr = BatchedMLPTrainer(task, cfg)
        t0 = time.perf_counter()
        res = tr.train(archs)
        batched_s.append(time.perf_counter() - t0)
        log(f"batched run: {batched_s[-1]:.1f} s")
        plan = tr.last_plan
        sgemm += sgemm_gflops()
        if threads > 1 and not args.no_one_thread:
            torch.set_num_threads(1)
            try:
                t0 = time.perf_counter()
                BatchedMLPTrainer(task, cfg).train(archs)
                one_thread_s.append(time.perf_counter() - t0)
                log(f"batched run, 1 thread: {one_thread_s[-1]:.1f} s")
            finally:
                torch.set_num_threads(threads)
    assert plan is not None
    failed = sum(r.status != "ok" for r in res)
    t_b = statistics.median(batched_s)
    runs = args.n * cfg.restarts
    flops_per_mac = 6 * n_train * cfg.epochs
    useful = flops_per_mac * plan.useful_macs
    padded = flops_per_mac * plan.padded_macs

    # ---------------------------------------------------------------- plain loop
    step = max(1, args.n // args.plain)
    subset = archs[::step][: args.plain]
    plain_s: list[float] = []
    plain_1_s: list[float] = []
    for a in subset:
        t0 = time.perf_counter()
        train_single(a, task, cfg)
        plain_s.append(time.perf_counter() - t0)
        log(f"plain net {len(plain_s)}/{len(subset)}: {plain_s[-1]:.2f} s")
        if threads > 1 and not args.no_one_thread:
            torch.set_num_threads(1)
            try:
                t0 = time.perf_counter()
                train_single(a, task, cfg)
                plain_1_s.append(time.perf_counter() - t0)
                log(f"plain net {len(plain_1_s)}/{len(subset)}, 1 thread: {plain_1_s[-1]:.2f} s")
            finally:
                torch.set_num_threads(threads)
    sgemm += sgemm_gflops()
    t_plain_net = float(np.mean(plain_s))
    plain_flops = flops_per_mac * sum(true_macs(a) for a in subset)

    # ---------------------------------------------------------------- full local build path
    t_build = None
    if not args.no_build:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.sqlite"
            t0 = time.perf_counter()
            out = build_dataset(
                db,
                "data_a",
                load_space("mlp"),
                args.n,
                0,
                cfg,
                LocalBackend(args.build_workers),
                chunk=args.build_chunk,
            )
            t_build = time.perf_counter() - t0
            log(f"build_dataset: {t_build:.1f} s")
            assert out["trained"] == args.n
        sgemm += sgemm_gflops()

    ceil_useful, ceil_padded = bmm_ceiling_gflops(plan, cfg.batch_size)
    g_sgemm = statistics.median(sgemm)
    g_useful = useful / t_b / 1e9
    g_padded = padded / t_b / 1e9
    nets_b = runs / t_b
    nets_p = 1.0 / t_plain_net
    load1 = os.getloadavg()

    print()
    print(f"{'measurement':<52} {'value':>12}")
    print("-" * 65)
    rows: list[tuple[str, str]] = [
        (f"batched: wall s for {args.n} archs x {cfg.restarts} inits (median)", f"{t_b:.2f}"),
        ("batched: all runs, s", " ".join(f"{s:.1f}" for s in batched_s)),
        ("batched: trained nets/s", f"{nets_b:.2f}"),
        ("batched: archs/s", f"{args.n / t_b:.2f}"),
        (f"plain: s per net (mean of {len(subset)} archs, every {step})", f"{t_plain_net:.2f}"),
        ("plain: trained nets/s (scaled per net)", f"{nets_p:.3f}"),
        ("RATIO batched / plain (nets/s)", f"{nets_b / nets_p:.1f}x"),
    ]
    if one_thread_s:
        t_1 = statistics.median(one_thread_s)
        rows += [
            ("batched, 1 torch thread: wall s (median)", f"{t_1:.2f}"),
            ("batched, 1 torch thread: all runs, s", " ".join(f"{s:.1f}" for s in one_thread_s)),
            ("batched, 1 torch thread: trained nets/s", f"{runs / t_1:.2f}"),
            ("batched, 1 torch thread: useful GFLOP/s", f"{useful / t_1 / 1e9:.2f}"),
        ]
        if plain_1_s:
            nets_p1 = 1.0 / float(np.mean(plain_1_s))
            rows += [
                ("plain, 1 torch thread: trained nets/s", f"{nets_p1:.3f}"),
                ("RATIO batched / plain, both 1 thread", f"{runs / t_1 / nets_p1:.1f}x"),
            ]
    rows += [
        ("sgemm 1024^3 fp32 GFLOP/s (median)", f"{g_sgemm:.1f}"),
        ("sgemm samples min..max", f"{min(sgemm):.0f}..{max(sgemm):.0f}"),
        ("batched useful GFLOP/s (true widths)", f"{g_useful:.2f}"),
        ("batched useful / sgemm", f"{100 * g_useful / g_sgemm:.1f}%"),
        ("batched padded GFLOP/s (computed incl. padding)", f"{g_padded:.2f}"),
        ("padding waste (1 - useful/padded MACs)", f"{100 * (1 - useful / padded):.1f}%"),
        ("matmuls alone, same shapes: useful GFLOP/s", f"{ceil_useful:.2f}"),
        ("matmuls alone: padded GFLOP/s", f"{ceil_padded:.2f}"),
        ("matmuls alone: useful / sgemm (the ceiling)", f"{100 * ceil_useful / g_sgemm:.1f}%"),
        ("plain useful GFLOP/s", f"{plain_flops / sum(plain_s) / 1e9:.3f}"),
        ("padding grid of the chunk", str(plan.grid)),
        ("failed candidates (batched)", str(failed)),
    ]
    if t_build is not None:
        rows += [
            (
                f"build_dataset local: {args.build_workers} workers, chunk "
                f"{args.build_chunk}, wall s",
                f"{t_build:.2f}",
            ),
            ("build_dataset: archs/s (incl. process start-up)", f"{args.n / t_build:.2f}"),
            ("build_dataset: trained nets/s", f"{runs / t_build:.2f}"),
        ]
    for k, v in rows:
        print(f"{k:<52} {v:>12}")
    print("-" * 65)
    print(
        f"targets: ratio >= 15x: {'PASS' if nets_b / nets_p >= 15 else 'FAIL'}; "
        f"useful >= 40% of sgemm: {'PASS' if g_useful >= 0.4 * g_sgemm else 'FAIL'}"
    )
    print(f"load average at end {load1[0]:.2f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
