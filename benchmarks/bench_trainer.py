"""QAT training throughput: the batched trainer vs the plain one-net-at-a-time loop (issues 3
and 14).

On the same sampled architectures (``--space mlp --task data_a`` by default; ``--space cnn
--task digits`` for CNNs; sampling seed 0 -- the first rows ``inag sample --task TASK --seed 0``
would train) and the same ``TrainerConfig`` (defaults unless overridden), measured in ONE run:

- nets/s of ``BatchedMLPTrainer`` with its default C engine (in-process, one net per thread,
  torch's default thread count), median of ``--repeats`` runs over all archs in one chunk;
- the same for its PyTorch engine (grouped ``bmm`` calls), interleaved with the C runs;
- nets/s of the plain loop (``train_single``: ordinary autograd + ``torch.optim.Adam``, one net
  at a time) timed on an evenly spaced subset of the archs and scaled per net;
- their ratio; both counted in *trained networks* (the batched trainer trains ``restarts``
  initializations per arch, ``train_single`` one, so a training run is the common unit);
- useful GFLOP/s of each engine (``inag.train.trainer.train_flops``: true shapes only,
  forward 2 + weight gradient 2 flops per MAC, input gradient 2 per MAC for every unit but
  the first, x training samples per epoch x epochs; the C engine computes no padding, the
  torch engine's padded GFLOP/s and padding waste are shown for MLPs), against a 1024^3
  float32 ``torch.mm`` measured in the same run (median of several, interleaved with the
  training runs) and against this core's float32 FMA peak (a register-only FMA loop compiled
  with ``-O3 -march=native``, median of several): no fp32 engine can beat the peak, so
  peak / (plain useful GFLOP/s) bounds the ratio any engine can reach over the plain loop;
- the same batched runs and plain nets with ONE thread (the dataset builder's per-worker
  setting), interleaved with the default-thread runs;
- the torch engine's ceiling: GFLOP/s of only the bmm calls a step issues for the same chunk
  (same shapes and batch counts), which its elementwise work pulls it below;
- optionally nets/s of the full local ``build_dataset`` path (worker processes, one torch
  thread each, process start-up included) on the same archs (MLP spaces).

    python benchmarks/bench_trainer.py [--n 64] [--plain 16] [--repeats 3] [--epochs 20]
    python benchmarks/bench_trainer.py --space cnn --task digits --threads 1 --no-build
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
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
from inag.train.trainer import (
    BatchedMLPTrainer,
    TrainerConfig,
    train_flops,
    train_single,
)


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


_FMA_PEAK_C = r"""
#include <stdio.h>
#include <time.h>
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
typedef float v __attribute__((vector_size(4 * LANES)));
#define ACC(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) \
  X(14) X(15)
int main(void) {
  v b = (v){0} + 0.999999f, c = (v){0} + 1e-7f;
#define DECL(i) v a##i = (v){0} + (float)i;
  ACC(DECL)
  long n = 100000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; k++) {
#define STEP(i) a##i = a##i * b + c; __asm__("" : "+v"(a##i));
    ACC(STEP)
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  float sum = 0;
#define SUM(i) sum += a##i[0];
  ACC(SUM)
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%f %d %g\n", n * 16.0 * LANES * 2 / s / 1e9, LANES, sum);
  return 0;
}
"""


def fma_peak_gflops(repeats: int = 3) -> tuple[float, int] | None:
    """This core's float32 FMA peak: 16 independent FMA chains in registers, built like the C
    engine (-O3 -march=native); (median GFLOP/s, vector lanes), or None without a compiler."""
    cc = next(
        (c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None
    )
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(_FMA_PEAK_C)
        for flags in (["-march=native"], []):
            proc = subprocess.run(
                [cc, "-O3", "-ffp-contract=fast", *flags, str(src), "-o", str(exe)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                break
        else:
            return None
        runs = [
            subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
            for _ in range(repeats)
        ]
    return statistics.median(float(r.split()[0]) for r in runs), int(runs[0].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--space", default="mlp", help="search space (mlp, cnn, or a YAML file)")
    ap.add_argument("--task", default=None, help="task (default: data_a; digits for cnn)")
    ap.add_argument("--n", type=int, default=64, help="sampled architectures")
    ap.add_argument("--plain", type=int, default=16, help="archs timed with the plain loop")
    ap.add_argument("--repeats", type=int, default=3, help="batched runs (median)")
    ap.add_argument("--epochs", type=int, default=None, help="override TrainerConfig.epochs")
    ap.add_argument("--restarts", type=int, default=None, help="override TrainerConfig.restarts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-one-thread", action="store_true", help="skip the 1-thread batched runs")
    ap.add_argument(
        "--no-torch-engine", action="store_true", help="skip the PyTorch engine's runs"
    )
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
    task_spec = args.task or ("digits" if args.space == "cnn" else "data_a")
    task = load_task(task_spec, seed=0)
    space = load_space(args.space).bind(task.input_shape, task.output_size)
    archs = space.sample_many(np.random.default_rng(0), args.n)
    n_train = len(task.x_train)
    load0 = os.getloadavg()
    print(
        f"{task.name}: {args.n} archs (space {space.name}, seed 0), {n_train} training samples; "
        f"TrainerConfig epochs={cfg.epochs} restarts={cfg.restarts} batch={cfg.batch_size} "
        f"lr={cfg.lr} quant_delay={cfg.quant_delay}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, load average at start {load0[0]:.2f}"
    )

    # ---------------------------------------------------------------- batched (+ sgemm)
    sgemm = sgemm_gflops()
    peaks = [fma_peak_gflops()]
    engines = ["c"] + ([] if args.no_torch_engine else ["torch"])
    wall: dict[tuple[str, int], list[float]] = {}
    plan = None
    res = []
    threads = torch.get_num_threads()
    thread_counts = [threads] + ([1] if threads > 1 and not args.no_one_thread else [])
    for rep in range(args.repeats):
        for engine in engines:
            for th in thread_counts:
                torch.set_num_threads(th)
                try:
                    tr = BatchedMLPTrainer(task, cfg, engine=engine, threads=th)
                    t0 = time.perf_counter()
                    out = tr.train(archs)
                    wall.setdefault((engine, th), []).append(time.perf_counter() - t0)
                finally:
                    torch.set_num_threads(threads)
                took = wall[engine, th][-1]
                log(f"{engine} engine, {th} thread(s), run {rep + 1}: {took:.1f} s")
                if engine == "torch":
                    plan = tr.last_plan
                if engine == "c" and th == threads:
                    res = out
            sgemm += sgemm_gflops()
    failed = sum(r.status != "ok" for r in res)
    t_b = statistics.median(wall["c", threads])
    runs = args.n * cfg.restarts
    flops_per_sample = n_train * cfg.epochs  # x train_flops(arch): one net's useful flops
    useful = flops_per_sample * cfg.restarts * sum(train_flops(a) for a in archs)

    # ---------------------------------------------------------------- plain loop
    step = max(1, args.n // args.plain)
    subset = archs[::step][: args.plain]
    for th in thread_counts:  # warm-up: the first autograd step pays one-off set-up costs
        torch.set_num_threads(th)
        train_single(subset[0], task, replace(cfg, epochs=1))
    torch.set_num_threads(threads)
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
    peaks.append(fma_peak_gflops())
    t_plain_net = float(np.mean(plain_s))
    plain_flops = flops_per_sample * sum(train_flops(a) for a in subset)

    # ---------------------------------------------------------------- full local build path
    t_build = None
    if not args.no_build and space.kind == "mlp":
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.sqlite"
            t0 = time.perf_counter()
            out = build_dataset(
                db,
                task_spec,
                load_space(args.space),
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

    g_sgemm = statistics.median(sgemm)
    g_useful = useful / t_b / 1e9
    g_plain = plain_flops / sum(plain_s) / 1e9
    peak = None if None in peaks else statistics.median(p[0] for p in peaks)
    # the bound on any fp32 engine over the plain loop, both on `threads` cores
    ceiling_x = None if peak is None else peak * threads / g_plain
    nets_b = runs / t_b
    nets_p = 1.0 / t_plain_net
    load1 = os.getloadavg()

    print()
    print(f"{'measurement':<52} {'value':>12}")
    print("-" * 65)
    rows: list[tuple[str, str]] = [
        (f"C engine: wall s, {args.n} archs x {cfg.restarts} inits (median)", f"{t_b:.2f}"),
        ("C engine: all runs, s", " ".join(f"{s:.1f}" for s in wall["c", threads])),
        ("C engine: trained nets/s", f"{nets_b:.2f}"),
        ("C engine: archs/s", f"{args.n / t_b:.2f}"),
        (f"plain: s per net (mean of {len(subset)} archs, every {step})", f"{t_plain_net:.2f}"),
        ("plain: trained nets/s (scaled per net)", f"{nets_p:.3f}"),
        ("RATIO C engine / plain (nets/s)", f"{nets_b / nets_p:.1f}x"),
        ("sgemm 1024^3 fp32 GFLOP/s (median)", f"{g_sgemm:.1f}"),
        ("sgemm samples min..max", f"{min(sgemm):.0f}..{max(sgemm):.0f}"),
        ("C engine useful GFLOP/s (no padding computed)", f"{g_useful:.2f}"),
        ("C engine useful / sgemm", f"{100 * g_useful / g_sgemm:.1f}%"),
    ]
    if ("c", 1) in wall and threads > 1:
        t_1 = statistics.median(wall["c", 1])
        rows += [
            ("C engine, 1 thread: wall s (median)", f"{t_1:.2f}"),
            ("C engine, 1 thread: useful GFLOP/s", f"{useful / t_1 / 1e9:.2f}"),
            ("C engine: 2-thread speed-up over 1 thread", f"{t_1 / t_b:.2f}x"),
        ]
        if plain_1_s:
            nets_p1 = 1.0 / float(np.mean(plain_1_s))
            rows += [
                ("plain, 1 torch thread: trained nets/s", f"{nets_p1:.3f}"),
                ("RATIO C engine / plain, both 1 thread", f"{runs / t_1 / nets_p1:.1f}x"),
            ]
    if ("torch", threads) in wall:
        t_t = statistics.median(wall["torch", threads])
        rows += [
            ("torch engine: wall s (median)", f"{t_t:.2f}"),
            ("torch engine: all runs, s", " ".join(f"{s:.1f}" for s in wall["torch", threads])),
            ("torch engine: trained nets/s", f"{runs / t_t:.2f}"),
            ("RATIO torch engine / plain (nets/s)", f"{runs / t_t / nets_p:.1f}x"),
            ("RATIO C engine / torch engine (same run)", f"{t_t / t_b:.2f}x"),
            ("torch engine useful GFLOP/s", f"{useful / t_t / 1e9:.2f}"),
            ("torch engine useful / sgemm", f"{100 * useful / t_t / 1e9 / g_sgemm:.1f}%"),
        ]
        if ("torch", 1) in wall and threads > 1:
            t_t1 = statistics.median(wall["torch", 1])
            rows.append(("torch engine, 1 thread: useful GFLOP/s", f"{useful / t_t1 / 1e9:.2f}"))
    if plan is not None:  # the MLP torch engine's padded plan
        t_t = statistics.median(wall["torch", threads])
        waste = 1 - plan.useful_macs / plan.padded_macs  # per-MAC: padding is uniform
        ceil_useful, ceil_padded = bmm_ceiling_gflops(plan, cfg.batch_size)
        rows += [
            ("torch engine padded GFLOP/s", f"{useful / (1 - waste) / t_t / 1e9:.2f}"),
            ("torch padding waste (1 - useful/padded MACs)", f"{100 * waste:.1f}%"),
            ("torch bmm calls alone: useful GFLOP/s", f"{ceil_useful:.2f}"),
            ("torch bmm calls alone: useful / sgemm", f"{100 * ceil_useful / g_sgemm:.1f}%"),
            ("torch padding grid of the chunk", str(plan.grid)),
        ]
    rows += [
        ("plain useful GFLOP/s", f"{g_plain:.3f}"),
        ("failed candidates (C engine)", str(failed)),
    ]
    if peak is not None:
        rows += [
            (f"fp32 FMA peak of one core, GFLOP/s ({peaks[0][1]} lanes)", f"{peak:.1f}"),
            ("FMA peak samples", " ".join(f"{p[0]:.0f}" for p in peaks)),
            (
                f"C engine useful / FMA peak x {threads} thread(s)",
                f"{100 * g_useful / (peak * threads):.1f}%",
            ),
            ("ceiling of any fp32 engine's ratio: peak / plain", f"{ceiling_x:.1f}x"),
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
    goal = 15 if space.kind == "mlp" else 10  # issue 3 (MLPs), issue 14 (CNNs)
    ceiling = "" if ceiling_x is None else f" (fp32 ceiling here {ceiling_x:.1f}x)"
    print(
        f"targets: ratio >= {goal}x: {'PASS' if nets_b / nets_p >= goal else 'FAIL'}{ceiling}; "
        f"useful >= 40% of sgemm: {'PASS' if g_useful >= 0.4 * g_sgemm else 'FAIL'}"
    )
    print(f"load average at end {load1[0]:.2f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
